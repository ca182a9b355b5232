//! Reading `application/x-www-form-urlencoded` query strings in place, without
//! allocating: look a parameter up, find parameters a route does not know, and
//! percent-decode a value into a caller's buffer.
//!
//! Parameter names are compared raw, before any decoding: fibd's parameter
//! names are plain ASCII, and a client that encodes them (`%6E=5`) gets the
//! same clear "unknown parameter" answer as one that misspells them. Values
//! stay encoded until a route asks for them with [`decode_into`]. What a value
//! means (numbers, ranges) belongs to the routes, not here.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Missing,
    /// The raw value, still percent-encoded; empty for `?n` and `?n=`.
    Present(&'a [u8]),
    /// The name appears more than once. Picking one would silently ignore
    /// the other, so callers answer 400 instead.
    Repeated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    InvalidEscape,
    /// The decoded value does not fit the caller's buffer.
    TooLong,
}

impl QueryError {
    /// Text for the client, naming what to change.
    pub fn message(self) -> &'static str {
        match self {
            QueryError::InvalidEscape => {
                "a query parameter has a % that is not followed by two hexadecimal digits"
            }
            QueryError::TooLong => "a query parameter value is longer than this server accepts",
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for QueryError {}

/// Splits `query` into `(name, raw value)` pairs, skipping empty ones such as
/// the middle of `a=1&&b=2`.
fn pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => {
                let (name, value) = pair.split_at(eq);
                (name, value.get(1..).unwrap_or_default())
            }
            None => (pair, &b""[..]),
        })
}

pub fn get<'a>(query: &'a [u8], name: &str) -> Lookup<'a> {
    let mut found = Lookup::Missing;
    for (key, value) in pairs(query) {
        if key == name.as_bytes() {
            if found != Lookup::Missing {
                return Lookup::Repeated;
            }
            found = Lookup::Present(value);
        }
    }
    found
}

/// Returns the first parameter name not in `known`, so a typo like `?nn=5`
/// is answered with its name instead of being silently ignored.
pub fn has_unknown<'a>(query: &'a [u8], known: &[&str]) -> Option<&'a [u8]> {
    pairs(query)
        .map(|(name, _)| name)
        .find(|name| !known.iter().any(|k| k.as_bytes() == *name))
}

/// Percent-decodes `raw` (with `+` as space) into `out` and returns the
/// decoded length. The result may be any bytes; checking it is the caller's.
pub fn decode_into(raw: &[u8], out: &mut [u8]) -> Result<usize, QueryError> {
    let mut input = raw.iter();
    let mut len = 0;
    while let Some(&b) = input.next() {
        let decoded = match b {
            b'+' => b' ',
            b'%' => {
                let hi = input.next().and_then(|&h| hex_value(h));
                let lo = input.next().and_then(|&l| hex_value(l));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(QueryError::InvalidEscape),
                }
            }
            other => other,
        };
        let slot = out.get_mut(len).ok_or(QueryError::TooLong)?;
        *slot = decoded;
        len += 1;
    }
    Ok(len)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn get_finds_present_missing_and_repeated() {
        let cases: &[(&[u8], &str, Lookup<'_>)] = &[
            (b"", "n", Lookup::Missing),
            (b"n=5", "n", Lookup::Present(b"5")),
            (b"a=1&n=5&b=2", "n", Lookup::Present(b"5")),
            (b"n=", "n", Lookup::Present(b"")),
            (b"n", "n", Lookup::Present(b"")),
            (b"n=a=b", "n", Lookup::Present(b"a=b")),
            (b"n=%41+b", "n", Lookup::Present(b"%41+b")),
            (b"nn=5", "n", Lookup::Missing),
            (b"N=5", "n", Lookup::Missing),
            (b"%6E=5", "n", Lookup::Missing),
            (b"n=1&n=2", "n", Lookup::Repeated),
            (b"n=1&n=1", "n", Lookup::Repeated),
            (b"n&n", "n", Lookup::Repeated),
            (b"&&n=1&&", "n", Lookup::Present(b"1")),
            (b"=5", "", Lookup::Present(b"5")),
        ];
        for &(query, name, expected) in cases {
            assert_eq!(get(query, name), expected, "{query:?} {name}");
        }
    }

    #[test]
    fn has_unknown_names_the_first_stranger() {
        let known = &["n", "format"];
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"", None),
            (b"n=5", None),
            (b"n=5&format=json", None),
            (b"nn=5", Some(b"nn")),
            (b"n=5&x=1&y=2", Some(b"x")),
            (b"n=5&&", None),
            (b"=5", Some(b"")),
            (b"N=5", Some(b"N")),
        ];
        for &(query, expected) in cases {
            assert_eq!(has_unknown(query, known), expected, "{query:?}");
        }
        assert_eq!(has_unknown(b"a", &[]), Some(&b"a"[..]));
    }

    type Decoded = Result<&'static [u8], QueryError>;

    #[test]
    fn decode_into_decodes_escapes_and_plus() {
        let cases: &[(&[u8], Decoded)] = &[
            (b"", Ok(b"")),
            (b"abc", Ok(b"abc")),
            (b"a+b", Ok(b"a b")),
            (b"%41%2b%2F", Ok(b"A+/")),
            (b"%00%ff", Ok(b"\0\xff")),
            (b"%", Err(QueryError::InvalidEscape)),
            (b"%4", Err(QueryError::InvalidEscape)),
            (b"%zz", Err(QueryError::InvalidEscape)),
            (b"%4g", Err(QueryError::InvalidEscape)),
            (b"a%", Err(QueryError::InvalidEscape)),
        ];
        for &(raw, expected) in cases {
            let mut out = [0u8; 16];
            let got = decode_into(raw, &mut out).map(|n| &out[..n]);
            assert_eq!(got, expected, "{raw:?}");
        }
    }

    #[test]
    fn decode_into_refuses_to_overflow() {
        let mut out = [0u8; 3];
        assert_eq!(decode_into(b"abc", &mut out), Ok(3));
        assert_eq!(decode_into(b"abcd", &mut out), Err(QueryError::TooLong));
        assert_eq!(decode_into(b"%41%41%41", &mut out), Ok(3));
        assert_eq!(
            decode_into(b"%41%41%41%41", &mut out),
            Err(QueryError::TooLong)
        );
        assert_eq!(decode_into(b"", &mut []), Ok(0));
        assert_eq!(decode_into(b"a", &mut []), Err(QueryError::TooLong));
    }

    #[test]
    fn messages_display() {
        for e in [QueryError::InvalidEscape, QueryError::TooLong] {
            assert_eq!(e.to_string(), e.message());
        }
    }

    proptest! {
        #[test]
        fn decoding_an_encoding_round_trips(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded: Vec<u8> = value.iter().flat_map(|b| format!("%{b:02X}").into_bytes()).collect();
            let mut out = [0u8; 64];
            let n = decode_into(&encoded, &mut out).unwrap();
            prop_assert_eq!(&out[..n], &value[..]);
        }

        #[test]
        fn arbitrary_input_never_panics(
            query in proptest::collection::vec(any::<u8>(), 0..200),
            size in 0usize..64,
        ) {
            let _ = get(&query, "n");
            let _ = has_unknown(&query, &["n"]);
            let mut out = vec![0u8; size];
            if let Ok(n) = decode_into(&query, &mut out) {
                prop_assert!(n <= size);
            }
        }
    }
}
