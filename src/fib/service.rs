//! The /v1/fib service: decides where F(n) comes from (table, cache, a quick
//! computation on the loop, or the compute worker) and lets concurrent
//! requests for one n share a single computation. It knows nothing of HTTP
//! bytes; `routes` writes the replies.

use std::rc::Rc;
use std::time::Duration;

use super::cache::{FibCache, Joined, SingleFlight};
use super::worker::FibWorker;
use super::{Value, small};
use crate::conn::ConnRef;
use crate::http::accept::Format;
use crate::http::response::Persistence;

/// Above this n, F(n) is computed off the loop. Measured here: F(20,000)
/// with its decimal rendering takes about 0.1 ms, F(10^5) about 1 ms.
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

/// A request waiting for a computation, with what its reply needs.
#[derive(Clone, Copy, Debug)]
pub struct FibWaiter {
    pub conn: ConnRef,
    pub format: Format,
    pub head_only: bool,
    pub persistence: Persistence,
}

/// Where a request's value stands.
#[derive(Debug)]
pub enum Lookup {
    Ready(Value),
    /// Computing; the waiter is answered from [`FibService::finished`].
    Pending,
    /// The queue or the waiter table is full: 503 with Retry-After.
    Busy,
}

/// A computation that finished, with everyone who waited for it.
#[derive(Debug)]
pub struct Finished {
    pub n: u64,
    pub value: Value,
    pub waiters: Vec<FibWaiter>,
    pub elapsed: Duration,
}

pub struct FibService {
    limits: FibLimits,
    cache: FibCache,
    flight: SingleFlight<FibWaiter>,
    worker: FibWorker,
}

impl FibService {
    /// `wake` is called on a compute thread after each result.
    pub fn new(
        limits: FibLimits,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        Ok(FibService {
            limits,
            cache: FibCache::new(limits.cache_bytes_max),
            flight: SingleFlight::new(limits.waiters_max),
            worker: FibWorker::spawn(limits.threads, limits.queue_max, wake)?,
        })
    }

    /// Whether F(n) can be answered without computing it (for the rate limiter).
    pub fn is_at_hand(&self, n: u64) -> bool {
        small(n).is_some() || self.cache.contains(n)
    }

    pub fn max_n(&self) -> u64 {
        self.limits.max_n
    }

    /// F(n) now if it is cheap or cached; otherwise queues the waiter.
    /// Returns whether the cache answered, for the hit/miss counters.
    pub fn lookup(&mut self, n: u64, waiter: FibWaiter) -> (Lookup, bool) {
        if let Some(v) = small(n) {
            return (Lookup::Ready(Value::Small(v)), true);
        }
        if let Some(digits) = self.cache.get(n) {
            return (Lookup::Ready(Value::Big(digits)), true);
        }
        if n <= INLINE_N_MAX {
            let digits: Rc<[u8]> = super::decimal(n).into_bytes().into();
            self.cache.insert(n, digits.clone());
            return (Lookup::Ready(Value::Big(digits)), false);
        }
        let lookup = match self.flight.join(n, waiter) {
            Ok(Joined::Follower) => Lookup::Pending,
            Ok(Joined::Leader) => match self.worker.submit(n) {
                Ok(()) => Lookup::Pending,
                Err(_) => {
                    self.flight.abandon(n);
                    Lookup::Busy
                }
            },
            Err(_) => Lookup::Busy,
        };
        (lookup, false)
    }

    /// The next finished computation, cached and with its waiters.
    pub fn finished(&mut self) -> Option<Finished> {
        let computed = self.worker.try_result()?;
        let digits: Rc<[u8]> = computed.digits.into();
        self.cache.insert(computed.n, digits.clone());
        Some(Finished {
            n: computed.n,
            value: Value::Big(digits),
            waiters: self.flight.complete(computed.n),
            elapsed: computed.elapsed,
        })
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    pub fn queued(&self) -> usize {
        self.worker.queued()
    }

    /// Whether any request still waits for a computation.
    pub fn is_idle(&self) -> bool {
        self.flight.in_flight() == 0
    }
}
