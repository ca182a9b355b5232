//! Primes as durable background tasks: a client POSTs "the first n primes",
//! gets an unguessable id at once (202, after the task's record is committed),
//! and polls or waits for the result.
//!
//! - [`sieve`]: the segmented sieve and the one JSON rendering of the table.
//! - [`task`]: task ids, owners, idempotency keys, states and their record
//!   in the store.
//! - [`callback`]: completion callbacks: a delivery's state and record,
//!   its back-off schedule, and its signature.
//! - [`forward`]: a follower's task requests as the leader takes them, and
//!   its answers (cluster mode).
//! - [`request`]: the POST body and the GET query, validated.
//! - [`service`]: the tasks, the prime table, fair shares, retention and
//!   eviction, cancellation, callbacks, and the writes each commit carries;
//!   sans-IO and sans-clock, like the stepper.

pub mod callback;
pub mod forward;
pub mod request;
pub mod service;
pub mod sieve;
pub mod task;

use std::time::Duration;

use crate::access::ratelimit::{DEFAULT_BURST, MICROS_PER_TOKEN};

/// Sizing; all can be changed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimesLimits {
    /// The largest n a task may ask for; also bounds the prime table.
    pub max_n: u64,
    /// Tasks stored at most (pending and settled); at the cap, the oldest
    /// settled task makes room for a new one.
    pub tasks_max: usize,
    /// Tasks waiting for a computation at most; more get 503.
    pub pending_max: usize,
    /// Unsettled tasks one client (API key, else address) may hold; more get 429.
    pub pending_per_client: usize,
    /// How long a settled task is kept at least, unless room is needed.
    pub retention: Duration,
}

/// A reader of a task done before this node's table holds it (after a
/// restart, or a task a cluster's leader holds) waits this long at most
/// for the table (the default largest took 0.7 s on a busy VM here).
pub const TABLE_WAIT: Duration = Duration::from_secs(30);

/// The first million primes: 9.2 MB of JSON, sieved and rendered at
/// primesieve's pace (bench/primes).
pub const DEFAULT_MAX_N: u64 = 1_000_000;

impl Default for PrimesLimits {
    fn default() -> Self {
        PrimesLimits {
            max_n: DEFAULT_MAX_N,
            tasks_max: 100_000,
            pending_max: 10_000,
            pending_per_client: 1_000,
            retention: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A token is "one cheap request" (`access::ratelimit::MICROS_PER_TOKEN`); a sieve costs about this many nanoseconds per prime. The
/// sieve and its rendering ran at 0.96x primesieve's time in the same run
/// (bench/primes), and primesieve takes about 60 ms for the first million
/// primes on this machine when it is quiet.
const SIEVE_NANOS_PER_PRIME: u64 = 60;

/// Tokens a task costs: 1 when the table already holds its answer, else its
/// estimated sieve time in tokens (the first million primes: 6,000).
pub fn task_cost(n: u64, table_hit: bool) -> u32 {
    if table_hit {
        return 1;
    }
    let micros = n.saturating_mul(SIEVE_NANOS_PER_PRIME) / 1000;
    let tokens = micros
        .div_ceil(MICROS_PER_TOKEN)
        .clamp(1, u64::from(DEFAULT_BURST));
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_grows_with_n_and_is_capped() {
        assert_eq!(task_cost(1_000_000, true), 1);
        assert_eq!(task_cost(10, false), 1);
        assert_eq!(task_cost(1_000_000, false), 6_000);
        assert_eq!(task_cost(u64::MAX, false), 10_000);
        assert!(task_cost(100_000, false) < task_cost(200_000, false));
    }
}
