//! What a `/v1/fib?n=N` request asks for, checked without IO or allocation:
//! the `n` parameter, the ETag of F(n), and `If-None-Match` against it.
//!
//! This file owns the meaning of the query value (digits only, a range) and of
//! F(n)'s entity tag. Splitting and percent-decoding the query belong to
//! [`crate::http::query`]; mapping errors to a status belongs to
//! [`crate::error`]; computing and caching F(n) belong to the sibling modules.

use std::fmt;

use crate::base::digits;
use crate::http::etag;
use crate::http::query::{self, Lookup};

/// The largest n served unless configured otherwise: F(10^7) has about two
/// million digits and takes about 0.1 s on a worker with the decimal engine
/// (bench/RESULTS.md).
pub const DEFAULT_MAX_N: u64 = 10_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NQueryError {
    /// No `n`, or `n` with an empty value.
    Missing,
    /// Anything but plain decimal digits: signs, spaces, points, exponents,
    /// hex, or a broken percent escape.
    NotAnInteger,
    /// A minus sign followed by digits; told apart from [`Self::NotAnInteger`]
    /// because the fix ("use 0 or more") is different.
    Negative,
    /// Digits worth more than `u64::MAX`.
    TooLarge,
    /// A valid `u64` above the configured `max_n`.
    AboveMax,
    UnknownParameter,
    /// `n` given more than once; picking one would hide a client bug.
    Repeated,
}

impl NQueryError {
    /// Text for the client, up to the configured limit, which the caller
    /// appends (the text ends "from 0 to "): the client sees this server's
    /// real `max_n`, not a default.
    pub fn message_up_to_limit(self) -> &'static str {
        match self {
            NQueryError::Missing => "n is required: /v1/fib?n=N with N an integer from 0 to ",
            NQueryError::NotAnInteger => {
                "n must be an integer written in plain decimal digits (no sign, spaces, \
                 point, exponent or hex) from 0 to "
            }
            NQueryError::Negative => "n must not be negative: it is an integer from 0 to ",
            NQueryError::TooLarge => {
                "n is larger than a 64-bit integer; it must be an integer from 0 to "
            }
            NQueryError::AboveMax => {
                "n is above this server's limit; it must be an integer from 0 to "
            }
            NQueryError::UnknownParameter => {
                "/v1/fib takes only the parameter n, an integer from 0 to "
            }
            NQueryError::Repeated => "give n only once: /v1/fib?n=N with N an integer from 0 to ",
        }
    }
}

/// Names the setting where the limit would stand.
impl fmt::Display for NQueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}max_n", self.message_up_to_limit())
    }
}

impl std::error::Error for NQueryError {}

/// Raw bytes decoded per call to [`query::decode_into`]: small enough for the
/// stack, while leading zeros of any length still parse.
const DECODE_CHUNK_RAW_BYTES: usize = 32;

/// A chunk ends at an escape boundary, so it may run up to two bytes past
/// [`DECODE_CHUNK_RAW_BYTES`]; decoding never makes it longer.
const DECODE_BUF_BYTES: usize = DECODE_CHUNK_RAW_BYTES + 2;

/// Reads `n` from a raw query string (the part after `?`).
///
/// Leading zeros are accepted (`007` is 7): they are unambiguous, and
/// refusing them would only surprise. Errors are checked in the order that
/// gives the most useful answer: a stranger parameter before a missing `n`
/// (so `?nn=5` names the typo), a non-digit anywhere before an overflow.
pub fn parse_n(query: &[u8], max_n: u64) -> Result<u64, NQueryError> {
    if query::has_unknown(query, &["n"]).is_some() {
        return Err(NQueryError::UnknownParameter);
    }
    let raw = match query::get(query, "n") {
        Lookup::Missing | Lookup::Present(b"") => return Err(NQueryError::Missing),
        Lookup::Repeated => return Err(NQueryError::Repeated),
        Lookup::Present(raw) => raw,
    };
    let mut number = DecimalU64::default();
    let mut buf = [0u8; DECODE_BUF_BYTES];
    let mut rest = raw;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(escape_boundary(rest, DECODE_CHUNK_RAW_BYTES));
        rest = tail;
        let len = query::decode_into(chunk, &mut buf).map_err(|_| NQueryError::NotAnInteger)?;
        for &b in buf.get(..len).unwrap_or_default() {
            number.push(b)?;
        }
    }
    let value = number.finish()?;
    if value > max_n {
        return Err(NQueryError::AboveMax);
    }
    Ok(value)
}

/// The first index at or after `min_len` that does not fall inside a `%XX`
/// escape (or the end of `raw`), so each chunk decodes on its own.
fn escape_boundary(raw: &[u8], min_len: usize) -> usize {
    let mut i = 0;
    while i < raw.len() && i < min_len {
        i += if raw.get(i) == Some(&b'%') { 3 } else { 1 };
    }
    i.min(raw.len())
}

/// A decimal number fed one decoded byte at a time. Overflow is remembered
/// rather than reported at once, so `99999999999999999999x` is still
/// [`NQueryError::NotAnInteger`] and a long negative is still
/// [`NQueryError::Negative`].
#[derive(Default)]
struct DecimalU64 {
    started: bool,
    negative: bool,
    digits: bool,
    /// `None` once the digits exceed `u64::MAX`.
    value: Option<u64>,
}

impl DecimalU64 {
    fn push(&mut self, b: u8) -> Result<(), NQueryError> {
        let first = !self.started;
        if first {
            self.started = true;
            self.value = Some(0);
            if b == b'-' {
                self.negative = true;
                return Ok(());
            }
        }
        if !b.is_ascii_digit() {
            return Err(NQueryError::NotAnInteger);
        }
        self.digits = true;
        self.value = self
            .value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u64::from(b - b'0')));
        Ok(())
    }

    fn finish(self) -> Result<u64, NQueryError> {
        if !self.digits {
            return Err(NQueryError::NotAnInteger);
        }
        if self.negative {
            return Err(NQueryError::Negative);
        }
        self.value.ok_or(NQueryError::TooLarge)
    }
}

const ETAG_PREFIX: &[u8] = b"fib-";

/// Appends F(n)'s strong ETag, `"fib-<n>"`.
///
/// F(n) never changes and the representation depends on n alone, so the tag
/// is known before (and without) computing anything: a revalidation costs no
/// worker time at all.
pub fn write_etag(out: &mut Vec<u8>, n: u64) {
    out.push(b'"');
    out.extend_from_slice(ETAG_PREFIX);
    digits::write_u64(out, n);
    out.push(b'"');
}

/// Whether an `If-None-Match` field value (RFC 9110 §13.1.2) matches F(n)'s
/// ETag, so the caller can answer 304 without computing F(n); the list
/// grammar and weak comparison are [`etag::if_none_match`]'s.
pub fn if_none_match(header: &[u8], n: u64) -> bool {
    let mut n_digits = [0u8; 20];
    let n_digits = n_digits.get_mut(..digits::u64_len(n)).unwrap_or_default();
    digits::fill_padded(n_digits, n);
    etag::if_none_match(header, |opaque| {
        opaque
            .strip_prefix(ETAG_PREFIX)
            .is_some_and(|tag_n| tag_n == &n_digits[..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_n_accepts_plain_digits() {
        let cases: &[(&[u8], u64)] = &[
            (b"n=0", 0),
            (b"n=5", 5),
            (b"n=007", 7),
            (b"n=186", 186),
            (b"n=10000000", 10_000_000),
            (b"n=%35", 5),
            (b"n=%31%30", 10),
            (b"n=1%30", 10),
            (b"&n=5&", 5),
            (
                b"n=00000000000000000000000000000000000000000000000000000000000042",
                42,
            ),
            (
                b"n=%30%30%30%30%30%30%30%30%30%30%30%30%30%30%30%30%30%30%30%31",
                1,
            ),
        ];
        for &(query, expected) in cases {
            assert_eq!(parse_n(query, DEFAULT_MAX_N), Ok(expected), "{query:?}");
        }
    }

    #[test]
    fn parse_n_rejects_everything_else() {
        use NQueryError::*;
        let cases: &[(&[u8], NQueryError)] = &[
            (b"", Missing),
            (b"n", Missing),
            (b"n=", Missing),
            (b"-5", UnknownParameter),
            (b"n=-5", Negative),
            (b"n=-0", Negative),
            (b"n=%2D5", Negative),
            (b"n=-99999999999999999999999", Negative),
            (b"n=-", NotAnInteger),
            (b"n=--5", NotAnInteger),
            (b"n=-1.5", NotAnInteger),
            (b"n=1e3", NotAnInteger),
            (b"n=1.5", NotAnInteger),
            (b"n=1.0", NotAnInteger),
            (b"n= 5", NotAnInteger),
            (b"n=%205", NotAnInteger),
            (b"n=5%20", NotAnInteger),
            (b"n=+5", NotAnInteger),
            (b"n=%2B5", NotAnInteger),
            (b"n=0x10", NotAnInteger),
            (b"n=ff", NotAnInteger),
            (b"n=five", NotAnInteger),
            (b"n=%", NotAnInteger),
            (b"n=5%", NotAnInteger),
            (b"n=%3", NotAnInteger),
            (b"n=%zz", NotAnInteger),
            (b"n=%C2%B2", NotAnInteger),
            (b"n=\xd9\xa5", NotAnInteger),
            (b"n=99999999999999999999x", NotAnInteger),
            (b"n=18446744073709551615", AboveMax),
            (b"n=18446744073709551616", TooLarge),
            (
                b"n=99999999999999999999999999999999999999999999999999",
                TooLarge,
            ),
            (b"n=10000001", AboveMax),
            (b"nn=5", UnknownParameter),
            (b"N=5", UnknownParameter),
            (b"n=5&format=json", UnknownParameter),
            (b"%6E=5", UnknownParameter),
            (b"n=1&n=2", Repeated),
            (b"n=1&n=1", Repeated),
            (b"n&n", Repeated),
        ];
        for &(query, expected) in cases {
            assert_eq!(parse_n(query, DEFAULT_MAX_N), Err(expected), "{query:?}");
        }
    }

    #[test]
    fn parse_n_honours_max_n() {
        assert_eq!(parse_n(b"n=0", 0), Ok(0));
        assert_eq!(parse_n(b"n=1", 0), Err(NQueryError::AboveMax));
        assert_eq!(parse_n(b"n=100", 100), Ok(100));
        assert_eq!(parse_n(b"n=101", 100), Err(NQueryError::AboveMax));
        assert_eq!(parse_n(b"n=18446744073709551615", u64::MAX), Ok(u64::MAX));
        assert_eq!(parse_n(b"n=018446744073709551615", u64::MAX), Ok(u64::MAX));
        assert_eq!(
            parse_n(b"n=18446744073709551616", u64::MAX),
            Err(NQueryError::TooLarge)
        );
    }

    #[test]
    fn escape_boundary_never_splits_an_escape() {
        let cases: &[(&[u8], usize, usize)] = &[
            (b"", 4, 0),
            (b"12345", 4, 4),
            (b"123", 4, 3),
            (b"12%34", 4, 5),
            (b"1%34", 4, 4),
            (b"123%34", 4, 6),
            (b"123%", 4, 4),
            (b"12%", 4, 3),
        ];
        for &(raw, min_len, expected) in cases {
            assert_eq!(escape_boundary(raw, min_len), expected, "{raw:?}");
        }
    }

    #[test]
    fn messages_end_where_the_limit_goes() {
        use NQueryError::*;
        for e in [
            Missing,
            NotAnInteger,
            Negative,
            TooLarge,
            AboveMax,
            UnknownParameter,
            Repeated,
        ] {
            assert!(e.message_up_to_limit().ends_with("from 0 to "), "{e:?}");
            assert!(e.to_string().ends_with("from 0 to max_n"), "{e:?}");
        }
    }

    #[test]
    fn etag_is_quoted_and_derived_from_n() {
        let cases: &[(u64, &[u8])] = &[
            (0, b"\"fib-0\""),
            (5, b"\"fib-5\""),
            (10_000_000, b"\"fib-10000000\""),
            (u64::MAX, b"\"fib-18446744073709551615\""),
        ];
        let mut out = b"ETag: ".to_vec();
        for &(n, expected) in cases {
            out.truncate(6);
            write_etag(&mut out, n);
            assert_eq!(&out[6..], expected, "{n}");
        }
    }

    #[test]
    fn if_none_match_follows_weak_comparison() {
        let cases: &[(&[u8], u64, bool)] = &[
            (b"*", 5, true),
            (b"  *  ", 0, true),
            (b"\"fib-5\"", 5, true),
            (b"W/\"fib-5\"", 5, true),
            (b" \"fib-5\" ", 5, true),
            (b"\"x\", \"fib-5\"", 5, true),
            (b"\"fib-5\",\"x\"", 5, true),
            (b"W/\"a\",W/\"fib-5\"", 5, true),
            (b", ,\"fib-5\",", 5, true),
            (b"\"fib-0\"", 0, true),
            (b"\"fib-18446744073709551615\"", u64::MAX, true),
            (b"\"fib-5\"", 6, false),
            (b"\"fib-5\"", 55, false),
            (b"\"fib-55\"", 5, false),
            (b"\"fib-05\"", 5, false),
            (b"\"fib-\"", 0, false),
            (b"\"FIB-5\"", 5, false),
            (b"\"fib-5 \"", 5, false),
            (b"\"\"", 5, false),
            (b"", 5, false),
            (b",", 5, false),
            // Malformed lists match nothing, even next to a good tag.
            (b"fib-5", 5, false),
            (b"\"fib-5", 5, false),
            (b"fib-5\"", 5, false),
            (b"w/\"fib-5\"", 5, false),
            (b"W/ \"fib-5\"", 5, false),
            (b"W/fib-5", 5, false),
            (b"\"fib-5\" \"x\"", 5, false),
            (b"\"fib-5\", x", 5, false),
            (b"\"fib-5\", *", 5, false),
            (b"*, \"fib-5\"", 5, false),
            (b"**", 5, false),
            (b"\"", 5, false),
            (b"\"fib\"5\"", 5, false),
            (b"\"fib-5\x7f\"", 5, false),
            (b"\"fib-5\"\"", 5, false),
            (b"\"fib-5\"W/", 5, false),
            (b"\"fib-5\"\r", 5, false),
            (b"\"fib-5,\"", 5, false),
            // A comma inside a tag is not a separator.
            (b"\"a,b\", \"fib-5\"", 5, true),
            (b"\"x,\"fib-5\"", 5, false),
            (b"\t\"fib-5\"\t,\t\"y\"", 5, true),
        ];
        for &(header, n, expected) in cases {
            assert_eq!(
                if_none_match(header, n),
                expected,
                "{:?} n={n}",
                header.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn written_etags_match_themselves_only() {
        for n in [0, 1, 9, 10, 186, 187, 10_000_000, u64::MAX] {
            let mut tag = Vec::new();
            write_etag(&mut tag, n);
            assert!(if_none_match(&tag, n), "{n}");
            assert!(!if_none_match(&tag, n.wrapping_add(1)), "{n}");
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(&tag);
            assert!(if_none_match(&weak, n), "{n}");
        }
    }

    proptest! {
        #[test]
        fn parse_n_agrees_with_str_parse(n in any::<u64>(), zeros in 0usize..40) {
            let query = format!("n={}{n}", "0".repeat(zeros));
            prop_assert_eq!(parse_n(query.as_bytes(), u64::MAX), Ok(n));
            let encoded: String = query.bytes().skip(2).map(|b| format!("%{b:02x}")).collect();
            prop_assert_eq!(parse_n(format!("n={encoded}").as_bytes(), u64::MAX), Ok(n));
        }

        #[test]
        fn arbitrary_input_never_panics(
            query in proptest::collection::vec(any::<u8>(), 0..200),
            n in any::<u64>(),
            max_n in any::<u64>(),
        ) {
            if let Ok(v) = parse_n(&query, max_n) {
                prop_assert!(v <= max_n);
            }
            let _ = if_none_match(&query, n);
        }
    }
}
