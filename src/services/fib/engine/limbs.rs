//! Natural numbers as little-endian base-10^19 limbs: the linear operations
//! (add, subtract, multiply by a small factor), division of a double limb by
//! the base, and printing, which is a walk over the limbs because the base is
//! a power of ten.
//!
//! A number is a `Vec<u64>` (or a slice) with every limb below [`BASE`]. The
//! canonical form has no zero limb on top, and zero is the empty vector; the
//! functions that return a `Vec` keep it canonical.

use crate::base::digits;

/// 10^19: the largest power of ten below 2^64, so a limb holds 19 digits and
/// a product of two limbs fits in a `u128`.
pub const BASE: u64 = 10_000_000_000_000_000_000;

/// Decimal digits per limb: every limb but the top one prints zero-padded to
/// this width.
pub const LIMB_DIGITS: usize = 19;

/// The reciprocal of a normalised divisor `d` (top bit set) for
/// [`div_2by1`]: floor((2^128 - 1) / d) - 2^64 (Möller and Granlund,
/// "Improved division by invariant integers", 2011).
pub const fn reciprocal(d: u64) -> u64 {
    assert!(d >= 1 << 63, "divisor not normalised");
    ((u128::MAX / d as u128) - (1u128 << 64)) as u64
}

/// `(hi·2^64 + lo) / d` and the remainder, for a normalised `d` and `hi < d`,
/// with two multiplications instead of a 128-bit division (a library call).
#[inline(always)]
pub fn div_2by1(hi: u64, lo: u64, d: u64, reciprocal: u64) -> (u64, u64) {
    debug_assert!(hi < d);
    let estimate =
        u128::from(reciprocal) * u128::from(hi) + ((u128::from(hi) << 64) | u128::from(lo));
    let mut quotient = ((estimate >> 64) as u64).wrapping_add(1);
    let mut remainder = lo.wrapping_sub(quotient.wrapping_mul(d));
    if remainder > estimate as u64 {
        quotient = quotient.wrapping_sub(1);
        remainder = remainder.wrapping_add(d);
    }
    if remainder >= d {
        quotient += 1;
        remainder -= d;
    }
    (quotient, remainder)
}

/// BASE has its top bit set, so it is its own normalised divisor.
const BASE_RECIPROCAL: u64 = reciprocal(BASE);

/// `(hi·2^64 + lo) / BASE` and the remainder, for `hi < BASE`.
#[inline]
pub fn div_rem_base(hi: u64, lo: u64) -> (u64, u64) {
    div_2by1(hi, lo, BASE, BASE_RECIPROCAL)
}

/// `(hi·2^128 + lo) / BASE` and the remainder, for `hi < BASE`: a column sum
/// of limb products, split into its limb and the carry to the next column.
#[inline]
pub fn div_rem_base_wide(hi: u64, lo: u128) -> (u128, u64) {
    let (q_hi, r) = div_rem_base(hi, (lo >> 64) as u64);
    let (q_lo, r) = div_rem_base(r, lo as u64);
    ((u128::from(q_hi) << 64) | u128::from(q_lo), r)
}

/// `a + b + carry` for limbs and a carry of 0 or 1: the limb and the carry out.
#[inline]
fn add_limbs(a: u64, b: u64, carry: u64) -> (u64, u64) {
    // b + carry <= BASE fits; the sum may pass 2^64, which `overflowing_add`
    // reports, and is then at least BASE as well.
    let (sum, overflow) = a.overflowing_add(b + carry);
    if overflow || sum >= BASE {
        (sum.wrapping_sub(BASE), 1)
    } else {
        (sum, 0)
    }
}

/// `a - b - borrow` for limbs and a borrow of 0 or 1: the limb and the borrow out.
#[inline]
fn sub_limbs(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let (diff, under) = a.overflowing_sub(b + borrow);
    if under {
        (diff.wrapping_add(BASE), 1)
    } else {
        (diff, 0)
    }
}

/// `acc += other` over `acc`'s length, which must be at least `other`'s;
/// returns the carry out of the top limb (0 or 1).
pub fn add_into(acc: &mut [u64], other: &[u64]) -> u64 {
    debug_assert!(acc.len() >= other.len());
    let (low, high) = acc.split_at_mut(other.len());
    let mut carry = 0;
    for (x, &y) in low.iter_mut().zip(other) {
        (*x, carry) = add_limbs(*x, y, carry);
    }
    for x in high {
        if carry == 0 {
            break;
        }
        (*x, carry) = add_limbs(*x, 0, carry);
    }
    carry
}

/// `acc -= other` over `acc`'s length, which must be at least `other`'s;
/// returns the borrow out of the top limb (0 or 1: 1 means `acc < other`).
pub fn sub_from(acc: &mut [u64], other: &[u64]) -> u64 {
    debug_assert!(acc.len() >= other.len());
    let (low, high) = acc.split_at_mut(other.len());
    let mut borrow = 0;
    for (x, &y) in low.iter_mut().zip(other) {
        (*x, borrow) = sub_limbs(*x, y, borrow);
    }
    for x in high {
        if borrow == 0 {
            break;
        }
        (*x, borrow) = sub_limbs(*x, 0, borrow);
    }
    borrow
}

/// `acc += other`; `acc` may be the shorter one and grows as needed.
pub fn add_assign(acc: &mut Vec<u64>, other: &[u64]) {
    if acc.len() < other.len() {
        acc.resize(other.len(), 0);
    }
    if add_into(acc, other) != 0 {
        acc.push(1);
    }
}

/// `acc -= other`, for `acc >= other` (checked in debug builds).
pub fn sub_assign(acc: &mut Vec<u64>, other: &[u64]) {
    let borrow = sub_from(acc, other);
    debug_assert_eq!(borrow, 0, "subtrahend larger than minuend");
    trim(acc);
}

/// `acc += small`, for `small < BASE`.
pub fn add_small(acc: &mut Vec<u64>, small: u64) {
    add_assign(acc, &[small]);
    trim(acc);
}

/// `acc -= small`, for `small < BASE` and `acc >= small`.
pub fn sub_small(acc: &mut Vec<u64>, small: u64) {
    sub_assign(acc, &[small]);
}

/// `acc *= factor`, for a small factor (`factor < 2^63`, so one limb times it
/// plus a carry stays below `BASE · 2^64`).
pub fn mul_small(acc: &mut Vec<u64>, factor: u64) {
    let mut carry = 0u64;
    for x in acc.iter_mut() {
        let product = u128::from(*x) * u128::from(factor) + u128::from(carry);
        let (q, r) = div_rem_base((product >> 64) as u64, product as u64);
        *x = r;
        carry = q;
    }
    while carry != 0 {
        acc.push(carry % BASE);
        carry /= BASE;
    }
    trim(acc);
}

/// `a + b` as a new canonical number.
pub fn sum(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(long.len() + 1);
    out.extend_from_slice(long);
    add_assign(&mut out, short);
    out
}

/// A `u128` in limbs (at most three: 2^128 < 10^57).
pub fn from_u128(mut v: u128) -> Vec<u64> {
    let mut limbs = Vec::with_capacity(3);
    while v != 0 {
        limbs.push((v % u128::from(BASE)) as u64);
        v /= u128::from(BASE);
    }
    limbs
}

/// Drops zero high limbs so the length is the magnitude.
pub fn trim(limbs: &mut Vec<u64>) {
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
}

/// Exact digit count of a canonical number in O(1); zero has one digit.
pub fn decimal_len(limbs: &[u64]) -> usize {
    match limbs.split_last() {
        None => 1,
        Some((&top, rest)) => digits::u64_len(top) + rest.len() * LIMB_DIGITS,
    }
}

/// Appends the digits of a canonical number, no newline, in one pass over
/// the limbs.
pub fn write_decimal(limbs: &[u64], out: &mut Vec<u8>) {
    let Some((&top, rest)) = limbs.split_last() else {
        out.push(b'0');
        return;
    };
    let start = out.len();
    out.resize(start + decimal_len(limbs), b'0');
    let (top_digits, rest_digits) = out[start..].split_at_mut(digits::u64_len(top));
    digits::fill_padded(top_digits, top);
    for (chunk, &limb) in rest_digits
        .chunks_exact_mut(LIMB_DIGITS)
        .zip(rest.iter().rev())
    {
        digits::fill_padded(chunk, limb);
    }
}

/// Deterministic operands for the engine's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::BASE;

    /// SplitMix64: a tiny deterministic generator, so failures reproduce.
    pub fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A canonical number of `len` limbs: random ones, or every limb at its
    /// maximum when `max` is set.
    pub fn random_limbs(state: &mut u64, len: usize, max: bool) -> Vec<u64> {
        let mut limbs: Vec<u64> = (0..len)
            .map(|_| {
                if max {
                    BASE - 1
                } else {
                    splitmix(state) % BASE
                }
            })
            .collect();
        if let Some(top) = limbs.last_mut() {
            *top = (*top).max(1);
        }
        limbs
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{random_limbs, splitmix};
    use super::*;
    use ibig::UBig;

    fn to_ubig(limbs: &[u64]) -> UBig {
        limbs.iter().rev().fold(UBig::from(0u8), |acc, &l| {
            acc * UBig::from(BASE) + UBig::from(l)
        })
    }

    fn printed(limbs: &[u64]) -> String {
        let mut out = Vec::new();
        write_decimal(limbs, &mut out);
        assert_eq!(out.len(), decimal_len(limbs));
        String::from_utf8(out).expect("ASCII digits")
    }

    #[test]
    fn division_by_invariant_divisors_matches_u128_division() {
        let mut state = 7;
        let mut cases = vec![
            (0, 0),
            (0, BASE - 1),
            (0, BASE),
            (BASE - 1, u64::MAX),
            (1, 0),
        ];
        for _ in 0..100_000 {
            cases.push((splitmix(&mut state) % BASE, splitmix(&mut state)));
        }
        for (hi, lo) in cases {
            let v = (u128::from(hi) << 64) | u128::from(lo);
            let (q, r) = div_rem_base(hi, lo);
            assert_eq!(
                (u128::from(q), u128::from(r)),
                (v / u128::from(BASE), v % u128::from(BASE))
            );
        }
        for _ in 0..10_000 {
            let d = splitmix(&mut state) | 1 << 63;
            let (hi, lo) = (splitmix(&mut state) % d, splitmix(&mut state));
            let v = (u128::from(hi) << 64) | u128::from(lo);
            let (q, r) = div_2by1(hi, lo, d, reciprocal(d));
            assert_eq!(
                (u128::from(q), u128::from(r)),
                (v / u128::from(d), v % u128::from(d))
            );
        }
        let (q, r) = div_rem_base_wide(5, u128::MAX);
        let v = UBig::from(5u8) * (UBig::from(1u8) << 128) + UBig::from(u128::MAX);
        assert_eq!(UBig::from(q) * UBig::from(BASE) + UBig::from(r), v);
        assert!(r < BASE);
    }

    #[test]
    fn linear_operations_match_ibig() {
        let mut state = 11;
        for round in 0..2_000 {
            let a = random_limbs(&mut state, round % 9, round % 3 == 0);
            let b = random_limbs(&mut state, round % 7, round % 5 == 0);
            let (ua, ub) = (to_ubig(&a), to_ubig(&b));
            let s = sum(&a, &b);
            assert_eq!(to_ubig(&s), &ua + &ub);
            assert_ne!(s.last(), Some(&0), "canonical");
            let mut d = s.clone();
            sub_assign(&mut d, &b);
            assert_eq!(d, a);
            let mut m = a.clone();
            mul_small(&mut m, 5);
            assert_eq!(to_ubig(&m), &ua * UBig::from(5u8));
            let mut plus = a.clone();
            add_small(&mut plus, 2);
            assert_eq!(to_ubig(&plus), &ua + UBig::from(2u8));
            sub_small(&mut plus, 2);
            assert_eq!(plus, a);
            assert_eq!(printed(&a), ua.to_string());
        }
    }

    #[test]
    fn carries_and_borrows_ripple_through_max_limbs() {
        let max = BASE - 1;
        let mut acc = vec![max, max];
        add_assign(&mut acc, &[1]);
        assert_eq!(acc, [0, 0, 1]);
        sub_assign(&mut acc, &[1]);
        assert_eq!(acc, [max, max]);
        sub_assign(&mut acc, &[max, max]);
        assert!(acc.is_empty());
        assert_eq!(printed(&[]), "0");
        assert_eq!(printed(&[5, 1]), "10000000000000000005");
        let mut all_max = vec![max; 4];
        mul_small(&mut all_max, 5);
        assert_eq!(to_ubig(&all_max), to_ubig(&[max; 4]) * UBig::from(5u8));
        assert_eq!(from_u128(u128::MAX).len(), 3);
        assert_eq!(to_ubig(&from_u128(u128::MAX)), UBig::from(u128::MAX));
    }
}
