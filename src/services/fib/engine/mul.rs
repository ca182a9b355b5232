//! Multiplication of limb vectors, by size: schoolbook (product scanning)
//! for short operands, Karatsuba in the middle, number-theoretic transforms
//! ([`super::ntt`]) for long ones. Squares take their own, cheaper paths at
//! every size.
//!
//! The thresholds were measured on this machine, by F(n) with its digits
//! (`micro --fib N`, 15 to 40 interleaved runs per variant): Karatsuba from
//! 96 limbs made F(10^5) 10% faster than from 64 (and 25% faster than from
//! 32; 128 and 160 were alike); transforms from 1,500 coefficients, with the
//! fill rule up to 4,096, made F(2·10^5) a third faster than from 767 and
//! 2,048, and F(3·10^5), F(6·10^5), F(10^6) no slower (nor than with the
//! fill rule up to 8,192).

use super::limbs::{self, div_rem_base_wide};
use super::ntt::{self, Transforms};

/// Below this many limbs in the shorter operand, schoolbook.
pub const KARATSUBA_THRESHOLD: usize = 96;

/// From this many coefficients (limbs in the product, less one; both
/// operands past the Karatsuba threshold), transforms may be used ...
pub const NTT_THRESHOLD: usize = 1500;

/// ... but below this many only when they fill at least
/// [`NTT_MIN_FILL_EIGHTHS`] of the power-of-two transform: 2,200
/// coefficients (the last product of F(2·10^5)) would pad to 4,096 points,
/// where three Karatsuba halves are cheaper. From here on a transform beats
/// the split at any fill.
pub const NTT_ANY_FILL: usize = 4096;

/// Eighths of the transform the coefficients must fill below [`NTT_ANY_FILL`].
pub const NTT_MIN_FILL_EIGHTHS: usize = 5;

/// Whether a product of `coefficients` coefficients goes to the transforms.
fn use_transform(coefficients: usize) -> bool {
    coefficients >= NTT_ANY_FILL
        || (coefficients >= NTT_THRESHOLD
            && 8 * coefficients >= NTT_MIN_FILL_EIGHTHS * coefficients.next_power_of_two())
}

/// `a · b`, canonical.
pub fn mul(transforms: &mut Transforms, a: &[u64], b: &[u64]) -> Vec<u64> {
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0; a.len() + b.len()];
    mul_into(transforms, a, b, &mut out);
    limbs::trim(&mut out);
    out
}

/// `a²`, canonical.
pub fn square(transforms: &mut Transforms, a: &[u64]) -> Vec<u64> {
    if a.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0; 2 * a.len()];
    square_into(transforms, a, &mut out);
    limbs::trim(&mut out);
    out
}

/// `out = a · b` over all of `out`, `out.len() == a.len() + b.len()`; the
/// operands may have zero limbs on top.
pub fn mul_into(transforms: &mut Transforms, a: &[u64], b: &[u64], out: &mut [u64]) {
    debug_assert_eq!(out.len(), a.len() + b.len());
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if short.is_empty() {
        out.fill(0);
    } else if short.len() < KARATSUBA_THRESHOLD {
        schoolbook(long, short, out);
    } else if use_transform(out.len() - 1) {
        ntt::multiply(transforms, long, short, out);
    } else if long.len() > 2 * short.len() {
        unbalanced(transforms, long, short, out);
    } else {
        karatsuba(transforms, long, short, out);
    }
}

/// `out = a²` over all of `out`, `out.len() == 2 · a.len()`.
pub fn square_into(transforms: &mut Transforms, a: &[u64], out: &mut [u64]) {
    debug_assert_eq!(out.len(), 2 * a.len());
    if a.is_empty() {
        return;
    }
    if a.len() < KARATSUBA_THRESHOLD {
        schoolbook_square(a, out);
    } else if use_transform(out.len() - 1) {
        ntt::multiply(transforms, a, a, out);
    } else {
        karatsuba_square(transforms, a, out);
    }
}

/// A column sum of limb products: 192 bits, as a `u128` and the count of its
/// overflows.
#[derive(Clone, Copy, Default)]
struct Column {
    low: u128,
    high: u64,
}

impl Column {
    #[inline(always)]
    fn add(&mut self, v: u128) {
        let (sum, overflow) = self.low.overflowing_add(v);
        self.low = sum;
        self.high += u64::from(overflow);
    }

    #[inline(always)]
    fn double(&mut self) {
        self.high = (self.high << 1) | (self.low >> 127) as u64;
        self.low <<= 1;
    }
}

#[inline(always)]
fn limb_product(x: u64, y: u64) -> u128 {
    u128::from(x) * u128::from(y)
}

/// Adds `xs[i]·ys[len-1-i]` for every i (the slices are equally long) to
/// `column`, in two interleaved sums so that each add-with-carry chain is
/// half as long: the chain, not the multiplier, limits this loop.
#[inline(always)]
fn add_products(column: &mut Column, xs: &[u64], ys: &[u64]) {
    debug_assert_eq!(xs.len(), ys.len());
    let mut other = Column::default();
    let (x_pairs, y_pairs) = (xs.chunks_exact(2), ys.rchunks_exact(2));
    if let ([x], [y]) = (x_pairs.remainder(), y_pairs.remainder()) {
        other.add(limb_product(*x, *y));
    }
    for (x, y) in x_pairs.zip(y_pairs) {
        column.add(limb_product(x[0], y[1]));
        other.add(limb_product(x[1], y[0]));
    }
    column.add(other.low);
    column.high += other.high;
}

/// Product scanning: column k sums `a[i]·b[k-i]` in 192 bits, then one
/// division splits it into the limb and the carry. A column of `c` products
/// is below `c·10^38`, so its high word stays far below the base.
fn schoolbook(a: &[u64], b: &[u64], out: &mut [u64]) {
    let (last, columns) = out.split_last_mut().expect("operands are non-empty");
    let mut carry = 0u128;
    for (k, limb) in columns.iter_mut().enumerate() {
        let first = k.saturating_sub(b.len() - 1);
        let end = (k + 1).min(a.len());
        let mut column = Column {
            low: carry,
            high: 0,
        };
        add_products(&mut column, &a[first..end], &b[k + 1 - end..=k - first]);
        let (next, digit) = div_rem_base_wide(column.high, column.low);
        *limb = digit;
        carry = next;
    }
    *last = carry as u64;
}

/// Product scanning for a square: each cross product once, doubled, plus
/// the diagonal: about half the multiplications of [`schoolbook`].
fn schoolbook_square(a: &[u64], out: &mut [u64]) {
    let (last, columns) = out.split_last_mut().expect("operand is non-empty");
    let mut carry = 0u128;
    for (k, limb) in columns.iter_mut().enumerate() {
        let first = k.saturating_sub(a.len() - 1);
        // Pairs (i, k - i) with i < k - i.
        let end = k.div_ceil(2);
        let mut column = Column::default();
        if first < end {
            add_products(&mut column, &a[first..end], &a[k + 1 - end..=k - first]);
        }
        column.double();
        if k % 2 == 0 {
            let x = a[k / 2];
            column.add(limb_product(x, x));
        }
        column.add(carry);
        let (next, digit) = div_rem_base_wide(column.high, column.low);
        *limb = digit;
        carry = next;
    }
    *last = carry as u64;
}

/// Karatsuba for `long.len() <= 2 · short.len()`: split at half the longer
/// length, three half-size products instead of four.
fn karatsuba(transforms: &mut Transforms, long: &[u64], short: &[u64], out: &mut [u64]) {
    let half = long.len().div_ceil(2);
    let (a0, a1) = long.split_at(half);
    let (b0, b1) = short.split_at(half.min(short.len()));
    if b1.is_empty() {
        // Too unbalanced to split both: the short operand fits in one half.
        unbalanced(transforms, long, short, out);
        return;
    }
    let (z0, z2) = out.split_at_mut(2 * half);
    mul_into(transforms, a0, b0, z0);
    mul_into(transforms, a1, b1, z2);
    let a_sum = half_sum(a0, a1);
    let b_sum = half_sum(b0, b1);
    let mut middle = vec![0; a_sum.len() + b_sum.len()];
    mul_into(transforms, &a_sum, &b_sum, &mut middle);
    combine_middle(out, middle, half);
}

fn karatsuba_square(transforms: &mut Transforms, a: &[u64], out: &mut [u64]) {
    let half = a.len().div_ceil(2);
    let (a0, a1) = a.split_at(half);
    let (z0, z2) = out.split_at_mut(2 * half);
    square_into(transforms, a0, z0);
    square_into(transforms, a1, z2);
    let a_sum = half_sum(a0, a1);
    let mut middle = vec![0; 2 * a_sum.len()];
    square_into(transforms, &a_sum, &mut middle);
    combine_middle(out, middle, half);
}

/// `low + high` with one spare limb for the carry (`low` is the longer half).
fn half_sum(low: &[u64], high: &[u64]) -> Vec<u64> {
    let mut sum = Vec::with_capacity(low.len() + 1);
    sum.extend_from_slice(low);
    sum.push(0);
    limbs::add_into(&mut sum, high);
    sum
}

/// With `out = z0 + z2·B^(2h)` in place, adds `(middle - z0 - z2)·B^h`.
fn combine_middle(out: &mut [u64], mut middle: Vec<u64>, half: usize) {
    let (z0, z2) = out.split_at(2 * half);
    let borrow = limbs::sub_from(&mut middle, z0) + limbs::sub_from(&mut middle, trimmed(z2));
    debug_assert_eq!(borrow, 0);
    let carry = limbs::add_into(&mut out[half..], trimmed(&middle));
    debug_assert_eq!(carry, 0);
}

/// The slice without its zero limbs on top.
fn trimmed(limbs: &[u64]) -> &[u64] {
    let len = limbs.iter().rposition(|&l| l != 0).map_or(0, |i| i + 1);
    &limbs[..len]
}

/// `long · short` by pieces of `short.len()` limbs of `long`, each a
/// balanced product added in at its offset.
fn unbalanced(transforms: &mut Transforms, long: &[u64], short: &[u64], out: &mut [u64]) {
    out.fill(0);
    let mut piece = vec![0; 2 * short.len()];
    for (i, chunk) in long.chunks(short.len()).enumerate() {
        let piece = &mut piece[..chunk.len() + short.len()];
        mul_into(transforms, chunk, short, piece);
        let carry = limbs::add_into(&mut out[i * short.len()..], trimmed(piece));
        debug_assert_eq!(carry, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::fib::engine::limbs::BASE;
    use crate::services::fib::engine::limbs::testing::random_limbs;

    /// The reference every faster path is checked against.
    fn reference(a: &[u64], b: &[u64]) -> Vec<u64> {
        let mut out = vec![0; a.len() + b.len()];
        if !a.is_empty() && !b.is_empty() {
            schoolbook(a, b, &mut out);
        }
        out
    }

    fn check(transforms: &mut Transforms, a: &[u64], b: &[u64]) {
        let expected = reference(a, b);
        let mut out = vec![7; a.len() + b.len()];
        mul_into(transforms, a, b, &mut out);
        assert_eq!(out, expected, "{} x {} limbs", a.len(), b.len());
        let mut out = vec![7; 2 * a.len()];
        square_into(transforms, a, &mut out);
        let squared = reference(a, a);
        assert_eq!(out, squared, "{} limbs squared", a.len());
        if a.is_empty() || b.is_empty() {
            return;
        }
        let mut out = vec![7; a.len() + b.len()];
        ntt::multiply(transforms, a, b, &mut out);
        assert_eq!(out, expected, "NTT {} x {} limbs", a.len(), b.len());
        let mut out = vec![7; 2 * a.len()];
        ntt::multiply(transforms, a, a, &mut out);
        assert_eq!(out, squared, "NTT {} limbs squared", a.len());
        let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
        let mut out = vec![7; a.len() + b.len()];
        karatsuba(transforms, long, short, &mut out);
        assert_eq!(out, expected, "Karatsuba {} x {} limbs", a.len(), b.len());
    }

    /// Lengths around every switch, and some between.
    fn lengths() -> Vec<usize> {
        let mut lengths = vec![0, 1, 2, 3, 5, 8, 13, 20, 50, 100, 200, 300, 500, 1000, 1500];
        // Operand lengths where a balanced product's path changes: Karatsuba,
        // and the transforms by coefficient count (2L - 1: 1,500, then 2,048
        // and 2,560 where the fill rule switches, then 4,096).
        for switch in [KARATSUBA_THRESHOLD, 750, 1024, 1280, 2048] {
            lengths.extend([switch - 2, switch - 1, switch, switch + 1, switch + 2]);
        }
        lengths
    }

    #[test]
    fn every_path_matches_schoolbook_on_random_operands() {
        let mut transforms = Transforms::new();
        let mut state = 5;
        for &la in &lengths() {
            // Fewer partners for long operands: the reference is quadratic.
            let partners = if la < 1000 {
                vec![0, 1, 7, KARATSUBA_THRESHOLD, la / 3, la, la + 1]
            } else {
                vec![la]
            };
            for lb in partners {
                let a = random_limbs(&mut state, la, false);
                let b = random_limbs(&mut state, lb, false);
                check(&mut transforms, &a, &b);
            }
        }
    }

    #[test]
    fn every_path_matches_schoolbook_on_all_max_limbs() {
        let mut transforms = Transforms::new();
        for &len in &lengths() {
            let a = vec![BASE - 1; len];
            check(&mut transforms, &a, &a.clone());
            if len < 1000 {
                check(&mut transforms, &a, &vec![BASE - 1; len / 2 + 1]);
            }
        }
    }

    #[test]
    fn long_transforms_match_schoolbook() {
        // Products of 4,093 and 8,193 coefficients: 4,096- and 16,384-point
        // transforms, where the stages run block by block.
        let mut transforms = Transforms::new();
        let mut state = 9;
        for (la, lb) in [(2_047, 2_047), (4_100, 4_094)] {
            let a = random_limbs(&mut state, la, false);
            let b = random_limbs(&mut state, lb, la == 2_047);
            let mut out = vec![7; la + lb];
            ntt::multiply(&mut transforms, &a, &b, &mut out);
            assert_eq!(out, reference(&a, &b), "{la} x {lb} limbs");
        }
    }
}
