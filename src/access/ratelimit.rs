//! Per-client rate limiting: complexity-weighted token buckets in a table of
//! bounded size, and the cost of computing F(n) in the same tokens.
//!
//! It owns the buckets ([`ClientKey`] names one), how much a computation
//! costs (`services::fib::cost`), whether a request may go ahead
//! ([`RateLimiter::charge`]) and the values of the `RateLimit-Policy` /
//! `RateLimit` header fields (IETF httpapi ratelimit-headers draft). It does
//! not own who the client is or which [`Limit`] applies to it (that is
//! `crate::access`), routing, status codes or the `Retry-After` field: the
//! caller turns a [`Decision::Limited`] into a 429.
//!
//! Sans-IO and sans-clock: `now` is an argument, so every test runs on
//! synthetic instants and nothing sleeps. One limiter lives on the event loop
//! thread, so there is no lock.
//!
//! # Memory
//! The table never holds more than `clients_max` buckets, whatever clients
//! send: a flood from invented addresses replaces idle buckets instead of
//! adding new ones. See [`RateLimiter`] for which bucket gives way and why.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use crate::base::digits::write_u64;
use crate::base::recency::Recency;

/// Header field names for the values written by [`RateLimiter::write_policy`]
/// and [`RateLimiter::write_state`].
pub const POLICY_HEADER: &str = "RateLimit-Policy";
pub const STATE_HEADER: &str = "RateLimit";

/// The default bucket size, and so the most one request costs: one is
/// always affordable from a full default bucket.
pub const DEFAULT_BURST: u32 = 10_000;
/// A token is "one cheap request", about 10 µs of event-loop time; costs of
/// work measured in time are priced at this rate.
pub const MICROS_PER_TOKEN: u64 = 10;

/// Tokens are kept in billionths so that a refill of `elapsed_ns * rate` is
/// exact: no rounding is ever dropped, so many tiny refills add up to exactly
/// one big one. `u32::MAX` tokens is 4.3e18 nano-tokens, within a `u64`.
const NANO_PER_TOKEN: u64 = 1_000_000_000;

/// How many of the least recently seen buckets one eviction looks at: a
/// bounded sweep (constant work per new client), wide enough that one drained
/// bucket among them is not the only choice.
const EVICTION_CANDIDATES: usize = 8;

/// What one bucket may spend: a continuous refill rate and a capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Tokens added per second, continuously.
    pub rate_per_sec: u32,
    /// Bucket capacity: the most a client can spend at once after being idle.
    pub burst: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// False when `--rate-limit 0`: clients without their own limit (an API
    /// key's) are not limited.
    pub enabled: bool,
    /// Tokens added to every bucket per second, continuously.
    pub rate_per_sec: u32,
    /// Bucket capacity: the most a client can spend at once after being idle.
    pub burst: u32,
    /// Buckets kept at most; a value of 0 is treated as 1.
    pub clients_max: usize,
}

impl Default for RateLimitConfig {
    /// Generous enough that a benchmark of 3 × 1000 requests/s from one host
    /// (3000 tokens/s of cheap requests) never sees a 429, while one client
    /// asking for uncached large F(n) is held to about 50 ms of compute per
    /// second. 65536 buckets cost a few MiB at most.
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            rate_per_sec: 5000,
            burst: DEFAULT_BURST,
            clients_max: 65_536,
        }
    }
}

impl RateLimitConfig {
    /// The limit of a client without one of its own; `None` when off.
    pub fn default_limit(&self) -> Option<Limit> {
        self.enabled.then_some(Limit {
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
        })
    }
}

/// Whose bucket: a known API key's, or a client address's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The key's keyed hash (`crate::access`): stable across reloads of the
    /// key file, so an unchanged key keeps its bucket.
    ApiKey([u8; 16]),
    Ip(IpAddr),
}

impl ClientKey {
    /// IPv4-mapped IPv6 addresses count as the IPv4 address, so a dual-stack
    /// socket does not give each IPv4 client a second bucket. Other IPv6
    /// addresses count by their /64: one host usually holds a whole /64 and
    /// could otherwise take a fresh bucket per address.
    pub fn ip(addr: IpAddr) -> ClientKey {
        match addr {
            IpAddr::V4(_) => ClientKey::Ip(addr),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::Ip(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & (u128::MAX << 64);
                    ClientKey::Ip(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `remaining` is whole tokens left after this charge.
    Allowed { remaining: u32 },
    /// Nothing was charged; waiting this long makes the same request
    /// affordable (rounded up, so never 0).
    Limited { retry_after_secs: u32 },
}

/// One client's bucket.
struct Bucket {
    key: ClientKey,
    /// The limit it was last charged under, for eviction's sums.
    limit: Limit,
    nano_tokens: u64,
    /// When `nano_tokens` was last brought up to date; also "last seen".
    updated: Instant,
}

/// Token buckets for up to `clients_max` clients.
///
/// # Eviction
/// Buckets sit in a list ordered by when their client was last seen. A new
/// client, when the table is full, takes the slot of one of the
/// `EVICTION_CANDIDATES` least recently seen buckets: the first one that
/// has refilled to full if any, since its client would get a full bucket on
/// return anyway (lossless); otherwise the one holding the most tokens, since
/// evicting it gives its client back the fewest tokens.
///
/// So a flood from invented addresses mostly replaces its own earlier
/// buckets, which are nearly full (one cheap request each), and an abuser's drained bucket
/// loses every comparison: it is evicted only if all the candidates are
/// drained too, or once it has refilled, when evicting it costs nothing. A
/// client that keeps sending stays at the recent end and is never a candidate.
/// Each charge is one hash lookup and O(1) list moves; each eviction looks at
/// a fixed number of buckets.
pub struct RateLimiter {
    clients_max: usize,
    index: HashMap<ClientKey, usize>,
    buckets: Vec<Bucket>,
    /// Buckets by when their client was last seen.
    recency: Recency,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("clients", &self.clients())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(clients_max: usize) -> RateLimiter {
        RateLimiter {
            clients_max: clients_max.max(1),
            index: HashMap::new(),
            buckets: Vec::new(),
            recency: Recency::default(),
        }
    }

    /// Charges `cost` tokens (1 for a stepper call or cached answer;
    /// `services::fib::cost::compute_cost` for computing F(n)) to `client` under `limit` at
    /// `now`. A bucket whose limit changed (a key file reload) keeps its
    /// tokens, up to the new burst.
    ///
    /// A cost above `burst` is charged as `burst`: no bucket could ever pay
    /// more, and a request that can never succeed would only teach clients to
    /// retry forever. A refused request costs nothing, so a client that waits
    /// `retry_after_secs` is served.
    pub fn charge(&mut self, client: ClientKey, cost: u32, limit: Limit, now: Instant) -> Decision {
        let cost_nano = u64::from(cost.min(limit.burst)) * NANO_PER_TOKEN;
        let slot = match self.index.get(&client) {
            Some(&slot) => slot,
            None => self.admit(client, limit, now),
        };
        self.recency.touch(slot);
        let rate = limit.rate_per_sec;
        let Some(bucket) = self.buckets.get_mut(slot) else {
            // Unreachable: every slot in the index or from `admit` exists.
            return Decision::Allowed { remaining: 0 };
        };
        refill(bucket, now);
        if bucket.limit != limit {
            bucket.limit = limit;
            bucket.nano_tokens = bucket.nano_tokens.min(limit.capacity_nano());
        }
        if bucket.nano_tokens >= cost_nano {
            bucket.nano_tokens -= cost_nano;
            Decision::Allowed {
                remaining: whole_tokens(bucket.nano_tokens),
            }
        } else {
            Decision::Limited {
                retry_after_secs: secs_to_earn(cost_nano - bucket.nano_tokens, rate),
            }
        }
    }

    pub fn clients(&self) -> usize {
        self.index.len()
    }

    /// Finds a slot for a new client, whose bucket starts full, and indexes
    /// it; the caller puts the slot in the recency list.
    fn admit(&mut self, client: ClientKey, limit: Limit, now: Instant) -> usize {
        let fresh = |key| Bucket {
            key,
            limit,
            nano_tokens: limit.capacity_nano(),
            updated: now,
        };
        let slot = if self.buckets.len() < self.clients_max {
            if self.buckets.len() == self.buckets.capacity() {
                // Doubling, but never past the bound.
                let more = self
                    .buckets
                    .len()
                    .max(16)
                    .min(self.clients_max - self.buckets.len());
                self.buckets.reserve_exact(more);
            }
            self.buckets.push(fresh(client));
            if self.buckets.len() == self.clients_max {
                // Evictions leave tombstones in the map, which it clears in
                // place while at most half full but grows to escape when
                // fuller. Room for twice the bound, reserved once as the
                // table fills, keeps its memory fixed from then on.
                let _ = self.index.try_reserve(self.clients_max.saturating_add(2));
            }
            self.buckets.len() - 1
        } else {
            let victim = self.eviction_victim(now);
            self.recency.remove(victim);
            if let Some(bucket) = self.buckets.get_mut(victim) {
                self.index.remove(&bucket.key);
                *bucket = fresh(client);
            }
            victim
        };
        self.index.insert(client, slot);
        slot
    }

    /// See "Eviction" on [`RateLimiter`].
    fn eviction_victim(&self, now: Instant) -> usize {
        let oldest = self.recency.oldest().unwrap_or(0);
        let mut best = oldest;
        let mut best_tokens = 0;
        let mut slot = Some(oldest);
        for _ in 0..EVICTION_CANDIDATES {
            let Some((s, bucket)) = slot.and_then(|s| Some((s, self.buckets.get(s)?))) else {
                break;
            };
            let tokens = tokens_at(bucket, now);
            if tokens >= bucket.limit.capacity_nano() {
                return s;
            }
            if s == oldest || tokens > best_tokens {
                best = s;
                best_tokens = tokens;
            }
            slot = self.recency.newer(s);
        }
        best
    }
}

impl Limit {
    fn capacity_nano(self) -> u64 {
        u64::from(self.burst) * NANO_PER_TOKEN
    }

    /// The `RateLimit-Policy` value, `"default";q=<burst>;w=<secs>`: a token
    /// bucket is described as a quota of `burst` per the time it takes to
    /// refill from empty, which is what a client can count on sustaining.
    pub fn write_policy(self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"default\";q=");
        write_u64(out, u64::from(self.burst));
        out.extend_from_slice(b";w=");
        let window = secs_to_earn(self.capacity_nano(), self.rate_per_sec).max(1);
        write_u64(out, u64::from(window));
    }

    /// The `RateLimit` value, `"default";r=<remaining>;t=<secs>`, where `t` is
    /// the time until the bucket is full again when allowed (from whole
    /// tokens, so it may round up by one second), or until a retry can
    /// succeed when limited, so it agrees with `Retry-After`.
    pub fn write_state(self, out: &mut Vec<u8>, decision: &Decision) {
        let (remaining, secs) = match *decision {
            Decision::Allowed { remaining } => {
                let missing = self.burst.saturating_sub(remaining);
                let secs = secs_to_earn(u64::from(missing) * NANO_PER_TOKEN, self.rate_per_sec);
                (remaining, secs)
            }
            Decision::Limited { retry_after_secs } => (0, retry_after_secs),
        };
        out.extend_from_slice(b"\"default\";r=");
        write_u64(out, u64::from(remaining));
        out.extend_from_slice(b";t=");
        write_u64(out, u64::from(secs));
    }
}

/// A clock that steps backwards credits nothing rather than panicking or
/// crediting twice.
fn tokens_at(bucket: &Bucket, now: Instant) -> u64 {
    let capacity_nano = bucket.limit.capacity_nano();
    let elapsed_ns = now.saturating_duration_since(bucket.updated).as_nanos();
    let earned = elapsed_ns.saturating_mul(u128::from(bucket.limit.rate_per_sec));
    let total = u128::from(bucket.nano_tokens).saturating_add(earned);
    u64::try_from(total.min(u128::from(capacity_nano))).unwrap_or(capacity_nano)
}

fn refill(bucket: &mut Bucket, now: Instant) {
    bucket.nano_tokens = tokens_at(bucket, now);
    bucket.updated = bucket.updated.max(now);
}

fn whole_tokens(nano_tokens: u64) -> u32 {
    u32::try_from(nano_tokens / NANO_PER_TOKEN).unwrap_or(u32::MAX)
}

/// Rounded up; a bucket that never refills (`rate_per_sec == 0`) says
/// `u32::MAX` rather than dividing by zero.
fn secs_to_earn(nano_tokens: u64, rate_per_sec: u32) -> u32 {
    let per_sec = u64::from(rate_per_sec) * NANO_PER_TOKEN;
    if per_sec == 0 {
        return u32::MAX;
    }
    u32::try_from(nano_tokens.div_ceil(per_sec)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// A limiter whose every client has the same limit.
    struct Uniform {
        limiter: RateLimiter,
        limit: Limit,
    }

    impl Uniform {
        fn new(rate_per_sec: u32, burst: u32, clients_max: usize) -> Uniform {
            Uniform {
                limiter: RateLimiter::new(clients_max),
                limit: Limit {
                    rate_per_sec,
                    burst,
                },
            }
        }

        fn charge(&mut self, client: ClientKey, cost: u32, now: Instant) -> Decision {
            self.limiter.charge(client, cost, self.limit, now)
        }

        fn clients(&self) -> usize {
            self.limiter.clients()
        }
    }

    fn key(i: u32) -> ClientKey {
        let mut hash = [0; 16];
        hash[..4].copy_from_slice(&i.to_le_bytes());
        ClientKey::ApiKey(hash)
    }

    fn ip(last: u8) -> ClientKey {
        ClientKey::ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    fn ms(t0: Instant, millis: u64) -> Instant {
        t0 + Duration::from_millis(millis)
    }

    fn allowed(remaining: u32) -> Decision {
        Decision::Allowed { remaining }
    }

    fn limited(retry_after_secs: u32) -> Decision {
        Decision::Limited { retry_after_secs }
    }

    /// At this many milliseconds, charge this much, expect this.
    type Step = (u64, u32, Decision);

    #[test]
    fn scripted_charges() {
        // (rate, burst, steps)
        let cases: &[(u32, u32, &[Step])] = &[
            // Burst, then limited; nothing is charged while limited.
            (
                1,
                3,
                &[
                    (0, 1, allowed(2)),
                    (0, 1, allowed(1)),
                    (0, 1, allowed(0)),
                    (0, 1, limited(1)),
                    (0, 1, limited(1)),
                ],
            ),
            // retry_after rounds up and shrinks as time passes.
            (
                2,
                10,
                &[
                    (0, 10, allowed(0)),
                    (0, 5, limited(3)),
                    (1_000, 5, limited(2)),
                    (2_000, 5, limited(1)),
                    (2_500, 5, allowed(0)),
                ],
            ),
            // Continuous refill, exact across many small steps, capped at burst.
            (
                1000,
                100,
                &[
                    (0, 100, allowed(0)),
                    (1, 1, allowed(0)),
                    (2, 1, allowed(0)),
                    (52, 0, allowed(50)),
                    (10_000, 0, allowed(100)),
                ],
            ),
            // Costs: an expensive request drains more; above burst counts as burst.
            (
                10,
                100,
                &[
                    (0, 60, allowed(40)),
                    (0, 50, limited(1)),
                    (0, 40, allowed(0)),
                    (20_000, 1_000_000, allowed(0)),
                    (20_000, 1_000_000, limited(10)),
                ],
            ),
            // A bucket that never refills says so without dividing by zero.
            (0, 1, &[(0, 1, allowed(0)), (5_000, 1, limited(u32::MAX))]),
        ];
        let t0 = Instant::now();
        for (i, &(rate, burst, steps)) in cases.iter().enumerate() {
            let mut limiter = Uniform::new(rate, burst, 16);
            for (j, &(at, cost, expected)) in steps.iter().enumerate() {
                let got = limiter.charge(ip(1), cost, ms(t0, at));
                assert_eq!(got, expected, "case {i} step {j}");
            }
        }
    }

    #[test]
    fn refill_is_exact_over_many_tiny_steps() {
        let t0 = Instant::now();
        let mut limiter = Uniform::new(3, 10, 4);
        assert_eq!(limiter.charge(ip(1), 10, t0), allowed(0));
        // 3 tokens/s is 3 nano-tokens a nanosecond: 1000 steps of 333,333 ns
        // earn 999,999,000 nano-tokens, not one nano-token more or less.
        let mut now = t0;
        for _ in 0..1000 {
            now += Duration::from_nanos(333_333);
            assert_eq!(limiter.charge(ip(1), 0, now), allowed(0));
        }
        now += Duration::from_nanos(333);
        assert_eq!(limiter.charge(ip(1), 1, now), limited(1));
        now += Duration::from_nanos(1);
        assert_eq!(limiter.charge(ip(1), 1, now), allowed(0));
    }

    #[test]
    fn clock_stepping_back_credits_nothing() {
        let t0 = Instant::now();
        let mut limiter = Uniform::new(1, 2, 4);
        assert_eq!(limiter.charge(ip(1), 2, ms(t0, 5_000)), allowed(0));
        assert_eq!(limiter.charge(ip(1), 1, t0), limited(1));
        assert_eq!(limiter.charge(ip(1), 1, ms(t0, 6_000)), allowed(0));
    }

    #[test]
    fn clients_are_separate() {
        let t0 = Instant::now();
        let mut limiter = Uniform::new(1, 1, 4);
        assert_eq!(limiter.charge(ip(1), 1, t0), allowed(0));
        assert_eq!(limiter.charge(ip(1), 1, t0), limited(1));
        assert_eq!(limiter.charge(ip(2), 1, t0), allowed(0));
        assert_eq!(limiter.clients(), 2);
    }

    #[test]
    fn a_changed_limit_keeps_the_tokens_up_to_the_new_burst() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(4);
        let wide = Limit {
            rate_per_sec: 1,
            burst: 100,
        };
        let narrow = Limit {
            rate_per_sec: 1,
            burst: 10,
        };
        assert_eq!(limiter.charge(ip(1), 50, wide, t0), allowed(50));
        assert_eq!(limiter.charge(ip(1), 1, narrow, t0), allowed(9));
        assert_eq!(limiter.charge(ip(1), 1, wide, t0), allowed(8));
    }

    #[test]
    fn the_default_limit_is_off_with_a_zero_rate() {
        let on = RateLimitConfig::default();
        assert_eq!(
            on.default_limit(),
            Some(Limit {
                rate_per_sec: 5000,
                burst: 10_000
            })
        );
        let off = RateLimitConfig {
            enabled: false,
            ..on
        };
        assert_eq!(off.default_limit(), None);
    }

    #[test]
    fn defaults_let_three_thousand_cheap_requests_a_second_through() {
        let t0 = Instant::now();
        let limit = RateLimitConfig::default().default_limit().unwrap();
        let mut limiter = Uniform::new(limit.rate_per_sec, limit.burst, 16);
        // 3 × 1000 rps from one host for 10 s, evenly spaced.
        for i in 0..30_000u64 {
            let now = t0 + Duration::from_micros(i * 1_000_000 / 3_000);
            let got = limiter.charge(ip(1), 1, now);
            assert!(matches!(got, Decision::Allowed { .. }), "request {i}");
        }
    }

    #[test]
    fn table_stays_bounded_under_a_million_clients() {
        let t0 = Instant::now();
        let clients_max = 4096;
        let mut uniform = Uniform::new(5000, 10_000, clients_max);
        let mut full_at = None;
        for i in 0..1_000_000u32 {
            let client = ClientKey::ip(IpAddr::from(i.to_be_bytes()));
            let limiter = &mut uniform;
            let now = t0 + Duration::from_micros(u64::from(i));
            assert!(matches!(
                limiter.charge(client, 1, now),
                Decision::Allowed { .. }
            ));
            assert!(limiter.clients() <= clients_max);
            // `HashMap::capacity` is what it can take before it must grow,
            // which tombstones lower and only a reallocation raises.
            let capacities = (
                limiter.limiter.buckets.capacity(),
                limiter.limiter.index.capacity(),
            );
            match full_at {
                None if i as usize == clients_max => full_at = Some(capacities),
                None => {}
                Some((buckets, index)) => {
                    assert_eq!(capacities.0, buckets, "key {i}");
                    assert!(capacities.1 <= index, "key {i}");
                }
            }
        }
        let limiter = &uniform.limiter;
        assert_eq!(limiter.clients(), clients_max);
        assert_eq!(limiter.buckets.len(), clients_max);
        assert_eq!(limiter.buckets.capacity(), clients_max);
    }

    #[test]
    fn abuser_stays_limited_while_new_clients_flood() {
        let t0 = Instant::now();
        let mut limiter = Uniform::new(10, 100, 64);
        let abuser = ip(66);
        assert_eq!(limiter.charge(abuser, 100, t0), allowed(0));
        let mut now = t0;
        for i in 0..100_000u32 {
            now = t0 + Duration::from_nanos(u64::from(i) * 50);
            limiter.charge(key(i), 1, now);
            if i % 1000 == 0 {
                // Keeps sending: stays at the recent end, stays limited.
                assert!(matches!(
                    limiter.charge(abuser, 1, now),
                    Decision::Limited { .. }
                ));
            }
        }
        // Idle while 60,000+ more new clients go by: it is the oldest bucket
        // but still the emptiest, so it is never the one evicted.
        for i in 100_000..160_000u32 {
            limiter.charge(key(i), 1, now);
        }
        assert_eq!(limiter.charge(abuser, 100, now), limited(10));
        assert!(limiter.clients() <= 64);
    }

    #[test]
    fn idle_full_buckets_are_evicted_before_drained_ones() {
        let t0 = Instant::now();
        let mut uniform = Uniform::new(1, 10, 3);
        let limiter = &mut uniform;
        assert_eq!(limiter.charge(ip(1), 10, t0), allowed(0)); // drained, oldest
        assert_eq!(limiter.charge(ip(2), 1, t0), allowed(9)); // nearly full
        assert_eq!(limiter.charge(ip(3), 5, t0), allowed(5));
        // Full: the newcomer takes the fullest of the oldest, ip(2).
        assert_eq!(limiter.charge(ip(4), 1, t0), allowed(9));
        assert_eq!(limiter.charge(ip(1), 1, t0), limited(1));
        assert_eq!(limiter.charge(ip(3), 0, t0), allowed(5));
        assert!(!limiter.limiter.index.contains_key(&ip(2)));
        // Once refilled, ip(1) is lossless to evict, though now the newest
        // but one: idle-and-full wins over recency.
        let later = ms(t0, 20_000);
        assert_eq!(limiter.charge(ip(4), 0, later), allowed(10));
        assert_eq!(limiter.charge(ip(3), 10, later), allowed(0));
        assert_eq!(limiter.charge(ip(5), 1, later), allowed(9));
        assert!(!limiter.limiter.index.contains_key(&ip(1)));
        assert_eq!(limiter.clients(), 3);
    }

    #[test]
    fn recency_list_survives_every_shape() {
        // Naive oracle: the list walked oldest to newest is the index, in
        // order of last charge.
        let t0 = Instant::now();
        let mut uniform = Uniform::new(1, 5, 5);
        let mut order: Vec<ClientKey> = Vec::new();
        let script = [1u8, 2, 1, 3, 3, 4, 5, 2, 6, 1, 7, 7, 8, 2];
        for &c in &script {
            uniform.charge(ip(c), 1, t0);
            let limiter = &uniform.limiter;
            order.retain(|&k| k != ip(c));
            order.push(ip(c));
            let mut walked = Vec::new();
            let mut slot = limiter.recency.oldest();
            while let Some(b) = slot.and_then(|s| limiter.buckets.get(s)) {
                walked.push(b.key);
                slot = slot.and_then(|s| limiter.recency.newer(s));
            }
            assert_eq!(walked.len(), limiter.clients());
            assert_eq!(walked.last(), order.last());
            assert!(walked.iter().all(|k| limiter.index.contains_key(k)));
            let expected: Vec<_> = order
                .iter()
                .filter(|k| walked.contains(k))
                .copied()
                .collect();
            assert_eq!(walked, expected);
        }
    }

    #[test]
    fn header_values() {
        let limiter = RateLimitConfig::default().default_limit().unwrap();
        let cases: &[(Decision, &str)] = &[
            (allowed(10_000), "\"default\";r=10000;t=0"),
            (allowed(9_999), "\"default\";r=9999;t=1"),
            (allowed(0), "\"default\";r=0;t=2"),
            (limited(3), "\"default\";r=0;t=3"),
        ];
        for &(decision, expected) in cases {
            let mut out = b"x".to_vec();
            limiter.write_state(&mut out, &decision);
            assert_eq!(out, [b"x", expected.as_bytes()].concat());
        }
        let policies: &[(u32, u32, &str)] = &[
            (5000, 10_000, "\"default\";q=10000;w=2"),
            (3, 10, "\"default\";q=10;w=4"),
            (100, 10, "\"default\";q=10;w=1"),
        ];
        for &(rate_per_sec, burst, expected) in policies {
            let mut out = Vec::new();
            Limit {
                rate_per_sec,
                burst,
            }
            .write_policy(&mut out);
            assert_eq!(out, expected.as_bytes());
        }
    }

    #[test]
    fn client_addresses() {
        let v4 = IpAddr::from([192, 0, 2, 1]);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(v4);
        let v6a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(v4);
        let v6b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap_or(v4);
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(v4);
        assert_eq!(ClientKey::ip(mapped), ClientKey::ip(v4));
        assert_eq!(ClientKey::ip(v6a), ClientKey::ip(v6b));
        assert_ne!(ClientKey::ip(v6a), ClientKey::ip(v6c));
    }

    #[test]
    fn the_default_burst_is_the_most_any_request_costs() {
        assert_eq!(RateLimitConfig::default().burst, DEFAULT_BURST);
    }
}
