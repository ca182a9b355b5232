//! Exact Fibonacci numbers: a compile-time table for every value that fits in
//! a `u128`, and beyond it fast doubling in two forms: in decimal limbs
//! ([`engine`], what /v1/fib and the cursor use: the digits come out without
//! a radix conversion) and on `ibig` ([`big`], [`pair`]: binary values, and
//! the independent oracle of the engine's tests).
//!
//! This module owns the arithmetic only. It knows nothing of HTTP, limits or
//! threads: callers bound `n` and decide where expensive calls run (F(10^7)
//! with its digits takes about 0.1 s, see bench/RESULTS.md).
//!
//! - [`engine`] computes in base 10^19: schoolbook, Karatsuba and
//!   number-theoretic-transform multiplication.
//! - [`cursor`] keeps a position in decimal limbs so stepping and printing are
//!   linear in the size of the number.

pub mod cache;
pub mod cost;
pub mod cursor;
pub mod engine;
pub mod request;
pub mod service;

use std::rc::Rc;

use ibig::UBig;

use crate::base::digits;

/// Length of the table: F(186) is the largest Fibonacci number below 2^128.
pub const TABLE_LEN: usize = 187;

/// F(0)..=F(186), built by the compiler so start-up does no work and an
/// overflow would be a build error rather than a run-time one.
const TABLE: [u128; TABLE_LEN] = {
    let mut table = [0u128; TABLE_LEN];
    table[1] = 1;
    let mut i = 2;
    while i < TABLE_LEN {
        table[i] = table[i - 1] + table[i - 2];
        i += 1;
    }
    table
};

/// F(n) when it fits in a `u128` (n < [`TABLE_LEN`]), so small answers cost a
/// lookup and never touch the big-number code.
pub fn small(n: u64) -> Option<u128> {
    usize::try_from(n).ok().and_then(|i| TABLE.get(i)).copied()
}

/// The exact F(n).
///
/// Costs O(M(n) log n) time and about 0.7·n bits of memory; there is no
/// upper limit on `n` other than memory, so callers must bound it (an
/// allocation failure aborts the process).
pub fn big(n: u64) -> UBig {
    if let Some(v) = small(n) {
        return UBig::from(v);
    }
    // One doubling step short of n, then only the half of the last step that
    // yields F(n): a single multiplication instead of two, and the last step
    // is the most expensive one, about half of the total.
    let k = n >> 1;
    let (prev, cur) = prev_and_current(k);
    if n & 1 == 0 {
        // F(2k) = F(k) * L(k), with L(k) = F(k) + 2F(k-1).
        let lucas = &cur + (&prev << 1);
        cur * lucas
    } else {
        // F(2k+1) = F(k) * L(k+1) + (-1)^k, with L(k+1) = 3F(k) + F(k-1).
        // Here k >= 93, so the product is far above 1 and cannot underflow.
        let lucas_next = &cur * UBig::from(3u8) + prev;
        let product = cur * lucas_next;
        if k & 1 == 0 {
            product + UBig::from(1u8)
        } else {
            product - UBig::from(1u8)
        }
    }
}

/// (F(n), F(n+1)): the seed the cursor starts from.
///
/// Same cost and memory caveat as [`big`].
pub fn pair(n: u64) -> (UBig, UBig) {
    // n + 1 is never computed as a u64, so n = u64::MAX does not overflow.
    let (prev, cur) = prev_and_current(n);
    let next = &prev + &cur;
    (cur, next)
}

/// F(n) in decimal, computed in base 10^19 throughout ([`engine`]), so no
/// binary-to-decimal conversion.
///
/// Same cost and memory caveat as [`big`].
pub fn decimal(n: u64) -> String {
    match small(n) {
        Some(v) => v.to_string(),
        None => {
            let value = engine::fib(n);
            let mut out = Vec::with_capacity(engine::limbs::decimal_len(&value));
            engine::limbs::write_decimal(&value, &mut out);
            String::from_utf8(out).unwrap_or_default()
        }
    }
}

/// (F(k-1), F(k)) by fast doubling, starting from the table so the
/// small-number steps cost nothing. F(-1) = 1 keeps k = 0 uniform.
///
/// Tracking F(k-1) rather than F(k+1) lets each step use the two squarings
/// of GMP's `mpz_fib_ui` instead of the three products of the textbook form.
fn prev_and_current(k: u64) -> (UBig, UBig) {
    // Terminates by shift 63 at the latest: k >> 63 is 0 or 1, both in the table.
    let mut shift = 0;
    let (prev, cur) = loop {
        if let Some(seed) = table_prev_and_current(k >> shift) {
            break seed;
        }
        shift += 1;
    };
    let (mut prev, mut cur) = (UBig::from(prev), UBig::from(cur));
    for bit in (0..shift).rev() {
        let half = k >> (bit + 1);
        let prev_sq = &prev * &prev;
        let cur_sq = &cur * &cur;
        // F(2h+1) = 4F(h)^2 - F(h-1)^2 + 2(-1)^h, where h >= 93, so every
        // subtraction below stays non-negative.
        let four_cur_sq = &cur_sq << 2;
        let odd = if half & 1 == 0 {
            four_cur_sq - &prev_sq + UBig::from(2u8)
        } else {
            four_cur_sq - &prev_sq - UBig::from(2u8)
        };
        // F(2h-1) = F(h)^2 + F(h-1)^2, and F(2h) is the difference.
        let before = cur_sq + prev_sq;
        let even = &odd - &before;
        (prev, cur) = if (k >> bit) & 1 == 1 {
            (even, odd)
        } else {
            (before, even)
        };
    }
    (prev, cur)
}

/// (F(k-1), F(k)) from the table, with F(-1) = 1; `None` past the table.
fn table_prev_and_current(k: u64) -> Option<(u128, u128)> {
    let cur = small(k)?;
    let prev = match k.checked_sub(1) {
        Some(before) => small(before)?,
        None => 1,
    };
    Some((prev, cur))
}

/// F(index) ready to print: small values are formatted straight into the
/// reply, large ones are rendered once and shared by every reply that needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Small(u128),
    Big(Rc<[u8]>),
}

impl Value {
    /// F(cursor's index), rendered once.
    pub fn at_cursor(cursor: &cursor::Cursor) -> Value {
        match small(cursor.index()) {
            Some(v) => Value::Small(v),
            None => {
                let mut digits = Vec::with_capacity(cursor.decimal_len());
                cursor.write_decimal(&mut digits);
                Value::Big(digits.into())
            }
        }
    }

    pub fn decimal_len(&self) -> usize {
        match self {
            Value::Small(v) => digits::u128_len(*v),
            Value::Big(digits) => digits.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious slow oracle: F(0)..=F(n) by repeated addition.
    fn iterative(n: usize) -> Vec<UBig> {
        let mut values = vec![UBig::from(0u8), UBig::from(1u8)];
        while values.len() <= n {
            let next = &values[values.len() - 1] + &values[values.len() - 2];
            values.push(next);
        }
        values.truncate(n + 1);
        values
    }

    #[test]
    fn table_matches_iterative_sum() {
        let (mut a, mut b) = (0u128, 1u128);
        for n in 0..TABLE_LEN as u64 {
            assert_eq!(small(n), Some(a), "F({n})");
            (a, b) = (b, a.wrapping_add(b));
        }
        assert_eq!(small(TABLE_LEN as u64), None);
        assert_eq!(small(u64::MAX), None);
        // The table really is full: F(187) no longer fits.
        assert!(TABLE[185].checked_add(TABLE[186]).is_none());
    }

    #[test]
    fn big_and_pair_match_iterative_up_to_3000() {
        let oracle = iterative(3001);
        for n in 0..=3000 {
            assert_eq!(big(n as u64), oracle[n], "big({n})");
            let (f, g) = pair(n as u64);
            assert_eq!(f, oracle[n], "pair({n}).0");
            assert_eq!(g, oracle[n + 1], "pair({n}).1");
        }
    }

    #[test]
    fn doubling_identities_hold_for_large_k() {
        for k in [10_000u64, 10_001, 31_415, 65_536, 65_537, 99_999, 100_000] {
            let (fk, fk1) = (big(k), big(k + 1));
            let even = &fk * ((&fk1 << 1) - &fk);
            let odd = &fk * &fk + &fk1 * &fk1;
            assert_eq!(big(2 * k), even, "F(2*{k})");
            assert_eq!(big(2 * k + 1), odd, "F(2*{k}+1)");
            assert_eq!(pair(k), (fk, fk1), "pair({k})");
        }
    }

    #[test]
    fn decimal_matches_for_small_and_big() {
        let oracle = iterative(400);
        for (n, value) in oracle.iter().enumerate() {
            assert_eq!(decimal(n as u64), value.to_string(), "decimal({n})");
        }
    }

    #[test]
    fn f_one_million_digits() {
        let digits = decimal(1_000_000);
        assert_eq!(digits.len(), 208_988);
        // Checked independently with Python big integers.
        assert!(digits.starts_with("1953282128"));
        // Last ten digits by iterating modulo 10^10.
        let modulus = 10_000_000_000u64;
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..1_000_000 {
            (a, b) = (b, (a + b) % modulus);
        }
        assert!(digits.ends_with(&format!("{a:010}")), "last digits {a:010}");
    }
}
