//! F(n) computed in base 10^19 from the start, so its decimal digits come
//! out of a linear walk over the limbs: no binary-to-decimal conversion,
//! which cost ibig about three quarters of the total at n = 10^7.
//!
//! - [`limbs`]: the number format and its linear operations and printing.
//! - [`mul`](mod@mul): multiplication by size (schoolbook, Karatsuba, transforms).
//! - [`ntt`]: the number-theoretic transforms over three 62-bit primes.
//!
//! Fast doubling here takes two squares per bit of n and one product at the
//! end, like `fib::big`; the last product is the most expensive single step.
//!
//! # Memory
//! For F(n) the peak is a few times the result's size plus the last
//! product's transforms: the two factors (0.35·n bits each, as limbs of 64
//! bits holding 63.1), the product, and the buffers and twiddle tables of
//! [`ntt`] (32 and 48 bytes per transform point). F(10^7): 110,000 limbs,
//! 2^17-point transforms, about 13 MiB in all; bench/RESULTS.md has the
//! measured peak of a process that computes it with its digits.

pub mod limbs;
pub mod mul;
pub mod ntt;

use super::{small, table_prev_and_current};
use mul::{mul, square};
use ntt::Transforms;

/// F(n) as canonical limbs.
///
/// Costs O(M(n) log n) time and memory linear in n, with no upper limit on
/// `n` but memory: callers bound it and run large ones off the event loop.
pub fn fib(n: u64) -> Vec<u64> {
    if let Some(v) = small(n) {
        return limbs::from_u128(v);
    }
    let mut transforms = Transforms::new();
    // As in `fib::big`: one doubling step short of n, then only the half of
    // the last step that yields F(n).
    let k = n >> 1;
    let (prev, cur) = prev_and_current(&mut transforms, k);
    if n & 1 == 0 {
        // F(2k) = F(k)·L(k), with L(k) = F(k) + 2F(k-1).
        let mut lucas = prev;
        limbs::mul_small(&mut lucas, 2);
        limbs::add_assign(&mut lucas, &cur);
        mul(&mut transforms, &cur, &lucas)
    } else {
        // F(2k+1) = F(k)·L(k+1) + (-1)^k, with L(k+1) = 3F(k) + F(k-1); here
        // k >= 93, so the product is far above 1.
        let mut lucas_next = cur.clone();
        limbs::mul_small(&mut lucas_next, 3);
        limbs::add_assign(&mut lucas_next, &prev);
        drop(prev);
        let mut product = mul(&mut transforms, &cur, &lucas_next);
        if k & 1 == 0 {
            limbs::add_small(&mut product, 1);
        } else {
            limbs::sub_small(&mut product, 1);
        }
        product
    }
}

/// (F(n), F(n+1)) as canonical limbs: where a cursor starts.
///
/// Same cost and caveats as [`fib`], and about its time (the last step is
/// two squares instead of one product).
pub fn pair(n: u64) -> (Vec<u64>, Vec<u64>) {
    let (prev, cur) = prev_and_current(&mut Transforms::new(), n);
    let next = limbs::sum(&prev, &cur);
    (cur, next)
}

/// (F(k-1), F(k)) by fast doubling from the table, with F(-1) = 1: two
/// squares a step (the form of GMP's `mpz_fib_ui`).
fn prev_and_current(transforms: &mut Transforms, k: u64) -> (Vec<u64>, Vec<u64>) {
    // Terminates by shift 63 at the latest: k >> 63 is 0 or 1, both in the table.
    let mut shift = 0;
    let (prev, cur) = loop {
        if let Some(seed) = table_prev_and_current(k >> shift) {
            break seed;
        }
        shift += 1;
    };
    let (mut prev, mut cur) = (limbs::from_u128(prev), limbs::from_u128(cur));
    for bit in (0..shift).rev() {
        let half = k >> (bit + 1);
        // F(2h-1) = F(h)² + F(h-1)², F(2h+1) = 4F(h)² - F(h-1)² + 2(-1)^h
        //         = 5F(h)² - F(2h-1) + 2(-1)^h, F(2h) = F(2h+1) - F(2h-1).
        // Here h >= 93, so no subtraction goes below zero.
        let mut before = square(transforms, &prev);
        let cur_sq = square(transforms, &cur);
        limbs::add_assign(&mut before, &cur_sq);
        let mut odd = cur_sq;
        limbs::mul_small(&mut odd, 5);
        limbs::sub_assign(&mut odd, &before);
        if half & 1 == 0 {
            limbs::add_small(&mut odd, 2);
        } else {
            limbs::sub_small(&mut odd, 2);
        }
        let mut even = odd.clone();
        limbs::sub_assign(&mut even, &before);
        (prev, cur) = if (k >> bit) & 1 == 1 {
            (even, odd)
        } else {
            (before, even)
        };
    }
    (prev, cur)
}

#[cfg(test)]
mod tests {
    use super::limbs::testing::splitmix;
    use super::*;

    fn text(limbs: &[u64]) -> String {
        let mut out = Vec::new();
        limbs::write_decimal(limbs, &mut out);
        String::from_utf8(out).expect("ASCII digits")
    }

    /// Every n up to 3,000 against ibig's fast doubling (itself checked
    /// against repeated addition in `fib::tests`).
    #[test]
    fn matches_ibig_for_every_n_to_3000() {
        for n in 0..=3000 {
            assert_eq!(
                text(&fib(n)),
                crate::services::fib::big(n).to_string(),
                "F({n})"
            );
        }
    }

    #[test]
    fn pair_matches_ibig() {
        for n in (0..2000).chain([10_000, 65_537, 100_000]) {
            let (cur, next) = pair(n);
            let (big_cur, big_next) = crate::services::fib::pair(n);
            assert_eq!(text(&cur), big_cur.to_string(), "F({n})");
            assert_eq!(text(&next), big_next.to_string(), "F({n}+1)");
        }
    }

    /// Random n up to 10^6, so the transform path runs at many sizes and
    /// both parities of every step.
    #[test]
    fn matches_ibig_for_random_n_to_a_million() {
        let mut state = 2026;
        let mut ns: Vec<u64> = (0..24)
            .map(|_| 3_000 + splitmix(&mut state) % 100_000)
            .collect();
        ns.extend((0..4).map(|_| 100_000 + splitmix(&mut state) % 900_000));
        ns.push(1_000_000);
        for n in ns {
            assert_eq!(
                text(&fib(n)),
                crate::services::fib::big(n).to_string(),
                "F({n})"
            );
        }
    }
}
