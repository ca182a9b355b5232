//! The stepper's position: an index and F(index), kept so that moving by one
//! and printing the value both cost time linear in the number's size.
//!
//! Binary-to-decimal conversion is super-linear (over a second at F(10^7)), so
//! printing a binary big integer on every /next or /previous would stall the
//! event loop. Instead the pair (F(i), F(i+1)) lives in base-10^18 limbs: a
//! step is one limb-wise add or subtract, and printing is a walk over the
//! limbs. Conversion happens once, in [`Cursor::at`]. This type owns no
//! persistence and no bounds: the caller decides how far the index may go.

use std::fmt;

use super::digits;

/// Limb base: the largest power of ten whose double still fits in a `u64`, so
/// an add never overflows before the carry is taken.
const BASE: u64 = 1_000_000_000_000_000_000;

/// Decimal digits per limb: every limb but the top one prints zero-padded
/// to this width.
const LIMB_DIGITS: usize = 18;

/// Spare limbs reserved at start-up: the pair gains a limb about every 86
/// forward steps, so this covers thousands of steps before `Vec`'s amortised
/// growth takes over.
const HEADROOM_LIMBS: usize = 64;

/// A position `index` with (F(index), F(index+1)) in little-endian base-10^18
/// limbs, most significant limb non-zero (zero is the empty vector).
pub struct Cursor {
    index: u64,
    current: Vec<u64>,
    next: Vec<u64>,
}

/// Shows the size, not the limbs: near F(10^7) those would be megabytes in a
/// log line.
impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("index", &self.index)
            .field("decimal_len", &self.decimal_len())
            .finish_non_exhaustive()
    }
}

impl Cursor {
    /// Starts at `index`; the only super-linear work the cursor ever does.
    ///
    /// Costs about two `fib::decimal(index)` conversions (measured 1.7 s at
    /// 10^7, 50 ms at 10^6) and memory proportional to `index`, so callers
    /// bound `index` and run this before serving or off the event loop.
    pub fn at(index: u64) -> Cursor {
        let (current, next) = super::pair(index);
        Cursor {
            index,
            current: to_limbs(&current.to_string()),
            next: to_limbs(&next.to_string()),
        }
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    /// Moves to `index + 1`.
    ///
    /// The index cannot overflow: reaching `u64::MAX` would take 2^64 steps
    /// or a number of about 10^19 digits.
    pub fn forward(&mut self) {
        // (a, b) -> (b, a + b): a's vector becomes the sum, then the two swap,
        // so both vectors keep their capacity.
        add_assign(&mut self.current, &self.next);
        std::mem::swap(&mut self.current, &mut self.next);
        self.index += 1;
    }

    /// Moves to `index - 1`; returns `false` and stays put at index 0, where
    /// the stepper has nowhere to go.
    pub fn back(&mut self) -> bool {
        if self.index == 0 {
            return false;
        }
        // (a, b) -> (b - a, a): b >= a always holds for i >= 0.
        sub_assign(&mut self.next, &self.current);
        std::mem::swap(&mut self.current, &mut self.next);
        self.index -= 1;
        true
    }

    /// Exact digit count of F(index) in O(1), for `Content-Length` before the
    /// body is written.
    pub fn decimal_len(&self) -> usize {
        match self.current.split_last() {
            None => 1,
            Some((&top, rest)) => digits::u64_len(top) + rest.len() * LIMB_DIGITS,
        }
    }

    /// Appends the digits of F(index), no newline, in one pass over the limbs.
    pub fn write_decimal(&self, out: &mut Vec<u8>) {
        let Some((&top, rest)) = self.current.split_last() else {
            out.push(b'0');
            return;
        };
        let start = out.len();
        out.resize(start + self.decimal_len(), b'0');
        let (top_digits, rest_digits) = out[start..].split_at_mut(digits::u64_len(top));
        digits::fill_padded(top_digits, top);
        for (chunk, &limb) in rest_digits
            .chunks_exact_mut(LIMB_DIGITS)
            .zip(rest.iter().rev())
        {
            digits::fill_padded(chunk, limb);
        }
    }
}

/// Parses the decimal digits a `UBig` prints into limbs, least significant
/// first, without leading zero limbs.
fn to_limbs(decimal: &str) -> Vec<u64> {
    let mut limbs: Vec<u64> = Vec::with_capacity(decimal.len() / LIMB_DIGITS + 1 + HEADROOM_LIMBS);
    limbs.extend(decimal.as_bytes().rchunks(LIMB_DIGITS).map(|chunk| {
        chunk
            .iter()
            .fold(0, |acc, &d| acc * 10 + u64::from(d.wrapping_sub(b'0')))
    }));
    trim(&mut limbs);
    limbs
}

/// `acc += other`; `acc` may be the shorter one and grows as needed.
fn add_assign(acc: &mut Vec<u64>, other: &[u64]) {
    if acc.len() < other.len() {
        acc.resize(other.len(), 0);
    }
    let mut carry = 0;
    for (x, &y) in acc.iter_mut().zip(other) {
        // x, y < BASE and 2 * BASE < u64::MAX, so this cannot overflow.
        let sum = *x + y + carry;
        carry = u64::from(sum >= BASE);
        *x = sum - carry * BASE;
    }
    for x in acc.iter_mut().skip(other.len()) {
        if carry == 0 {
            break;
        }
        let sum = *x + carry;
        carry = u64::from(sum >= BASE);
        *x = sum - carry * BASE;
    }
    if carry != 0 {
        acc.push(carry);
    }
}

/// `acc -= other`, for `acc >= other` (the cursor's invariant F(i+1) >= F(i)).
fn sub_assign(acc: &mut Vec<u64>, other: &[u64]) {
    let mut borrow = 0;
    for (x, &y) in acc.iter_mut().zip(other) {
        let (diff, under) = x.overflowing_sub(y + borrow);
        borrow = u64::from(under);
        *x = diff.wrapping_add(borrow * BASE);
    }
    for x in acc.iter_mut().skip(other.len()) {
        if borrow == 0 {
            break;
        }
        let (diff, under) = x.overflowing_sub(borrow);
        borrow = u64::from(under);
        *x = diff.wrapping_add(borrow * BASE);
    }
    trim(acc);
}

/// Drops zero high limbs so the length stays the magnitude and `decimal_len`
/// stays exact.
fn trim(limbs: &mut Vec<u64>) {
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::decimal;

    fn printed(cursor: &Cursor) -> String {
        let mut out = b"x".to_vec();
        cursor.write_decimal(&mut out);
        assert_eq!(out.len(), cursor.decimal_len() + 1);
        String::from_utf8(out).expect("digits are ASCII")[1..].to_owned()
    }

    fn check(cursor: &Cursor) {
        let expected = decimal(cursor.index());
        assert_eq!(printed(cursor), expected, "F({})", cursor.index());
        assert_eq!(cursor.decimal_len(), expected.len());
    }

    #[test]
    fn walk_forward_to_2000_and_back() {
        let mut cursor = Cursor::at(0);
        check(&cursor);
        for i in 1..=2000 {
            cursor.forward();
            assert_eq!(cursor.index(), i);
            check(&cursor);
        }
        for i in (0..2000).rev() {
            assert!(cursor.back());
            assert_eq!(cursor.index(), i);
            check(&cursor);
        }
    }

    #[test]
    fn back_at_zero_stays_at_zero() {
        let mut cursor = Cursor::at(0);
        assert!(!cursor.back());
        assert_eq!(cursor.index(), 0);
        assert_eq!(printed(&cursor), "0");
        cursor.forward();
        assert!(cursor.back());
        assert!(!cursor.back());
        assert_eq!(printed(&cursor), "0");
        assert_eq!(cursor.decimal_len(), 1);
    }

    #[test]
    fn starts_anywhere_and_steps_around() {
        for n in [0, 1, 2, 185, 186, 187, 188, 10_000, 100_000] {
            let mut cursor = Cursor::at(n);
            check(&cursor);
            for _ in 0..40 {
                cursor.forward();
                check(&cursor);
            }
            for _ in 0..80 {
                let was = cursor.index();
                assert_eq!(cursor.back(), was > 0);
                check(&cursor);
            }
            assert_eq!(cursor.index(), (n + 40).saturating_sub(80));
        }
    }

    #[test]
    fn steady_state_does_not_reallocate() {
        let mut cursor = Cursor::at(100_000);
        let capacities = (cursor.current.capacity(), cursor.next.capacity());
        for _ in 0..1000 {
            cursor.forward();
            cursor.back();
        }
        let after = (cursor.current.capacity(), cursor.next.capacity());
        assert!(after == capacities || after == (capacities.1, capacities.0));
    }

    #[test]
    fn debug_is_short() {
        let cursor = Cursor::at(1000);
        assert_eq!(
            format!("{cursor:?}"),
            "Cursor { index: 1000, decimal_len: 209, .. }"
        );
    }

    #[test]
    fn limb_carries_and_borrows_ripple() {
        let max = BASE - 1;
        let mut acc = vec![max, max];
        add_assign(&mut acc, &[1]);
        assert_eq!(acc, [0, 0, 1]);
        sub_assign(&mut acc, &[1]);
        assert_eq!(acc, [max, max]);
        sub_assign(&mut acc, &[max, max]);
        assert!(acc.is_empty());
    }
}
