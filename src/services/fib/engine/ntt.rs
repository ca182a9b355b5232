//! Exact multiplication of large limb vectors by number-theoretic transforms
//! over three primes just below 2^62, recombined by the Chinese remainder
//! theorem (Garner's form).
//!
//! Each product coefficient is a sum of at most `len` limb products, so it is
//! below `len · 10^38`; the three primes multiply to about 2^186, which
//! leaves room for `len` up to 2^59, far beyond the longest transform the
//! primes allow (2^40 points, see [`MAX_LOG_LEN`]) or memory holds. So the
//! residues always determine the coefficient exactly: no rounding anywhere.
//!
//! Arithmetic is safe scalar Rust on `u64`/`u128`:
//! - butterflies keep values lazily in `[0, 2p)` (Harvey's trick) and multiply
//!   by twiddle factors with Shoup's precomputed quotients (one high and two
//!   low multiplications);
//! - the pointwise products use Montgomery reduction, whose extra factor
//!   2^-64 is undone by the final scaling together with `1/len`;
//! - the forward transform is decimation in frequency (natural order in,
//!   bit-reversed out) and the inverse is decimation in time on the same
//!   twiddles (bit-reversed in, natural out) followed by reading the result
//!   backwards, so no bit-reversal pass is ever made;
//! - stages run two at a time (one pass over the array for two), over the
//!   whole array while their blocks are long, then block by block while a
//!   block sits in the L1 cache.
//!
//! # Memory
//! A product of `c` coefficients transforms at `n`, the next power of two,
//! and holds four buffers of `n` words while it runs (three residues and one
//! scratch; a square three), 32·n bytes, plus the twiddle tables: 16·n bytes
//! per field, kept in a [`Transforms`] that grows with the largest product
//! and is dropped with it. For F(10^7) the last product has 110,000
//! coefficients: n = 2^17, 4 MiB of buffers and 6 MiB of tables.

use super::limbs::{self, BASE};

/// log2 of the longest transform: every prime below has 2^40 dividing p - 1.
pub const MAX_LOG_LEN: u32 = 40;

/// Transform stages run over the whole array until blocks are this long
/// (32 KiB of `u64`, an L1 data cache), then block by block, so the small
/// stages stay in cache.
const BLOCK: usize = 1 << 12;

/// One prime field and its constants, all derived at compile time so a
/// short product pays for no set-up.
#[derive(Debug)]
struct Field {
    p: u64,
    /// `-p^-1 mod 2^64`, for Montgomery reduction.
    neg_inv: u64,
    /// `roots[k]`: a primitive 2^k-th root of unity.
    roots: [u64; MAX_LOG_LEN as usize + 1],
    /// `scales[k]`: 2^64 / 2^k mod p, the factor that ends a 2^k-point
    /// inverse transform of Montgomery products.
    scales: [u64; MAX_LOG_LEN as usize + 1],
    /// [`limbs::reciprocal`] of 4p (normalised, as p > 2^61), for Shoup quotients.
    reciprocal_4p: u64,
}

impl Field {
    const fn new(p: u64, generator: u64) -> Field {
        assert!(p < 1 << 62 && (p as u128) * 4 > BASE as u128);
        assert!((p - 1).is_multiple_of(1 << MAX_LOG_LEN));
        // Newton's iteration for p^-1 mod 2^64: each step doubles the
        // correct low bits, starting from 1 (p is odd).
        let mut inv: u64 = 1;
        let mut i = 0;
        while i < 6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(inv)));
            i += 1;
        }
        assert!(p.wrapping_mul(inv) == 1);
        const LEN: usize = MAX_LOG_LEN as usize + 1;
        let mut roots = [0u64; LEN];
        roots[LEN - 1] = pow_mod(generator, (p - 1) >> MAX_LOG_LEN, p);
        let mut k = LEN - 1;
        while k > 0 {
            roots[k - 1] = mul_mod(roots[k], roots[k], p);
            k -= 1;
        }
        assert!(roots[0] == 1 && roots[1] == p - 1);
        // 1/2 mod p.
        let half = p.div_ceil(2);
        let mut scales = [0u64; LEN];
        scales[0] = ((1u128 << 64) % p as u128) as u64;
        let mut k = 1;
        while k < LEN {
            scales[k] = mul_mod(scales[k - 1], half, p);
            k += 1;
        }
        Field {
            p,
            neg_inv: inv.wrapping_neg(),
            roots,
            scales,
            reciprocal_4p: limbs::reciprocal(4 * p),
        }
    }

    /// Shoup's quotient for multiplying by the constant `w < p`:
    /// floor(w·2^64 / p) = floor(4w·2^64 / 4p), one [`limbs::div_2by1`].
    #[inline]
    fn quotient(&self, w: u64) -> u64 {
        limbs::div_2by1(w << 2, 0, 4 * self.p, self.reciprocal_4p).0
    }

    /// `w` ready for [`shoup`] in this field.
    fn factor(&self, w: u64) -> Factor {
        Factor {
            w,
            quotient: self.quotient(w),
        }
    }

    /// `a·b·2^-64 mod p` in `[0, 2p)`, for `a·b < p·2^64` (true for `a, b < 2p`).
    #[inline(always)]
    fn montgomery(&self, a: u64, b: u64) -> u64 {
        let t = u128::from(a) * u128::from(b);
        let m = (t as u64).wrapping_mul(self.neg_inv);
        ((t + u128::from(m) * u128::from(self.p)) >> 64) as u64
    }
}

/// The three primes (c·2^40 + 1, the largest below 2^62) with a generator of
/// each multiplicative group. Their product is about 2^186.
const FIELDS: [Field; 3] = [
    Field::new(0x3fff_c000_0000_0001, 11),
    Field::new(0x3fff_be00_0000_0001, 3),
    Field::new(0x3fff_8400_0000_0001, 19),
];

/// `a·b mod p`, slowly (a 128-bit division), for constants.
const fn mul_mod(a: u64, b: u64, p: u64) -> u64 {
    ((a as u128 * b as u128) % p as u128) as u64
}

/// `base^exp mod p`, slowly, for constants.
const fn pow_mod(base: u64, mut exp: u64, p: u64) -> u64 {
    let mut result = 1 % p;
    let mut b = base % p;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul_mod(result, b, p);
        }
        b = mul_mod(b, b, p);
        exp >>= 1;
    }
    result
}

/// Shoup's quotient for multiplying by the constant `w < p`: floor(w·2^64 / p).
const fn shoup_quotient(w: u64, p: u64) -> u64 {
    (((w as u128) << 64) / p as u128) as u64
}

/// `a·w mod p` in `[0, 2p)` for any `a`, given `w < p` and its Shoup quotient.
#[inline(always)]
fn shoup(a: u64, w: u64, quotient: u64, p: u64) -> u64 {
    let q = ((u128::from(a) * u128::from(quotient)) >> 64) as u64;
    a.wrapping_mul(w).wrapping_sub(q.wrapping_mul(p))
}

/// `x` reduced from `[0, 2m)` to `[0, m)`.
#[inline(always)]
fn reduce_once(x: u64, m: u64) -> u64 {
    if x >= m { x - m } else { x }
}

/// A constant multiplier ready for [`shoup`].
#[derive(Clone, Copy, Debug)]
struct Factor {
    w: u64,
    quotient: u64,
}

impl Factor {
    const fn new(w: u64, p: u64) -> Factor {
        Factor {
            w,
            quotient: shoup_quotient(w, p),
        }
    }

    #[inline(always)]
    fn mul(self, a: u64, p: u64) -> u64 {
        shoup(a, self.w, self.quotient, p)
    }
}

/// Garner's constants for the three fields.
mod garner {
    use super::{FIELDS, Factor, pow_mod};

    const P0: u64 = FIELDS[0].p;
    const P1: u64 = FIELDS[1].p;
    const P2: u64 = FIELDS[2].p;

    /// p0^-1 mod p1.
    pub const INV_P0_MOD_P1: Factor = Factor::new(pow_mod(P0 % P1, P1 - 2, P1), P1);
    /// p0 mod p2.
    pub const P0_MOD_P2: Factor = Factor::new(P0 % P2, P2);
    /// (p0·p1)^-1 mod p2.
    pub const INV_P0P1_MOD_P2: Factor = Factor::new(
        pow_mod(((P0 as u128 * P1 as u128) % P2 as u128) as u64, P2 - 2, P2),
        P2,
    );
    /// p0·p1, as the two words of a `u128`.
    pub const P0P1: u128 = P0 as u128 * P1 as u128;
}

/// Twiddle factors per field, grown on demand: entries `m..2m` are the powers
/// `w^0..w^(m-1)` of a primitive 2m-th root `w`, the factors of every stage
/// whose butterflies span `m`. A table for `n` points therefore serves every
/// shorter transform too, and growing it only appends.
#[derive(Debug, Default)]
pub struct Transforms {
    tables: [Table; 3],
}

#[derive(Debug, Default)]
struct Table {
    w: Vec<u64>,
    quotient: Vec<u64>,
}

impl Table {
    /// Makes the table cover transforms of `n` points (a power of two).
    fn cover(&mut self, n: usize, field: &Field) {
        if self.w.is_empty() {
            // Index 0 is never used: stages start at m = 1.
            self.w.push(0);
            self.quotient.push(0);
        }
        self.w.reserve(n.saturating_sub(self.w.len()));
        self.quotient.reserve(n.saturating_sub(self.quotient.len()));
        while self.w.len() < n {
            let m = self.w.len();
            let log = m.trailing_zeros() + 1;
            let step = field.factor(field.roots[log as usize]);
            let mut w = 1;
            for _ in 0..m {
                self.w.push(w);
                self.quotient.push(field.quotient(w));
                w = reduce_once(step.mul(w, field.p), field.p);
            }
        }
    }
}

impl Transforms {
    pub fn new() -> Transforms {
        Transforms::default()
    }
}

/// `out = a · b`, with `out.len() == a.len() + b.len()` and both non-empty;
/// the limbs need not be canonical. `a` and `b` may be the same slice (a
/// square), which saves one transform per field.
pub fn multiply(transforms: &mut Transforms, a: &[u64], b: &[u64], out: &mut [u64]) {
    let square = std::ptr::eq(a, b);
    let coefficients = a.len() + b.len() - 1;
    let n = coefficients.next_power_of_two();
    assert!(
        n.trailing_zeros() <= MAX_LOG_LEN,
        "product too long for the transform"
    );
    let mut residues: [Vec<u64>; 3] = Default::default();
    let mut scratch = Vec::new();
    for ((field, table), residue) in FIELDS.iter().zip(&mut transforms.tables).zip(&mut residues) {
        table.cover(n, field);
        *residue = load(a, n, field.p);
        forward(residue, table, field.p);
        if square {
            for x in residue.iter_mut() {
                *x = field.montgomery(*x, *x);
            }
        } else {
            load_into(&mut scratch, b, n, field.p);
            forward(&mut scratch, table, field.p);
            for (x, &y) in residue.iter_mut().zip(&scratch) {
                *x = field.montgomery(*x, y);
            }
        }
        inverse(residue, table, field.p);
    }
    drop(scratch);
    recombine(&residues, n, out);
}

/// The limbs of `a` reduced into `[0, 2p)` and padded with zeros to `n`.
fn load(a: &[u64], n: usize, p: u64) -> Vec<u64> {
    let mut v = Vec::new();
    load_into(&mut v, a, n, p);
    v
}

fn load_into(v: &mut Vec<u64>, a: &[u64], n: usize, p: u64) {
    v.clear();
    v.reserve(n);
    // Limbs are below 10^19 < 4p, so one conditional subtraction of 2p lands
    // them in [0, 2p).
    v.extend(a.iter().map(|&x| reduce_once(x, 2 * p)));
    v.resize(n, 0);
}

/// One decimation-in-frequency stage over blocks of `2m`: (x, y) becomes
/// (x + y, (x - y)·w^j), all values in `[0, 2p)`.
#[inline(always)]
fn dif_stage(a: &mut [u64], m: usize, table: &Table, p: u64) {
    let two_p = 2 * p;
    let (w, q) = (&table.w[m..2 * m], &table.quotient[m..2 * m]);
    for block in a.chunks_exact_mut(2 * m) {
        let (lo, hi) = block.split_at_mut(m);
        for (((x, y), &w), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(w).zip(q) {
            let (u, v) = (*x, *y);
            *x = reduce_once(u + v, two_p);
            *y = shoup(u + two_p - v, w, q, p);
        }
    }
}

/// One decimation-in-time stage over blocks of `2m`: (x, y) becomes
/// (x + y·w^j, x - y·w^j), all values in `[0, 2p)`.
#[inline(always)]
fn dit_stage(a: &mut [u64], m: usize, table: &Table, p: u64) {
    let two_p = 2 * p;
    let (w, q) = (&table.w[m..2 * m], &table.quotient[m..2 * m]);
    for block in a.chunks_exact_mut(2 * m) {
        let (lo, hi) = block.split_at_mut(m);
        for (((x, y), &w), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(w).zip(q) {
            let u = *x;
            let v = shoup(*y, w, q, p);
            *x = reduce_once(u + v, two_p);
            *y = reduce_once(u + two_p - v, two_p);
        }
    }
}

/// The stage of span 1, whose only twiddle factor is 1: no multiplication,
/// and no per-block loop set-up (the general stage's cost at this span).
/// The same butterfly serves both directions, the result in `[0, 2p)`.
#[inline(always)]
fn unit_stage(a: &mut [u64], p: u64) {
    let two_p = 2 * p;
    for pair in a.chunks_exact_mut(2) {
        let (u, v) = (pair[0], pair[1]);
        pair[0] = reduce_once(u + v, two_p);
        pair[1] = reduce_once(u + two_p - v, two_p);
    }
}

/// Two decimation-in-frequency stages in one pass, spans `m` then `m/2`
/// over blocks of `2m`: the four values a butterfly pair touches stay in
/// registers, so the array is read and written once instead of twice. The
/// arithmetic and the twiddle factors are those of two [`dif_stage`]s.
#[inline(always)]
fn dif_stage_pair(a: &mut [u64], m: usize, table: &Table, p: u64) {
    let two_p = 2 * p;
    let q = m / 2;
    // Every slice cut to exactly q entries, so the loop has no bounds checks.
    let (w0, q0) = (&table.w[m..m + q], &table.quotient[m..m + q]);
    let (w1, q1) = (&table.w[m + q..2 * m], &table.quotient[m + q..2 * m]);
    let (wi, qi) = (&table.w[q..m], &table.quotient[q..m]);
    for block in a.chunks_exact_mut(2 * m) {
        let (first, second) = block.split_at_mut(m);
        let (a0s, a1s) = first.split_at_mut(q);
        let (a2s, a3s) = second.split_at_mut(q);
        for j in 0..q {
            let (a0, a1, a2, a3) = (a0s[j], a1s[j], a2s[j], a3s[j]);
            let b0 = reduce_once(a0 + a2, two_p);
            let b2 = shoup(a0 + two_p - a2, w0[j], q0[j], p);
            let b1 = reduce_once(a1 + a3, two_p);
            let b3 = shoup(a1 + two_p - a3, w1[j], q1[j], p);
            a0s[j] = reduce_once(b0 + b1, two_p);
            a1s[j] = shoup(b0 + two_p - b1, wi[j], qi[j], p);
            a2s[j] = reduce_once(b2 + b3, two_p);
            a3s[j] = shoup(b2 + two_p - b3, wi[j], qi[j], p);
        }
    }
}

/// Two decimation-in-time stages in one pass, spans `q` then `2q` over
/// blocks of `4q`: the counterpart of [`dif_stage_pair`] for [`dit_stage`].
#[inline(always)]
fn dit_stage_pair(a: &mut [u64], q: usize, table: &Table, p: u64) {
    let two_p = 2 * p;
    let m = 2 * q;
    // Every slice cut to exactly q entries, so the loop has no bounds checks.
    let (wi, qi) = (&table.w[q..m], &table.quotient[q..m]);
    let (w0, q0) = (&table.w[m..m + q], &table.quotient[m..m + q]);
    let (w1, q1) = (&table.w[m + q..2 * m], &table.quotient[m + q..2 * m]);
    for block in a.chunks_exact_mut(2 * m) {
        let (first, second) = block.split_at_mut(m);
        let (a0s, a1s) = first.split_at_mut(q);
        let (a2s, a3s) = second.split_at_mut(q);
        for j in 0..q {
            let (a0, a2) = (a0s[j], a2s[j]);
            let a1 = shoup(a1s[j], wi[j], qi[j], p);
            let a3 = shoup(a3s[j], wi[j], qi[j], p);
            let b0 = reduce_once(a0 + a1, two_p);
            let b1 = reduce_once(a0 + two_p - a1, two_p);
            let b2 = shoup(a2 + a3, w0[j], q0[j], p);
            let b3 = shoup(a2 + two_p - a3, w1[j], q1[j], p);
            a0s[j] = reduce_once(b0 + b2, two_p);
            a2s[j] = reduce_once(b0 + two_p - b2, two_p);
            a1s[j] = reduce_once(b1 + b3, two_p);
            a3s[j] = reduce_once(b1 + two_p - b3, two_p);
        }
    }
}

/// Runs the decimation-in-frequency stages of spans `m, m/2, ...` above
/// `stop` on `a`, two at a time where it can.
fn dif_stages(a: &mut [u64], mut m: usize, stop: usize, table: &Table, p: u64) {
    while m > stop {
        if m / 2 > stop {
            dif_stage_pair(a, m, table, p);
            m /= 4;
        } else {
            dif_stage(a, m, table, p);
            m /= 2;
        }
    }
}

/// Runs the decimation-in-time stages of spans `m, 2m, ...` below `stop`
/// on `a`, two at a time where it can.
fn dit_stages(a: &mut [u64], mut m: usize, stop: usize, table: &Table, p: u64) {
    while m < stop {
        if 2 * m < stop {
            dit_stage_pair(a, m, table, p);
            m *= 4;
        } else {
            dit_stage(a, m, table, p);
            m *= 2;
        }
    }
}

/// The transform, natural order in, bit-reversed order out.
fn forward(a: &mut [u64], table: &Table, p: u64) {
    let n = a.len();
    if n < 2 {
        return;
    }
    // Spans whose blocks are longer than BLOCK over the whole array, then
    // each block through all its remaining stages while it is in cache.
    let block_len = n.min(BLOCK);
    dif_stages(a, n / 2, block_len / 2, table, p);
    for block in a.chunks_exact_mut(block_len) {
        dif_stages(block, block_len / 2, 1, table, p);
        unit_stage(block, p);
    }
}

/// The same transform, bit-reversed order in, natural order out; applied to
/// a spectrum it yields `len` times the inverse transform read backwards
/// (entry `k` is at `(n - k) mod n`).
fn inverse(a: &mut [u64], table: &Table, p: u64) {
    let n = a.len();
    if n < 2 {
        return;
    }
    let block_len = n.min(BLOCK);
    for block in a.chunks_exact_mut(block_len) {
        unit_stage(block, p);
        dit_stages(block, 2, block_len, table, p);
    }
    dit_stages(a, block_len, n, table, p);
}

/// Turns the three inverse transforms into base-10^19 limbs: each
/// coefficient is scaled (by 2^64/n, undoing Montgomery and the transform's
/// factor n), recombined into the exact value below 2^186, added to the
/// carry from below and split into one limb and the next carry.
fn recombine(residues: &[Vec<u64>; 3], n: usize, out: &mut [u64]) {
    let log = n.trailing_zeros() as usize;
    let scales: [Factor; 3] = std::array::from_fn(|i| FIELDS[i].factor(FIELDS[i].scales[log]));
    let (p0, p1, p2) = (FIELDS[0].p, FIELDS[1].p, FIELDS[2].p);
    let (p0p1_lo, p0p1_hi) = (garner::P0P1 as u64, (garner::P0P1 >> 64) as u64);
    let (last, coefficients) = out.split_last_mut().expect("a product has limbs");
    let mut carry: u128 = 0;
    for (k, limb) in coefficients.iter_mut().enumerate() {
        let at = (n - k) & (n - 1);
        let r0 = reduce_once(scales[0].mul(residues[0][at], p0), p0);
        let r1 = reduce_once(scales[1].mul(residues[1][at], p1), p1);
        let r2 = reduce_once(scales[2].mul(residues[2][at], p2), p2);
        // x = r0 + p0·t1 + p0·p1·t2 with t1 < p1, t2 < p2.
        let t1 = reduce_once(
            garner::INV_P0_MOD_P1.mul(r1 + p1 - reduce_once(r0, p1), p1),
            p1,
        );
        let low = u128::from(r0) + u128::from(p0) * u128::from(t1);
        let low_mod_p2 = reduce_once(
            reduce_once(r0, p2) + reduce_once(garner::P0_MOD_P2.mul(t1, p2), p2),
            p2,
        );
        let t2 = reduce_once(garner::INV_P0P1_MOD_P2.mul(r2 + p2 - low_mod_p2, p2), p2);
        // p0·p1·t2 as three words, then + low + carry.
        let by_lo = u128::from(t2) * u128::from(p0p1_lo);
        let by_hi = u128::from(t2) * u128::from(p0p1_hi);
        let middle = (by_lo >> 64) + u128::from(by_hi as u64);
        let mut top = ((by_hi >> 64) + (middle >> 64)) as u64;
        let mut bottom = (middle << 64) | u128::from(by_lo as u64);
        for addend in [low, carry] {
            let (s, overflow) = bottom.overflowing_add(addend);
            bottom = s;
            top += u64::from(overflow);
        }
        let (quotient, remainder) = limbs::div_rem_base_wide(top, bottom);
        *limb = remainder;
        carry = quotient;
    }
    debug_assert!(carry < u128::from(BASE), "a product has no more limbs");
    *last = carry as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_consistent() {
        for field in &FIELDS {
            let p = field.p;
            assert_eq!(p.wrapping_mul(field.neg_inv.wrapping_neg()), 1);
            let root = field.roots[MAX_LOG_LEN as usize];
            assert_eq!(pow_mod(root, 1 << MAX_LOG_LEN, p), 1);
            assert_ne!(pow_mod(root, 1 << (MAX_LOG_LEN - 1), p), 1);
            for k in 0..=MAX_LOG_LEN as usize {
                // scales[k] · 2^k = 2^64 (mod p).
                let back = mul_mod(field.scales[k], pow_mod(2, k as u64, p), p);
                assert_eq!(u128::from(back), (1u128 << 64) % u128::from(p));
            }
        }
        let (p0, p1, p2) = (FIELDS[0].p, FIELDS[1].p, FIELDS[2].p);
        assert_eq!(
            (u128::from(garner::INV_P0_MOD_P1.w) * u128::from(p0 % p1)) % u128::from(p1),
            1
        );
        let p0p1_mod_p2 = (garner::P0P1 % u128::from(p2)) as u64;
        assert_eq!(
            (u128::from(garner::INV_P0P1_MOD_P2.w) * u128::from(p0p1_mod_p2)) % u128::from(p2),
            1
        );
        // The exactness bound: a coefficient of a 2^40-point product is below
        // 2^40 · 10^38, under p0·p1·p2.
        let bound = ibig::UBig::from(1u8) << 40_usize;
        let bound = bound * ibig::UBig::from(10u8).pow(38);
        let product = ibig::UBig::from(p0) * ibig::UBig::from(p1) * ibig::UBig::from(p2);
        assert!(bound < product);
    }

    #[test]
    fn shoup_and_montgomery_reduce_correctly() {
        let mut state = 3;
        for field in &FIELDS {
            let p = field.p;
            for _ in 0..10_000 {
                let a = crate::services::fib::engine::limbs::testing::splitmix(&mut state);
                let w = crate::services::fib::engine::limbs::testing::splitmix(&mut state) % p;
                assert_eq!(field.quotient(w), shoup_quotient(w, p));
                let got = field.factor(w).mul(a, p);
                assert!(got < 2 * p);
                assert_eq!(
                    u128::from(got) % u128::from(p),
                    u128::from(a) * u128::from(w) % u128::from(p)
                );
                let (x, y) = (a % (2 * p), w);
                let m = field.montgomery(x, y);
                assert!(m < 2 * p);
                let expected = u128::from(x) * u128::from(y) % u128::from(p);
                let back = (u128::from(m) << 64) % u128::from(p);
                assert_eq!(back, expected);
            }
        }
    }

    #[test]
    fn transform_round_trip_is_identity_times_n() {
        let mut transforms = Transforms::new();
        for log in 0..=14 {
            let n = 1usize << log;
            let field = &FIELDS[log % 3];
            let table = &mut transforms.tables[log % 3];
            table.cover(n, field);
            let mut state = log as u64;
            let original: Vec<u64> = (0..n)
                .map(|_| {
                    crate::services::fib::engine::limbs::testing::splitmix(&mut state) % field.p
                })
                .collect();
            let mut a = original.clone();
            forward(&mut a, table, field.p);
            inverse(&mut a, table, field.p);
            for (k, &x) in original.iter().enumerate() {
                let got = u128::from(a[(n - k) & (n - 1)]) % u128::from(field.p);
                assert_eq!(
                    got,
                    u128::from(x) * n as u128 % u128::from(field.p),
                    "n {n} k {k}"
                );
            }
        }
    }
}
