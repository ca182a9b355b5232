//! Decimal formatting of machine integers straight into a byte buffer.
//!
//! Response heads, small Fibonacci values and the cursor's big-number limbs are
//! all printed through here, so the hot path never builds a `String` or goes
//! through `core::fmt`. Nothing here allocates except the output `Vec` growing.

/// Two ASCII digits per entry, so the formatting loops divide once per digit
/// pair instead of once per digit.
const PAIRS: [[u8; 2]; 100] = {
    let mut table = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        table[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    table
};

/// `10^19`: the largest power of ten below `u64::MAX`, so a `u128` splits into
/// at most three `u64` pieces of 19 digits each.
const TEN_POW_19: u128 = 10_000_000_000_000_000_000;

/// Fills all of `buf` with the low `buf.len()` decimal digits of `v`,
/// right-aligned and zero-padded.
///
/// Filling a slice of the exact width (rather than returning a start offset)
/// lets the same routine print both unpadded numbers and fixed-width limbs,
/// and keeps it total: any `buf` length is fine, excess high digits are simply
/// not written.
pub(crate) fn fill_padded(buf: &mut [u8], mut v: u64) {
    for chunk in buf.rchunks_mut(2) {
        let pair = PAIRS[(v % 100) as usize];
        v /= 100;
        match chunk {
            [hi, lo] => {
                *hi = pair[0];
                *lo = pair[1];
            }
            [lo] => *lo = pair[1],
            _ => {}
        }
    }
}

/// Number of decimal digits of `v`; `0` has one digit.
pub(crate) fn u64_len(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends exactly `width` digits of `v`, zero-padded on the left.
fn write_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    fill_padded(&mut out[start..], v);
}

/// Appends the decimal digits of `v`.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    write_padded(out, v, u64_len(v));
}

/// Appends the decimal digits of `v`.
///
/// Splits into `u64` pieces first because 128-bit division is a library call
/// on most targets: it runs at most twice here, not once per digit pair.
pub fn write_u128(out: &mut Vec<u8>, v: u128) {
    if let Ok(small) = u64::try_from(v) {
        write_u64(out, small);
        return;
    }
    let low = (v % TEN_POW_19) as u64;
    let rest = v / TEN_POW_19;
    match u64::try_from(rest) {
        Ok(high) => write_u64(out, high),
        Err(_) => {
            // rest < 2^128 / 10^19 < 10^20, so top is a single digit.
            write_u64(out, (rest / TEN_POW_19) as u64);
            write_padded(out, (rest % TEN_POW_19) as u64, 19);
        }
    }
    write_padded(out, low, 19);
}

/// Digit count of `v`, so a caller can emit `Content-Length` before the body.
pub fn u128_len(v: u128) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: a tiny deterministic generator, so failures reproduce.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn check_u64(v: u64) {
        let mut out = b"x".to_vec();
        write_u64(&mut out, v);
        assert_eq!(out, format!("x{v}").into_bytes(), "u64 {v}");
        assert_eq!(u64_len(v), v.to_string().len(), "u64_len {v}");
    }

    fn check_u128(v: u128) {
        let mut out = b"x".to_vec();
        write_u128(&mut out, v);
        assert_eq!(out, format!("x{v}").into_bytes(), "u128 {v}");
        assert_eq!(u128_len(v), v.to_string().len(), "u128_len {v}");
    }

    fn edge_values() -> Vec<u128> {
        let mut values = vec![0, 1, u128::from(u64::MAX), u128::MAX, u128::MAX - 1];
        let mut p: u128 = 1;
        while let Some(next) = p.checked_mul(10) {
            values.extend([p - 1, p, p + 1, next - 1]);
            p = next;
        }
        values.extend([p - 1, p, p + 1]);
        for shift in 0..128 {
            let bit = 1u128 << shift;
            values.extend([bit - 1, bit, bit + 1]);
        }
        values
    }

    #[test]
    fn edge_values_match_format() {
        for v in edge_values() {
            check_u128(v);
            if let Ok(small) = u64::try_from(v) {
                check_u64(small);
            }
        }
    }

    #[test]
    fn random_values_match_format() {
        let mut state = 42;
        for _ in 0..100_000 {
            let hi = splitmix(&mut state);
            let lo = splitmix(&mut state);
            // Random shifts spread the values over every magnitude, not just
            // the 19-to-20-digit numbers uniform bits would give.
            let shift = splitmix(&mut state) % 128;
            let v = ((u128::from(hi) << 64) | u128::from(lo)) >> shift;
            check_u128(v);
            check_u64(lo >> (shift % 64));
        }
    }

    #[test]
    fn fill_padded_zero_pads_and_truncates() {
        let mut buf = [b'?'; 18];
        fill_padded(&mut buf, 42);
        assert_eq!(&buf, b"000000000000000042");
        let mut buf = [b'?'; 3];
        fill_padded(&mut buf, 123_456);
        assert_eq!(&buf, b"456");
        fill_padded(&mut [], 7);
    }
}
