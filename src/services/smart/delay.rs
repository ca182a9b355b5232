//! The hedge delay: a constant (`--hedge-after 300`, the seed's), or a
//! percentile of the upstream's recent successful latency
//! (`--hedge-after p95`), the rule of "The Tail at Scale": hedging after
//! the 95th percentile costs about 5 % extra load and cuts the tail.
//!
//! Latency is kept in a fixed-size log-linear histogram (eight buckets per
//! power of two of microseconds, so a percentile is read within 12.5 %) per
//! second, over a sliding window of the last 10 seconds: no sample list, a
//! few kilobytes whatever the rate. The percentile is read again at most
//! every 100 ms, and clamped to [`DELAY_MIN`, `DELAY_MAX`]; until the
//! window holds [`SAMPLES_MIN`] successes the delay is the seed's 300 ms.
//!
//! Only successful attempts are measured. An attempt cancelled because a
//! hedge won is never seen, which biases the percentile low when hedges
//! win often; the budget is what bounds the extra load that can cause.

use std::fmt;
use std::time::{Duration, Instant};

use crate::base::window::Window;

/// Below this, a hedge fights the loop's own timer resolution (epoll
/// sleeps in whole milliseconds) more than the upstream's tail.
pub const DELAY_MIN: Duration = Duration::from_millis(5);
/// Above this, hedging no longer rescues a call in time; callers wait
/// at most 60 s.
pub const DELAY_MAX: Duration = Duration::from_secs(10);
/// Successes the window must hold before its percentile is trusted.
pub const SAMPLES_MIN: u64 = 100;
/// The delay before there is enough to go on: the seed's constant.
pub const DELAY_DEFAULT: Duration = Duration::from_millis(300);

const WINDOW: Duration = Duration::from_secs(10);
const SLICES: usize = 10;
const RECOMPUTE_EVERY: Duration = Duration::from_millis(100);

/// Sub-buckets per power of two.
const SUB: usize = 8;
/// Powers of two of microseconds covered: up to 2^28 µs, over four minutes
/// (anything longer counts in the last bucket).
const OCTAVES: usize = 27;
const BUCKETS: usize = SUB * (OCTAVES - 1);

/// `--hedge-after`: a constant, or a percentile in thousandths (950: p95).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeAfter {
    Fixed(Duration),
    Percentile(u16),
}

impl fmt::Display for HedgeAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HedgeAfter::Fixed(d) => write!(f, "{} ms", d.as_millis()),
            HedgeAfter::Percentile(p) => {
                write!(f, "the p{}.{} of recent successful latency", p / 10, p % 10)
            }
        }
    }
}

/// Counts by latency bucket.
#[derive(Clone, Debug)]
struct Histogram([u32; BUCKETS]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram([0; BUCKETS])
    }
}

/// The bucket of a latency in microseconds: the first `SUB` buckets hold
/// 0 to 7 µs one each; above, each power of two splits into `SUB`.
fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (msb - 3)) & (SUB as u64 - 1)) as usize;
    ((msb - 2) * SUB + sub).min(BUCKETS - 1)
}

/// The upper end of a bucket, in microseconds: a percentile read from the
/// histogram never comes out below the true one.
fn bucket_ceiling(index: usize) -> u64 {
    if index < SUB {
        return index as u64 + 1;
    }
    let msb = index / SUB + 2;
    let sub = (index % SUB) as u64;
    (SUB as u64 + sub + 1) << (msb - 3)
}

#[derive(Debug)]
pub struct HedgeDelay {
    mode: HedgeAfter,
    window: Window<Histogram>,
    current: Duration,
    /// Successes observed since the delay was last read off the histograms.
    fresh: bool,
    computed_at: Option<Instant>,
}

impl HedgeDelay {
    pub fn new(mode: HedgeAfter) -> HedgeDelay {
        let current = match mode {
            HedgeAfter::Fixed(d) => d,
            HedgeAfter::Percentile(_) => DELAY_DEFAULT,
        };
        HedgeDelay {
            mode,
            window: Window::new(WINDOW, SLICES),
            current,
            fresh: false,
            computed_at: None,
        }
    }

    /// An attempt succeeded after `latency`.
    pub fn observe(&mut self, latency: Duration, now: Instant) {
        if let HedgeAfter::Fixed(_) = self.mode {
            return;
        }
        self.window.advance(now);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let counts = &mut self.window.newest().0;
        if let Some(count) = counts.get_mut(bucket(us)) {
            *count = count.saturating_add(1);
        }
        self.fresh = true;
    }

    /// The delay for a call starting now.
    pub fn current(&mut self, now: Instant) -> Duration {
        let HedgeAfter::Percentile(per_mille) = self.mode else {
            return self.current;
        };
        let due = self
            .computed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= RECOMPUTE_EVERY);
        if due && (self.window.advance(now) || self.fresh) {
            self.current = self.percentile(per_mille, now).unwrap_or(DELAY_DEFAULT);
            self.fresh = false;
            self.computed_at = Some(now);
        }
        self.current
    }

    /// The delay as last read, for the metrics.
    pub fn latest(&self) -> Duration {
        self.current
    }

    /// The window's percentile, clamped; `None` with too few samples.
    fn percentile(&self, per_mille: u16, now: Instant) -> Option<Duration> {
        let mut total = [0u64; BUCKETS];
        for slice in self.window.live(now) {
            for (t, &c) in total.iter_mut().zip(slice.0.iter()) {
                *t += u64::from(c);
            }
        }
        let count: u64 = total.iter().sum();
        if count < SAMPLES_MIN {
            return None;
        }
        // The rank of the percentile's sample, from 1.
        let rank = (count * u64::from(per_mille)).div_ceil(1000).max(1);
        let mut seen = 0;
        let index = total.iter().position(|&c| {
            seen += c;
            seen >= rank
        })?;
        let delay = Duration::from_micros(bucket_ceiling(index));
        Some(delay.clamp(DELAY_MIN, DELAY_MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_cover_every_latency_in_order_within_an_eighth() {
        let mut last = 0;
        for us in (0..5_000_000u64).step_by(997).chain([u64::MAX]) {
            let b = bucket(us);
            assert!(b >= last, "{us} µs went back a bucket");
            last = b;
            if b < BUCKETS - 1 {
                let ceiling = bucket_ceiling(b);
                assert!(ceiling > us, "{us} µs above its bucket's ceiling {ceiling}");
                assert!(
                    ceiling <= us + us / 8 + 1,
                    "{us} µs: ceiling {ceiling} too far"
                );
            }
        }
        assert_eq!(bucket(7), 7);
        assert_eq!(bucket(8), 8);
        assert_eq!(bucket_ceiling(8), 9);
    }

    #[test]
    fn a_fixed_delay_never_moves() {
        let t0 = Instant::now();
        let mut d = HedgeDelay::new(HedgeAfter::Fixed(ms(300)));
        for i in 0..1000 {
            d.observe(ms(5), t0 + ms(i));
        }
        assert_eq!(d.current(t0 + ms(2000)), ms(300));
    }

    #[test]
    fn the_percentile_follows_the_upstream_within_the_window() {
        let t0 = Instant::now();
        let mut d = HedgeDelay::new(HedgeAfter::Percentile(950));
        assert_eq!(d.current(t0), DELAY_DEFAULT, "nothing measured yet");
        // 10 ms answers for 5 s, with 4 % of them at 40 ms: p95 is 10 ms.
        for i in 0..5000u64 {
            let latency = if i % 25 == 0 { ms(40) } else { ms(10) };
            d.observe(latency, t0 + ms(i));
        }
        let fast = d.current(t0 + ms(5000));
        assert!((ms(10)..=ms(12)).contains(&fast), "{fast:?}");
        // Then 200 ms answers: within the window the delay follows them.
        let mut at = t0 + ms(5000);
        for _ in 0..10_000 {
            at += ms(1);
            d.observe(ms(200), at);
        }
        let slow = d.current(at);
        assert!((ms(200)..=ms(225)).contains(&slow), "{slow:?}");
    }

    #[test]
    fn the_delay_is_clamped_and_read_at_most_every_100_ms() {
        let t0 = Instant::now();
        let mut d = HedgeDelay::new(HedgeAfter::Percentile(990));
        for _ in 0..200 {
            d.observe(Duration::from_micros(50), t0);
        }
        assert_eq!(d.current(t0), DELAY_MIN);
        for _ in 0..10_000 {
            d.observe(Duration::from_secs(30), t0 + ms(10));
        }
        assert_eq!(d.current(t0 + ms(50)), DELAY_MIN, "not read again yet");
        assert_eq!(d.current(t0 + ms(100)), DELAY_MAX);
    }
}
