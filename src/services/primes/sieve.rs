//! The first n primes by a segmented sieve of Eratosthenes, rendered once as
//! JSON text whose every prefix is the answer for a smaller n.
//!
//! Runs on a compute thread (`compute`): the first million primes take tens
//! of milliseconds. The sieve marks odd numbers only, one byte each, in
//! segments that fit the L1 cache; each base prime keeps its next multiple
//! across segments, so no division happens per segment.
//!
//! The rendering is `[2, 3, 5, …, p` without the closing bracket: the first
//! k elements of it are the bytes `..prefix_len(k)`, a length that follows
//! from k alone (how many primes have each number of digits is known), so
//! one text serves every k up to the table's size.

use std::sync::Arc;

use crate::base::digits;

/// Odd numbers per segment: 32 KiB of flags, one byte each.
const SEGMENT_ODDS: usize = 32 * 1024;

/// π(10^d) for d = 0..=10: how many primes have at most d digits.
const PRIMES_BELOW_POW10: [u64; 11] = [
    0,
    4,
    25,
    168,
    1_229,
    9_592,
    78_498,
    664_579,
    5_761_455,
    50_847_534,
    455_052_511,
];

/// The largest n this module serves: p(n) must fit the bound in a `u64`
/// comfortably and its digits the table above.
pub const MAX_N: u64 = 100_000_000;

/// The first `len` primes as JSON text without its closing bracket, in an
/// `Arc` made on the compute thread so the loop only moves a pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimeTable {
    json: Arc<[u8]>,
    len: u64,
}

impl PrimeTable {
    /// How many primes the table holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rendering, `[2, 3, …, p(len)` with no closing bracket.
    pub fn into_json(self) -> Arc<[u8]> {
        self.json
    }
}

/// Bytes of `[2, 3, …, p(n)` (the first n primes, no closing bracket).
pub fn prefix_len(n: u64) -> usize {
    let mut chars = 0;
    for d in 1..PRIMES_BELOW_POW10.len() {
        let with_d_digits = n.min(PRIMES_BELOW_POW10[d]) - n.min(PRIMES_BELOW_POW10[d - 1]);
        chars += d as u64 * with_d_digits;
    }
    let separators = 2 * n.saturating_sub(1);
    usize::try_from(1 + chars + separators).unwrap_or(usize::MAX)
}

/// A number at least as large as the n-th prime (Rosser's bound
/// p(n) < n (ln n + ln ln n) for n ≥ 6).
fn upper_bound(n: u64) -> u64 {
    if n < 6 {
        return 13;
    }
    let x = n as f64;
    (x * (x.ln() + x.ln().ln())).ceil() as u64 + 1
}

/// The first `n` primes (n at most [`MAX_N`]), rendered.
pub fn first_primes(n: u64) -> PrimeTable {
    let n = n.min(MAX_N);
    let mut json = Vec::with_capacity(prefix_len(n));
    json.push(b'[');
    let mut found = 0u64;
    let mut emit = |p: u64| {
        if found == n {
            return false;
        }
        if found > 0 {
            json.extend_from_slice(b", ");
        }
        digits::write_u64(&mut json, p);
        found += 1;
        found < n
    };
    if n > 0 && emit(2) {
        sieve_odd_primes(upper_bound(n), emit);
    }
    PrimeTable {
        json: Arc::from(json),
        len: found,
    }
}

/// Calls `emit` with every odd prime up to `limit` in order, until it says stop.
fn sieve_odd_primes(limit: u64, mut emit: impl FnMut(u64) -> bool) {
    let root = limit.isqrt() + 1;
    // Base primes (odd, up to √limit) with the next odd multiple each must mark.
    let mut base: Vec<(u64, u64)> = small_odd_primes(root)
        .into_iter()
        .map(|p| (p, p * p))
        .collect();
    let mut flags = vec![true; SEGMENT_ODDS];
    // Segments cover odd numbers low, low+2, …; 1 is not prime.
    let mut low = 3u64;
    while low <= limit {
        let span = SEGMENT_ODDS.min(((limit - low) / 2 + 1) as usize);
        let high = low + 2 * span as u64; // exclusive
        flags[..span].fill(true);
        for (p, next) in &mut base {
            let mut m = *next;
            while m < high {
                flags[((m - low) / 2) as usize] = false;
                m += 2 * *p;
            }
            *next = m;
        }
        for (i, &prime) in flags[..span].iter().enumerate() {
            if prime && !emit(low + 2 * i as u64) {
                return;
            }
        }
        low = high;
    }
}

/// Odd primes up to `limit` by the plain sieve (limit is at most ~14,000).
fn small_odd_primes(limit: u64) -> Vec<u64> {
    let limit = limit as usize;
    let mut composite = vec![false; limit + 1];
    let mut primes = Vec::new();
    for i in (3..=limit).step_by(2) {
        if composite[i] {
            continue;
        }
        primes.push(i as u64);
        for m in (i * i..=limit).step_by(2 * i) {
            composite[m] = true;
        }
    }
    primes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_prime(k: u64) -> bool {
        k >= 2
            && (2..)
                .take_while(|d| d * d <= k)
                .all(|d| !k.is_multiple_of(d))
    }

    fn oracle(n: usize) -> Vec<u64> {
        (2..).filter(|&k| is_prime(k)).take(n).collect()
    }

    fn render(primes: &[u64]) -> String {
        let list: Vec<String> = primes.iter().map(u64::to_string).collect();
        format!("[{}", list.join(", "))
    }

    #[test]
    fn tables_match_trial_division() {
        let all = oracle(5000);
        for n in [
            0, 1, 2, 3, 4, 5, 6, 7, 25, 26, 100, 168, 169, 1229, 1230, 5000,
        ] {
            let table = first_primes(n as u64);
            assert_eq!(table.len(), n as u64);
            let json = String::from_utf8(table.into_json().to_vec()).unwrap();
            assert_eq!(json, render(&all[..n]), "n={n}");
        }
    }

    #[test]
    fn every_prefix_length_is_the_rendering_of_that_many() {
        let table = first_primes(100_000);
        let json = table.into_json();
        assert_eq!(prefix_len(100_000), json.len(), "exact capacity");
        // The byte before each prefix end is a digit and the next is a comma.
        for k in [1u64, 2, 4, 5, 25, 26, 168, 169, 9592, 9593, 78_498, 99_999] {
            let end = prefix_len(k);
            assert!(json[end - 1].is_ascii_digit(), "k={k}");
            assert_eq!(&json[end..end + 2], b", ", "k={k}");
            let count = json[..end].iter().filter(|&&b| b == b',').count() as u64;
            assert_eq!(count + 1, k);
        }
        assert_eq!(prefix_len(0), 1);
    }

    #[test]
    fn the_millionth_prime_is_known() {
        let json = first_primes(1_000_000).into_json();
        assert!(json.ends_with(b", 15485863"));
        assert_eq!(json.len(), prefix_len(1_000_000));
    }
}
