//! What computing F(n) costs a client's token bucket: the measured compute
//! time priced at `access::ratelimit::MICROS_PER_TOKEN`, capped at the
//! default burst.

use crate::access::ratelimit::{DEFAULT_BURST, MICROS_PER_TOKEN};

/// Measured compute time of F(n) with `fib::decimal` (fast doubling in the
/// decimal engine, digits included, release build), as (n, microseconds):
/// `taskset -c 0 micro --fib N` (bench/micro.rs), median of 7 runs on this
/// 2-core machine with other builds running (load average 4 to 7):
///
/// | n      | 1e3 | 5e3 | 2e4 | 5e4 | 1e5 | 2e5  | 5e5  | 1e6   | 2e6   | 5e6   | 1e7    |
/// |--------|-----|-----|-----|-----|-----|------|------|-------|-------|-------|--------|
/// | µs     | 2   | 6   | 34  | 202 | 601 | 1972 | 4924 | 10838 | 26476 | 53490 | 113168 |
///
/// (the fastest of the seven: 81 ms at 1e7, 10.2 ms at 1e6, 0.58 ms at 1e5;
/// bench/RESULTS.md has the side-by-side run against GMP). The table rounds
/// each median up. Growth is a little above linear (n log n multiplication
/// on a number of 0.21·n digits, log n doubling steps), i.e. convex, so
/// interpolating linearly between points over-estimates, which is the safe
/// side for a price.
const COMPUTE_MICROS: [(u64, u64); 12] = [
    (0, 0),
    (1_000, 2),
    (5_000, 8),
    (20_000, 40),
    (50_000, 210),
    (100_000, 650),
    (200_000, 2_000),
    (500_000, 5_000),
    (1_000_000, 11_000),
    (2_000_000, 27_000),
    (5_000_000, 55_000),
    (10_000_000, 115_000),
];

/// The cost of `/v1/fib?n=N` when it must be computed (a cached answer costs
/// 1): proportional to the measured compute time above,
///
/// `cost(n) = clamp(ceil(est_micros(n) / 10), 1, 10000)`
///
/// where `est_micros` interpolates linearly between the measurements. So
/// F(10^4) costs 2, F(10^5) 65, F(10^6) 1,100, and from about n = 8.75·10^6
/// (100 ms) on every n costs 10000, the default `burst`: the price tops out
/// there so one request is always affordable from a full default bucket, and
/// `RateLimiter::charge` caps it again at a smaller configured burst. With
/// the default rate that still holds one client to one such computation per
/// two seconds. Monotonic in `n`.
pub fn compute_cost(n: u64) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_cost_is_monotonic_and_bounded() {
        let mut previous = 0;
        let mut n = 0u64;
        while n < 50_000_000 {
            let cost = compute_cost(n);
            assert!((1..=DEFAULT_BURST).contains(&cost), "n={n} cost={cost}");
            assert!(cost >= previous, "n={n}");
            previous = cost;
            n += 1 + n / 64;
        }
        assert_eq!(compute_cost(u64::MAX), DEFAULT_BURST);
        let table: &[(u64, u32)] = &[
            (0, 1),
            (186, 1),
            (10_000, 2),
            (100_000, 65),
            (500_000, 500),
            (1_000_000, 1_100),
            (8_700_000, 9_940),
            (8_750_000, DEFAULT_BURST),
            (10_000_000, DEFAULT_BURST),
        ];
        for &(n, cost) in table {
            assert_eq!(compute_cost(n), cost, "n={n}");
        }
    }
}
