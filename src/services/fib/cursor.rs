//! The stepper's position: an index and F(index), kept so that moving by one
//! and printing the value both cost time linear in the number's size.
//!
//! Binary-to-decimal conversion is super-linear, so printing a binary big
//! integer on every /next or /previous would stall the event loop. Instead
//! the pair (F(i), F(i+1)) lives in the decimal engine's base-10^19 limbs
//! ([`super::engine::limbs`]): a step is one limb-wise add or subtract, and
//! printing is a walk over the limbs. [`Cursor::at`] computes the pair in
//! that base directly, so there is no conversion at all. This type owns no
//! persistence and no bounds: the caller decides how far the index may go.

use std::fmt;

use super::engine::{self, limbs};

/// Spare limbs reserved at start-up: the pair gains a limb about every 91
/// forward steps, so this covers thousands of steps before `Vec`'s amortised
/// growth takes over.
const HEADROOM_LIMBS: usize = 64;

/// A position `index` with (F(index), F(index+1)) in canonical base-10^19
/// limbs (see [`limbs`]).
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
    /// Starts (or jumps) at `index`; the only super-linear work the cursor
    /// ever does.
    ///
    /// Costs one fast doubling in the decimal engine (about as long as
    /// `fib::decimal(index)`: 84 ms at 10^7, see bench/RESULTS.md) and
    /// memory proportional to `index`, so callers bound `index` and run this
    /// before serving or off the event loop.
    pub fn at(index: u64) -> Cursor {
        let (mut current, mut next) = engine::pair(index);
        current.reserve(HEADROOM_LIMBS);
        next.reserve(HEADROOM_LIMBS);
        Cursor {
            index,
            current,
            next,
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
        limbs::add_assign(&mut self.current, &self.next);
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
        limbs::sub_assign(&mut self.next, &self.current);
        std::mem::swap(&mut self.current, &mut self.next);
        self.index -= 1;
        true
    }

    /// Exact digit count of F(index) in O(1), for `Content-Length` before the
    /// body is written.
    pub fn decimal_len(&self) -> usize {
        limbs::decimal_len(&self.current)
    }

    /// Appends the digits of F(index), no newline, in one pass over the limbs.
    pub fn write_decimal(&self, out: &mut Vec<u8>) {
        limbs::write_decimal(&self.current, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::fib::big;

    fn printed(cursor: &Cursor) -> String {
        let mut out = b"x".to_vec();
        cursor.write_decimal(&mut out);
        assert_eq!(out.len(), cursor.decimal_len() + 1);
        String::from_utf8(out).expect("digits are ASCII")[1..].to_owned()
    }

    fn check(cursor: &Cursor) {
        // ibig, the independent oracle: the cursor itself starts from the engine.
        let expected = big(cursor.index()).to_string();
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
}
