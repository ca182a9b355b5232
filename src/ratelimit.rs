//! Per-client rate limiting: complexity-weighted token buckets in a table of
//! bounded size, and the cost of computing F(n) in the same tokens.
//!
//! It owns who is charged ([`ClientKey`]), how much ([`fib_compute_cost`]),
//! whether a request may go ahead ([`RateLimiter::charge`]) and the values of
//! the `RateLimit-Policy` / `RateLimit` header fields (IETF httpapi
//! ratelimit-headers draft). It does not own routing, status codes or the
//! `Retry-After` field: the caller turns a [`Decision::Limited`] into a 429.
//!
//! Sans-IO and sans-clock: `now` is an argument, so every test runs on
//! synthetic instants and nothing sleeps. One limiter lives on the event loop
//! thread, so there is no lock.
//!
//! # Memory
//! The table never holds more than `clients_max` buckets, whatever clients
//! send: a flood of invented API keys replaces idle buckets instead of adding
//! new ones. See [`RateLimiter`] for which bucket gives way and why.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use crate::fib::digits::write_u64;
use crate::recency::Recency;

/// Header field names for the values written by [`RateLimiter::write_policy`]
/// and [`RateLimiter::write_state`].
pub const POLICY_HEADER: &str = "RateLimit-Policy";
pub const STATE_HEADER: &str = "RateLimit";

const DEFAULT_BURST: u32 = 10_000;

/// Tokens are kept in billionths so that a refill of `elapsed_ns * rate` is
/// exact: no rounding is ever dropped, so many tiny refills add up to exactly
/// one big one. `u32::MAX` tokens is 4.3e18 nano-tokens, within a `u64`.
const NANO_PER_TOKEN: u64 = 1_000_000_000;

/// How many of the least recently seen buckets one eviction looks at: a
/// bounded sweep (constant work per new client), wide enough that one drained
/// bucket among them is not the only choice.
const EVICTION_CANDIDATES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
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

/// Who is charged: the `X-API-Key` when present, else the peer address.
///
/// A key is kept only as a 128-bit keyed hash, so a client cannot make us
/// store long keys, and since the hash key is random per process it cannot
/// pick keys that land in someone else's bucket or in one hash-map slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    ApiKey([u8; 16]),
    Ip(IpAddr),
}

impl ClientKey {
    /// SipHash-2-4 with 128-bit output under `hash_key`; normally reached
    /// through [`RateLimiter::client_key`], which holds the process's key.
    pub fn api_key(raw: &[u8], hash_key: &[u8; 16]) -> ClientKey {
        ClientKey::ApiKey(siphash_2_4_128(hash_key, raw))
    }

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
/// So a flood of invented keys mostly replaces its own earlier buckets, which
/// are nearly full (one cheap request each), and an abuser's drained bucket
/// loses every comparison: it is evicted only if all the candidates are
/// drained too, or once it has refilled, when evicting it costs nothing. A
/// client that keeps sending stays at the recent end and is never a candidate.
/// Each charge is one hash lookup and O(1) list moves; each eviction looks at
/// a fixed number of buckets.
pub struct RateLimiter {
    config: RateLimitConfig,
    hash_key: [u8; 16],
    capacity_nano: u64,
    clients_max: usize,
    index: HashMap<ClientKey, usize>,
    buckets: Vec<Bucket>,
    /// Buckets by when their client was last seen.
    recency: Recency,
}

/// Hides the hash key, which would let a reader aim keys at one bucket.
impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .field("clients", &self.clients())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `hash_key` should be random per process (e.g. two words from
    /// `crate::random::RandomSource`); see [`ClientKey`] for why.
    pub fn new(config: RateLimitConfig, hash_key: [u8; 16]) -> RateLimiter {
        RateLimiter {
            config,
            hash_key,
            capacity_nano: u64::from(config.burst) * NANO_PER_TOKEN,
            clients_max: config.clients_max.max(1),
            index: HashMap::new(),
            buckets: Vec::new(),
            recency: Recency::default(),
        }
    }

    /// The one place that decides who pays: the API key when one was sent and
    /// is not empty (an empty key shared by everyone would let one client
    /// drain everyone's bucket), else the peer address.
    pub fn client_key(&self, api_key: Option<&[u8]>, peer: IpAddr) -> ClientKey {
        match api_key {
            Some(raw) if !raw.is_empty() => ClientKey::api_key(raw, &self.hash_key),
            _ => ClientKey::ip(peer),
        }
    }

    /// Charges `cost` tokens (1 for a stepper call or cached answer;
    /// [`fib_compute_cost`] for computing F(n)) to `client` at `now`.
    ///
    /// A cost above `burst` is charged as `burst`: no bucket could ever pay
    /// more, and a request that can never succeed would only teach clients to
    /// retry forever. A refused request costs nothing, so a client that waits
    /// `retry_after_secs` is served.
    pub fn charge(&mut self, client: ClientKey, cost: u32, now: Instant) -> Decision {
        if !self.config.enabled {
            return Decision::Allowed {
                remaining: self.config.burst,
            };
        }
        let cost_nano = u64::from(cost.min(self.config.burst)) * NANO_PER_TOKEN;
        let slot = match self.index.get(&client) {
            Some(&slot) => slot,
            None => self.admit(client, now),
        };
        self.recency.touch(slot);
        let rate = self.config.rate_per_sec;
        let capacity_nano = self.capacity_nano;
        let Some(bucket) = self.buckets.get_mut(slot) else {
            // Unreachable: every slot in the index or from `admit` exists.
            return Decision::Allowed { remaining: 0 };
        };
        refill(bucket, rate, capacity_nano, now);
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

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// The `RateLimit-Policy` value, `"default";q=<burst>;w=<secs>`: a token
    /// bucket is described as a quota of `burst` per the time it takes to
    /// refill from empty, which is what a client can count on sustaining.
    pub fn write_policy(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"default\";q=");
        write_u64(out, u64::from(self.config.burst));
        out.extend_from_slice(b";w=");
        let window = secs_to_earn(self.capacity_nano, self.config.rate_per_sec).max(1);
        write_u64(out, u64::from(window));
    }

    /// The `RateLimit` value, `"default";r=<remaining>;t=<secs>`, where `t` is
    /// the time until the bucket is full again when allowed (from whole
    /// tokens, so it may round up by one second), or until a retry can
    /// succeed when limited, so it agrees with `Retry-After`.
    pub fn write_state(&self, out: &mut Vec<u8>, decision: &Decision) {
        let (remaining, secs) = match *decision {
            Decision::Allowed { remaining } => {
                let missing = self.config.burst.saturating_sub(remaining);
                let secs = secs_to_earn(
                    u64::from(missing) * NANO_PER_TOKEN,
                    self.config.rate_per_sec,
                );
                (remaining, secs)
            }
            Decision::Limited { retry_after_secs } => (0, retry_after_secs),
        };
        out.extend_from_slice(b"\"default\";r=");
        write_u64(out, u64::from(remaining));
        out.extend_from_slice(b";t=");
        write_u64(out, u64::from(secs));
    }

    /// Finds a slot for a new client, whose bucket starts full, and indexes
    /// it; the caller puts the slot in the recency list.
    fn admit(&mut self, client: ClientKey, now: Instant) -> usize {
        let capacity_nano = self.capacity_nano;
        let fresh = |key| Bucket {
            key,
            nano_tokens: capacity_nano,
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
            let tokens = tokens_at(bucket, self.config.rate_per_sec, self.capacity_nano, now);
            if tokens >= self.capacity_nano {
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

/// A clock that steps backwards credits nothing rather than panicking or
/// crediting twice.
fn tokens_at(bucket: &Bucket, rate_per_sec: u32, capacity_nano: u64, now: Instant) -> u64 {
    let elapsed_ns = now.saturating_duration_since(bucket.updated).as_nanos();
    let earned = elapsed_ns.saturating_mul(u128::from(rate_per_sec));
    let total = u128::from(bucket.nano_tokens).saturating_add(earned);
    u64::try_from(total.min(u128::from(capacity_nano))).unwrap_or(capacity_nano)
}

fn refill(bucket: &mut Bucket, rate_per_sec: u32, capacity_nano: u64, now: Instant) {
    bucket.nano_tokens = tokens_at(bucket, rate_per_sec, capacity_nano, now);
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

/// Measured compute time of F(n) with `fib::decimal` (fast doubling plus the
/// decimal conversion, ibig, release build), as (n, microseconds), best of
/// 2–50 runs on this 2-core machine with another build running:
///
/// | n      | 1e3 | 5e3 | 2e4 | 5e4 | 1e5 | 2e5  | 5e5  | 1e6   | 2e6    |
/// |--------|-----|-----|-----|-----|-----|------|------|-------|--------|
/// | µs     | 1.2 | 8.5 | 63  | 284 | 820 | 2400 | 9345 | 50000 | 129000 |
///
/// (and 530 ms at 5e6, 1.56 s at 1e7; an idle run gave F(1e5) ≈ 1 ms,
/// F(1e6) ≈ 35 ms, F(1e7) ≈ 0.9 s). The table rounds each figure up to the
/// larger of the two sets. Growth is about n^1.5 (Karatsuba-class
/// multiplication plus divide-and-conquer radix conversion), i.e. convex, so
/// interpolating linearly between points over-estimates, which is the safe
/// side for a price.
const COMPUTE_MICROS: [(u64, u64); 10] = [
    (0, 0),
    (1_000, 2),
    (5_000, 10),
    (20_000, 65),
    (50_000, 290),
    (100_000, 1_000),
    (200_000, 2_500),
    (500_000, 9_500),
    (1_000_000, 50_000),
    (2_000_000, 130_000),
];

/// A token is "one cheap request", about 10 µs of event-loop time.
const MICROS_PER_TOKEN: u64 = 10;

/// The cost of `/v1/fib?n=N` when it must be computed (a cached answer costs
/// 1): proportional to the measured compute time above,
///
/// `cost(n) = clamp(ceil(est_micros(n) / 10), 1, 10000)`
///
/// where `est_micros` interpolates linearly between the measurements. So
/// F(10^4) costs 3, F(10^5) 100, F(5·10^5) 950, and from about n = 1.6·10^6
/// (100 ms) on every n costs 10000, the default `burst`: the price tops out
/// there so one request is always affordable from a full default bucket, and
/// [`RateLimiter::charge`] caps it again at a smaller configured burst. With
/// the default rate that still holds one client to one such computation per
/// two seconds. Monotonic in `n`.
pub fn fib_compute_cost(n: u64) -> u32 {
    let tokens = estimate_micros(n)
        .div_ceil(MICROS_PER_TOKEN)
        .clamp(1, u64::from(DEFAULT_BURST));
    u32::try_from(tokens).unwrap_or(DEFAULT_BURST)
}

/// Beyond the last measurement the answer only needs to exceed the cap.
fn estimate_micros(n: u64) -> u64 {
    let mut low = (0u64, 0u64);
    for &(high_n, high_micros) in &COMPUTE_MICROS {
        if n <= high_n {
            let (low_n, low_micros) = low;
            let span = u128::from(high_n - low_n).max(1);
            let rise = u128::from(high_micros - low_micros) * u128::from(n - low_n);
            let extra = u64::try_from(rise.div_ceil(span)).unwrap_or(u64::MAX);
            return low_micros.saturating_add(extra);
        }
        low = (high_n, high_micros);
    }
    u64::MAX
}

/// SipHash-2-4 (Aumasson and Bernstein) with its 128-bit output, as in the
/// reference implementation: a keyed PRF, so the hashes of chosen API keys
/// are unpredictable without the per-process key.
fn siphash_2_4_128(key: &[u8; 16], msg: &[u8]) -> [u8; 16] {
    let key = u128::from_le_bytes(*key);
    let (k0, k1) = (key as u64, (key >> 64) as u64);
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let (words, tail) = msg.as_chunks::<8>();
    for word in words {
        compress(&mut v, u64::from_le_bytes(*word), 2);
    }
    // The length's low byte goes in the top byte of the last word.
    let mut last = (msg.len() as u64) << 56;
    for (i, &byte) in tail.iter().enumerate() {
        last |= u64::from(byte) << (8 * i);
    }
    compress(&mut v, last, 2);
    v[2] ^= 0xee;
    sip_rounds(&mut v, 4);
    let low = v[0] ^ v[1] ^ v[2] ^ v[3];
    v[1] ^= 0xdd;
    sip_rounds(&mut v, 4);
    let high = v[0] ^ v[1] ^ v[2] ^ v[3];
    (u128::from(low) | (u128::from(high) << 64)).to_le_bytes()
}

fn compress(v: &mut [u64; 4], word: u64, rounds: usize) {
    v[3] ^= word;
    sip_rounds(v, rounds);
    v[0] ^= word;
}

fn sip_rounds(v: &mut [u64; 4], rounds: usize) {
    let [v0, v1, v2, v3] = v;
    for _ in 0..rounds {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    const KEY: [u8; 16] = [7; 16];

    fn config(rate_per_sec: u32, burst: u32, clients_max: usize) -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            rate_per_sec,
            burst,
            clients_max,
        }
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
            let mut limiter = RateLimiter::new(config(rate, burst, 16), KEY);
            for (j, &(at, cost, expected)) in steps.iter().enumerate() {
                let got = limiter.charge(ip(1), cost, ms(t0, at));
                assert_eq!(got, expected, "case {i} step {j}");
            }
        }
    }

    #[test]
    fn refill_is_exact_over_many_tiny_steps() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(config(3, 10, 4), KEY);
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
        let mut limiter = RateLimiter::new(config(1, 2, 4), KEY);
        assert_eq!(limiter.charge(ip(1), 2, ms(t0, 5_000)), allowed(0));
        assert_eq!(limiter.charge(ip(1), 1, t0), limited(1));
        assert_eq!(limiter.charge(ip(1), 1, ms(t0, 6_000)), allowed(0));
    }

    #[test]
    fn clients_are_separate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(config(1, 1, 4), KEY);
        assert_eq!(limiter.charge(ip(1), 1, t0), allowed(0));
        assert_eq!(limiter.charge(ip(1), 1, t0), limited(1));
        assert_eq!(limiter.charge(ip(2), 1, t0), allowed(0));
        assert_eq!(limiter.clients(), 2);
    }

    #[test]
    fn disabled_always_allows_and_keeps_nothing() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(
            RateLimitConfig {
                enabled: false,
                ..config(1, 7, 4)
            },
            KEY,
        );
        for i in 0..100u8 {
            assert_eq!(limiter.charge(ip(i), u32::MAX, t0), allowed(7));
        }
        assert_eq!(limiter.clients(), 0);
        assert!(!limiter.config().enabled);
    }

    #[test]
    fn defaults_let_three_thousand_cheap_requests_a_second_through() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(RateLimitConfig::default(), KEY);
        // 3 × 1000 rps from one host for 10 s, evenly spaced.
        for i in 0..30_000u64 {
            let now = t0 + Duration::from_micros(i * 1_000_000 / 3_000);
            let got = limiter.charge(ip(1), 1, now);
            assert!(matches!(got, Decision::Allowed { .. }), "request {i}");
        }
    }

    #[test]
    fn table_stays_bounded_under_a_million_spoofed_keys() {
        let t0 = Instant::now();
        let clients_max = 4096;
        let mut limiter = RateLimiter::new(config(5000, 10_000, clients_max), KEY);
        let mut full_at = None;
        for i in 0..1_000_000u32 {
            let peer = IpAddr::from([203, 0, 113, 9]);
            let client = limiter.client_key(Some(&i.to_le_bytes()), peer);
            let now = t0 + Duration::from_micros(u64::from(i));
            assert!(matches!(
                limiter.charge(client, 1, now),
                Decision::Allowed { .. }
            ));
            assert!(limiter.clients() <= clients_max);
            // `HashMap::capacity` is what it can take before it must grow,
            // which tombstones lower and only a reallocation raises.
            let capacities = (limiter.buckets.capacity(), limiter.index.capacity());
            match full_at {
                None if i as usize == clients_max => full_at = Some(capacities),
                None => {}
                Some((buckets, index)) => {
                    assert_eq!(capacities.0, buckets, "key {i}");
                    assert!(capacities.1 <= index, "key {i}");
                }
            }
        }
        assert_eq!(limiter.clients(), clients_max);
        assert_eq!(limiter.buckets.len(), clients_max);
        assert_eq!(limiter.buckets.capacity(), clients_max);
    }

    #[test]
    fn abuser_stays_limited_while_spoofed_keys_flood() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(config(10, 100, 64), KEY);
        let abuser = ip(66);
        assert_eq!(limiter.charge(abuser, 100, t0), allowed(0));
        let mut now = t0;
        for i in 0..100_000u32 {
            now = t0 + Duration::from_nanos(u64::from(i) * 50);
            let spoofed =
                limiter.client_key(Some(&i.to_be_bytes()), IpAddr::from([198, 51, 100, 1]));
            limiter.charge(spoofed, 1, now);
            if i % 1000 == 0 {
                // Keeps sending: stays at the recent end, stays limited.
                assert!(matches!(
                    limiter.charge(abuser, 1, now),
                    Decision::Limited { .. }
                ));
            }
        }
        // Idle while 60,000+ more invented keys go by: it is the oldest bucket
        // but still the emptiest, so it is never the one evicted.
        for i in 100_000..160_000u32 {
            let spoofed =
                limiter.client_key(Some(&i.to_be_bytes()), IpAddr::from([198, 51, 100, 1]));
            limiter.charge(spoofed, 1, now);
        }
        assert_eq!(limiter.charge(abuser, 100, now), limited(10));
        assert!(limiter.clients() <= 64);
    }

    #[test]
    fn idle_full_buckets_are_evicted_before_drained_ones() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(config(1, 10, 3), KEY);
        assert_eq!(limiter.charge(ip(1), 10, t0), allowed(0)); // drained, oldest
        assert_eq!(limiter.charge(ip(2), 1, t0), allowed(9)); // nearly full
        assert_eq!(limiter.charge(ip(3), 5, t0), allowed(5));
        // Full: the newcomer takes the fullest of the oldest, ip(2).
        assert_eq!(limiter.charge(ip(4), 1, t0), allowed(9));
        assert_eq!(limiter.charge(ip(1), 1, t0), limited(1));
        assert_eq!(limiter.charge(ip(3), 0, t0), allowed(5));
        assert!(!limiter.index.contains_key(&ip(2)));
        // Once refilled, ip(1) is lossless to evict, though now the newest
        // but one: idle-and-full wins over recency.
        let later = ms(t0, 20_000);
        assert_eq!(limiter.charge(ip(4), 0, later), allowed(10));
        assert_eq!(limiter.charge(ip(3), 10, later), allowed(0));
        assert_eq!(limiter.charge(ip(5), 1, later), allowed(9));
        assert!(!limiter.index.contains_key(&ip(1)));
        assert_eq!(limiter.clients(), 3);
    }

    #[test]
    fn recency_list_survives_every_shape() {
        // Naive oracle: the list walked oldest to newest is the index, in
        // order of last charge.
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(config(1, 5, 5), KEY);
        let mut order: Vec<ClientKey> = Vec::new();
        let script = [1u8, 2, 1, 3, 3, 4, 5, 2, 6, 1, 7, 7, 8, 2];
        for &c in &script {
            limiter.charge(ip(c), 1, t0);
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
        let limiter = RateLimiter::new(RateLimitConfig::default(), KEY);
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
        let policies: &[(RateLimitConfig, &str)] = &[
            (RateLimitConfig::default(), "\"default\";q=10000;w=2"),
            (config(3, 10, 1), "\"default\";q=10;w=4"),
            (config(100, 10, 1), "\"default\";q=10;w=1"),
        ];
        for &(cfg, expected) in policies {
            let mut out = Vec::new();
            RateLimiter::new(cfg, KEY).write_policy(&mut out);
            assert_eq!(out, expected.as_bytes());
        }
    }

    #[test]
    fn client_keys() {
        let limiter = RateLimiter::new(RateLimitConfig::default(), KEY);
        let other = RateLimiter::new(RateLimitConfig::default(), [8; 16]);
        let v4 = IpAddr::from([192, 0, 2, 1]);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(v4);
        let v6a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(v4);
        let v6b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap_or(v4);
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(v4);
        assert_eq!(ClientKey::ip(mapped), ClientKey::ip(v4));
        assert_eq!(ClientKey::ip(v6a), ClientKey::ip(v6b));
        assert_ne!(ClientKey::ip(v6a), ClientKey::ip(v6c));
        assert_eq!(limiter.client_key(None, v4), ClientKey::ip(v4));
        assert_eq!(limiter.client_key(Some(b""), v4), ClientKey::ip(v4));
        let key = limiter.client_key(Some(b"secret"), v4);
        assert_eq!(key, limiter.client_key(Some(b"secret"), v6a));
        assert_ne!(key, limiter.client_key(Some(b"secreT"), v4));
        assert_ne!(key, other.client_key(Some(b"secret"), v4));
    }

    #[test]
    fn siphash_matches_reference_vectors() {
        // vectors_sip128 from the reference implementation: key 00..0f,
        // message 00..(len-1).
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let message: Vec<u8> = (0..64).collect();
        let cases: &[(usize, u128)] = &[
            (0, 0xa3817f04ba25a8e66df67214c7550293),
            (1, 0xda87c1d86b99af44347659119b22fc45),
            (7, 0xa1f1ebbed8dbc153c0b84aa61ff08239),
            (8, 0x3b62a9ba6258f5610f83e264f31497b4),
            (15, 0x5493e99933b0a8117e08ec0f97cfc3d9),
            (16, 0x6ee2a4ca67b054bbfd3315bf85230577),
            (63, 0x5150d1772f50834a503e069a973fbd7c),
        ];
        for &(len, expected) in cases {
            let got = siphash_2_4_128(&key, message.get(..len).unwrap_or_default());
            assert_eq!(got, expected.to_be_bytes(), "length {len}");
        }
    }

    #[test]
    fn fib_compute_cost_is_monotonic_and_bounded() {
        let mut previous = 0;
        let mut n = 0u64;
        while n < 50_000_000 {
            let cost = fib_compute_cost(n);
            assert!((1..=DEFAULT_BURST).contains(&cost), "n={n} cost={cost}");
            assert!(cost >= previous, "n={n}");
            previous = cost;
            n += 1 + n / 64;
        }
        assert_eq!(fib_compute_cost(u64::MAX), DEFAULT_BURST);
        let table: &[(u64, u32)] = &[
            (0, 1),
            (186, 1),
            (10_000, 3),
            (100_000, 100),
            (500_000, 950),
            (1_000_000, 5_000),
            (10_000_000, DEFAULT_BURST),
        ];
        for &(n, cost) in table {
            assert_eq!(fib_compute_cost(n), cost, "n={n}");
        }
        assert_eq!(RateLimitConfig::default().burst, DEFAULT_BURST);
    }
}
