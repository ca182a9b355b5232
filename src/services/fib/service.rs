//! The /v1/fib service: decides where F(n) comes from (table, cache, a quick
//! computation on the loop, or the compute worker) and lets concurrent
//! requests for one n share a single computation. It knows nothing of HTTP
//! bytes or connections: a waiting request is its parking ticket, and
//! `routes` writes the replies. The compute worker is shared with the
//! primes tasks: this service submits jobs to it, and the loop hands each
//! finished F(n) back through [`FibService::computed`].

use std::rc::Rc;
use std::time::Duration;

use super::cache::{FibCache, Joined, SingleFlight};
use super::{Value, small};
use crate::reply::park::Ticket;
use crate::services::compute::{ComputeWorker, Job};

/// Above this n, F(n) is computed off the loop. Measured here with the
/// decimal engine: F(20,000) with its digits takes about 35 µs, F(10^5)
/// about 0.6 ms (`cost::compute_cost` has the table); the bound
/// stays where the ibig path (0.1 ms) put it, far inside the loop's budget.
pub const INLINE_N_MAX: u64 = 20_000;

/// Sizing for a 512 MB box; all can be changed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FibLimits {
    pub max_n: u64,
    pub cache_bytes_max: usize,
    pub queue_max: usize,
    pub waiters_max: usize,
    pub threads: usize,
}

impl Default for FibLimits {
    fn default() -> Self {
        FibLimits {
            max_n: super::request::DEFAULT_MAX_N,
            cache_bytes_max: 32 << 20,
            queue_max: 64,
            waiters_max: 4096,
            threads: 1,
        }
    }
}

/// F(n) when it can be had on the loop.
#[derive(Debug)]
pub enum AtHand {
    /// From the table or the cache.
    Hit(Value),
    /// Computed just now on the loop (small enough to be cheap).
    Computed(Value),
    /// Needs the compute worker: see [`FibService::wait_for`].
    Missing,
}

/// The queue or the waiter table is full: 503 with Retry-After.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

/// A computation that finished, with everyone who waited for it.
#[derive(Debug)]
pub struct Finished {
    pub n: u64,
    pub value: Value,
    /// The tickets of the requests that waited.
    pub waiters: Vec<Ticket>,
    pub elapsed: Duration,
}

pub struct FibService {
    limits: FibLimits,
    cache: FibCache,
    flight: SingleFlight<Ticket>,
    worker: Rc<ComputeWorker>,
}

impl FibService {
    /// Large F(n) are computed by `worker`, which the loop drains.
    pub fn new(limits: FibLimits, worker: Rc<ComputeWorker>) -> Self {
        FibService {
            limits,
            cache: FibCache::new(limits.cache_bytes_max),
            flight: SingleFlight::new(limits.waiters_max),
            worker,
        }
    }

    /// Whether F(n) can be answered without computing it (for the rate limiter).
    pub fn is_at_hand(&self, n: u64) -> bool {
        small(n).is_some() || self.cache.contains(n)
    }

    pub fn max_n(&self) -> u64 {
        self.limits.max_n
    }

    /// F(n) now if it is in the table or the cache, or cheap to compute.
    pub fn at_hand(&mut self, n: u64) -> AtHand {
        if let Some(v) = small(n) {
            return AtHand::Hit(Value::Small(v));
        }
        if let Some(digits) = self.cache.get(n) {
            return AtHand::Hit(Value::Big(digits));
        }
        if n > INLINE_N_MAX {
            return AtHand::Missing;
        }
        let digits: Rc<[u8]> = super::decimal(n).into_bytes().into();
        self.cache.insert(n, digits.clone());
        AtHand::Computed(Value::Big(digits))
    }

    /// Queues the request parked under `ticket` for F(n), sharing a
    /// computation already under way; it is answered from
    /// [`FibService::computed`].
    pub fn wait_for(&mut self, n: u64, ticket: Ticket) -> Result<(), Busy> {
        match self.flight.join(n, ticket) {
            Ok(Joined::Follower) => Ok(()),
            Ok(Joined::Leader) => self.worker.submit(Job::Fib(n)).map_err(|_| {
                self.flight.abandon(n);
                Busy
            }),
            Err(_) => Err(Busy),
        }
    }

    /// A finished computation of F(n), cached, with everyone who waited for it.
    pub fn computed(&mut self, n: u64, digits: Vec<u8>, elapsed: Duration) -> Finished {
        let digits: Rc<[u8]> = digits.into();
        self.cache.insert(n, digits.clone());
        Finished {
            n,
            value: Value::Big(digits),
            waiters: self.flight.complete(n),
            elapsed,
        }
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}
