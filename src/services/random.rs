//! The /v1/random service: unbiased integers from the OS CSPRNG, the parsing
//! of its query string, and the formatting of its JSON and text bodies.
//!
//! Sans-IO apart from the CSPRNG itself: nothing here sees a socket, a route
//! or a status code. The HTTP layer hands over the raw query bytes, maps a
//! [`RandomQueryError`] to a 400 using [`RandomQueryError::message`], and
//! draws from the one [`RandomSource`] the daemon opens at start-up.

use std::fmt;

/// The most values one request may ask for, so a reply stays small and one
/// request cannot hold the event loop for long.
pub const COUNT_MAX: u16 = 1000;

const MIN_DEFAULT: i64 = 0;
const MAX_DEFAULT: i64 = 100;

/// One `getrandom` call per 512 draws keeps a syscall off almost every request.
const BLOCK_BYTES: usize = 4096;

/// The OS CSPRNG, read ahead in blocks.
pub struct RandomSource {
    block: Box<[u8; BLOCK_BYTES]>,
    /// Offset of the first unused byte of `block`; fewer than 8 bytes left
    /// means the block is used up and must be refilled before the next draw.
    next_byte: usize,
}

impl RandomSource {
    /// Fills the first block now, so a host without a usable CSPRNG stops the
    /// daemon at start-up instead of failing requests later.
    pub fn new() -> Result<RandomSource, getrandom::Error> {
        let mut block = Box::new([0u8; BLOCK_BYTES]);
        getrandom::fill(block.as_mut_slice())?;
        Ok(RandomSource {
            block,
            next_byte: 0,
        })
    }

    /// Each byte of the block is handed out once. If a refill fails the block
    /// stays marked as used up, so the next call tries again rather than
    /// repeating old bytes.
    pub fn next_u64(&mut self) -> Result<u64, getrandom::Error> {
        // At most two passes: the second one finds a freshly filled block.
        loop {
            let unused = self.block.get(self.next_byte..).unwrap_or_default();
            if let Some(&word) = unused.first_chunk::<8>() {
                self.next_byte += 8;
                return Ok(u64::from_le_bytes(word));
            }
            getrandom::fill(self.block.as_mut_slice())?;
            self.next_byte = 0;
        }
    }

    /// Exactly uniform over `min..=max`: rejection sampling rather than a bare
    /// `%`, which would favour the low end of any range whose size does not
    /// divide 2^64. See `uniform_with` for the edge cases.
    pub fn uniform(&mut self, min: i64, max: i64) -> Result<i64, getrandom::Error> {
        uniform_with(|| self.next_u64(), min, max)
    }
}

/// Shows only how much of the block is left, never the bytes: unused bytes
/// are future outputs. Lets an owner derive `Debug`.
impl fmt::Debug for RandomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomSource")
            .field("unused_bytes", &BLOCK_BYTES.saturating_sub(self.next_byte))
            .finish_non_exhaustive()
    }
}

/// The sampling logic apart from the byte source, so tests can drive it with
/// chosen words.
///
/// `min == max` returns `min` without drawing. An inverted range (`min > max`,
/// which [`RandomQuery::parse`] refuses) also returns `min` rather than
/// panicking. The full `i64` range returns a raw draw, since every `u64` maps
/// to a distinct `i64`. Otherwise the range has `size` values, 2 ≤ size <
/// 2^64, and the lowest `2^64 mod size` words are rejected: the rest number a
/// whole multiple of `size`, so `word % size` hits each offset equally often.
/// Fewer than half of all words are rejected, so the expected number of draws
/// is below two; the loop ends unless the source is broken, and a bound on it
/// could only end in a biased answer or an invented error.
fn uniform_with<E>(mut next: impl FnMut() -> Result<u64, E>, min: i64, max: i64) -> Result<i64, E> {
    if min >= max {
        return Ok(min);
    }
    // Two's complement: the difference as u64 is right even above i64::MAX.
    let span = max.wrapping_sub(min) as u64;
    let Some(size) = span.checked_add(1) else {
        return next().map(|word| word as i64);
    };
    // 2^64 mod size, computed without 2^64: (2^64 - size) mod size.
    let reject_below = size.wrapping_neg() % size;
    loop {
        let word = next()?;
        if word >= reject_below {
            // The offset may exceed i64::MAX; wrapping addition still lands
            // on min + offset, which lies in min..=max.
            return Ok(min.wrapping_add((word % size) as i64));
        }
    }
}

/// A validated /v1/random query. `count: None` asks for the single-value
/// reply form; `Some(n)` (1 ≤ n ≤ [`COUNT_MAX`]) for the list form, even for 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomQuery {
    pub min: i64,
    pub max: i64,
    pub count: Option<u16>,
}

/// Why a query was refused; every variant is the client's fault (a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomQueryError {
    InvalidMin,
    InvalidMax,
    MinAboveMax,
    InvalidCount,
    CountOutOfRange,
    UnknownParameter,
    RepeatedParameter,
}

impl RandomQueryError {
    /// Names what is accepted, so the client can fix the request without
    /// reading documentation. The numbers are spelled out because a
    /// `&'static str` cannot be built from the constants; a test ties them
    /// to the constants.
    pub fn message(self) -> &'static str {
        match self {
            RandomQueryError::InvalidMin => {
                "min must be an integer from -9223372036854775808 to 9223372036854775807"
            }
            RandomQueryError::InvalidMax => {
                "max must be an integer from -9223372036854775808 to 9223372036854775807"
            }
            RandomQueryError::MinAboveMax => {
                "min must not be greater than max (min defaults to 0, max to 100)"
            }
            RandomQueryError::InvalidCount => "count must be an integer from 1 to 1000",
            RandomQueryError::CountOutOfRange => "count must be from 1 to 1000",
            RandomQueryError::UnknownParameter => {
                "unknown query parameter; the accepted ones are min, max and count"
            }
            RandomQueryError::RepeatedParameter => {
                "each of min, max and count may be given at most once"
            }
        }
    }
}

impl RandomQuery {
    /// Parses the raw query, the bytes after `?` (without the `?`).
    ///
    /// Pairs are `name=value` separated by `&`; empty pairs (`a&&b`, a
    /// trailing `&`) are skipped because forms and scripts produce them
    /// harmlessly. Names are matched as raw bytes, case-sensitively and
    /// without percent-decoding. Values are percent-decoded, then must be
    /// decimal: an optional `-` and at least one digit (leading zeros are
    /// fine). A `+` sign is refused in every spelling (`+5`, `%2B5`): a raw
    /// `+` means a space in form encoding, so `+5` is ambiguous, and one
    /// spelling per number keeps the grammar small. Spaces, exponents,
    /// fractions, bad `%` escapes and values outside `i64` are refused.
    /// Pairs are checked left to right and the first problem is reported;
    /// `min <= max` is checked last, against the defaults where absent.
    pub fn parse(query: &[u8]) -> Result<RandomQuery, RandomQueryError> {
        let mut min = None;
        let mut max = None;
        let mut count = None;
        for pair in query.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
            let mut parts = pair.splitn(2, |&b| b == b'=');
            let name = parts.next().unwrap_or_default();
            let value = parts.next().unwrap_or_default();
            match name {
                b"min" => {
                    if min.is_some() {
                        return Err(RandomQueryError::RepeatedParameter);
                    }
                    min = Some(parse_i64(value).map_err(|_| RandomQueryError::InvalidMin)?);
                }
                b"max" => {
                    if max.is_some() {
                        return Err(RandomQueryError::RepeatedParameter);
                    }
                    max = Some(parse_i64(value).map_err(|_| RandomQueryError::InvalidMax)?);
                }
                b"count" => {
                    if count.is_some() {
                        return Err(RandomQueryError::RepeatedParameter);
                    }
                    count = Some(parse_count(value)?);
                }
                _ => return Err(RandomQueryError::UnknownParameter),
            }
        }
        let query = RandomQuery {
            min: min.unwrap_or(MIN_DEFAULT),
            max: max.unwrap_or(MAX_DEFAULT),
            count,
        };
        if query.min > query.max {
            return Err(RandomQueryError::MinAboveMax);
        }
        Ok(query)
    }
}

/// Kept apart so `count=99999999999999999999` reads as a number that is too
/// large (CountOutOfRange), not as something that is not a number.
#[derive(Debug, PartialEq, Eq)]
enum NotI64 {
    Malformed,
    OutOfRange,
}

fn parse_count(value: &[u8]) -> Result<u16, RandomQueryError> {
    match parse_i64(value) {
        Ok(n) => u16::try_from(n)
            .ok()
            .filter(|n| (1..=COUNT_MAX).contains(n))
            .ok_or(RandomQueryError::CountOutOfRange),
        Err(NotI64::OutOfRange) => Err(RandomQueryError::CountOutOfRange),
        Err(NotI64::Malformed) => Err(RandomQueryError::InvalidCount),
    }
}

/// Decodes while parsing, so no buffer limits how long a value (say, with
/// many leading zeros) may be. Accumulates toward the sign so i64::MIN, whose
/// magnitude has no positive i64, parses; keeps scanning after an overflow
/// so a malformed tail is still reported as malformed.
fn parse_i64(raw: &[u8]) -> Result<i64, NotI64> {
    let mut bytes = PercentDecoded { rest: raw }.peekable();
    let negative = bytes.next_if_eq(&Some(b'-')).is_some();
    let mut value = Some(0i64);
    let mut any_digit = false;
    for byte in bytes {
        let digit = match byte {
            Some(b @ b'0'..=b'9') => i64::from(b - b'0'),
            _ => return Err(NotI64::Malformed),
        };
        any_digit = true;
        value = value.and_then(|v| v.checked_mul(10)).and_then(|v| {
            if negative {
                v.checked_sub(digit)
            } else {
                v.checked_add(digit)
            }
        });
    }
    if !any_digit {
        return Err(NotI64::Malformed);
    }
    value.ok_or(NotI64::OutOfRange)
}

/// The bytes of a query value with `%XX` escapes decoded; `None` stands for
/// an escape that is cut short or not hex. `+` is left as it is.
struct PercentDecoded<'a> {
    rest: &'a [u8],
}

impl Iterator for PercentDecoded<'_> {
    type Item = Option<u8>;

    fn next(&mut self) -> Option<Option<u8>> {
        let (byte, rest) = match self.rest {
            [] => return None,
            [b'%', hi, lo, rest @ ..] => (hex(*hi).zip(hex(*lo)).map(|(h, l)| h << 4 | l), rest),
            [b'%', ..] => (None, &[][..]),
            [b, rest @ ..] => (Some(*b), rest),
        };
        self.rest = rest;
        Some(byte)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The largest magnitude every JSON parser keeps exact: JavaScript's
/// `Number.MAX_SAFE_INTEGER`, 2^53 - 1.
const JSON_SAFE_MAX: i64 = (1 << 53) - 1;

/// Ends in `\n` like fibd's other JSON bodies. A caller that passes anything
/// but exactly one value with `count: None` gets the list form, which shows
/// what was drawn, rather than a panic or a made-up value.
///
/// Numbers are JSON numbers when the whole requested range lies within
/// ±(2^53 - 1), as the default range does; otherwise every number in the
/// reply (values and bounds) is a JSON string, because `JSON.parse` would
/// round it. The rule depends on the query alone, so a client knows the
/// shape before it asks.
pub fn write_json(out: &mut Vec<u8>, q: &RandomQuery, values: &[i64]) {
    // 20 digits, a sign, quotes and ", " per value, plus the keys and both bounds.
    out.reserve(values.len().saturating_mul(25).saturating_add(100));
    let quote: &[u8] = if q.min >= -JSON_SAFE_MAX && q.max <= JSON_SAFE_MAX {
        b""
    } else {
        b"\""
    };
    let number = |out: &mut Vec<u8>, value: i64| {
        out.extend_from_slice(quote);
        write_i64(out, value);
        out.extend_from_slice(quote);
    };
    match (q.count, values) {
        (None, [value]) => {
            out.extend_from_slice(b"{\"value\": ");
            number(out, *value);
        }
        _ => {
            out.extend_from_slice(b"{\"values\": [");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                number(out, *value);
            }
            out.push(b']');
        }
    }
    out.extend_from_slice(b", \"min\": ");
    number(out, q.min);
    out.extend_from_slice(b", \"max\": ");
    number(out, q.max);
    out.extend_from_slice(b"}\n");
}

/// Bare numbers so `curl | sort -n` and shell loops need no JSON tool.
pub fn write_text(out: &mut Vec<u8>, values: &[i64]) {
    out.reserve(values.len().saturating_mul(21));
    for value in values {
        write_i64(out, *value);
        out.push(b'\n');
    }
}

/// Formats on the stack: up to 1000 values per reply, none worth a `String`.
fn write_i64(out: &mut Vec<u8>, value: i64) {
    // 20 digits hold u64::MAX, so any i64's magnitude fits; `start` cannot
    // pass zero.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use RandomQueryError::*;

    fn q(min: i64, max: i64, count: Option<u16>) -> RandomQuery {
        RandomQuery { min, max, count }
    }

    #[test]
    fn empty_query_gives_defaults() {
        assert_eq!(RandomQuery::parse(b""), Ok(q(0, 100, None)));
    }

    #[test]
    fn good_queries() {
        let cases: &[(&[u8], RandomQuery)] = &[
            (b"min=-5&max=5", q(-5, 5, None)),
            (b"max=5&min=-5", q(-5, 5, None)),
            (b"count=10", q(0, 100, Some(10))),
            (b"count=1", q(0, 100, Some(1))),
            (b"count=1000", q(0, 100, Some(1000))),
            (b"count=0001000", q(0, 100, Some(1000))),
            (b"min=5&max=5", q(5, 5, None)),
            (b"min=100", q(100, 100, None)),
            (b"max=0", q(0, 0, None)),
            (b"min=%2D5&max=5", q(-5, 5, None)),
            (b"min=%2d5&max=%35", q(-5, 5, None)),
            (b"min=-0&max=000", q(0, 0, None)),
            (b"min=007", q(7, 100, None)),
            (b"&min=1&&max=2&", q(1, 2, None)),
            (b"&", q(0, 100, None)),
            (
                b"min=-9223372036854775808&max=9223372036854775807&count=3",
                q(i64::MIN, i64::MAX, Some(3)),
            ),
            (
                b"min=-000009223372036854775808&max=-9223372036854775808",
                q(i64::MIN, i64::MIN, None),
            ),
        ];
        for (query, want) in cases {
            assert_eq!(
                RandomQuery::parse(query),
                Ok(*want),
                "{}",
                String::from_utf8_lossy(query)
            );
        }
    }

    #[test]
    fn bad_queries() {
        let cases: &[(&[u8], RandomQueryError)] = &[
            (b"min=", InvalidMin),
            (b"min", InvalidMin),
            (b"min=1e3", InvalidMin),
            (b"min=1.0", InvalidMin),
            (b"min=+5", InvalidMin),
            (b"min=%2B5", InvalidMin),
            (b"min= 5", InvalidMin),
            (b"min=5 ", InvalidMin),
            (b"min=%205", InvalidMin),
            (b"min=5%20", InvalidMin),
            (b"min=--5", InvalidMin),
            (b"min=-", InvalidMin),
            (b"min=0x10", InvalidMin),
            (b"min=5=5", InvalidMin),
            (b"min=9223372036854775808", InvalidMin),
            (b"min=-9223372036854775809", InvalidMin),
            (b"min=99999999999999999999999", InvalidMin),
            (b"min=%", InvalidMin),
            (b"min=%2", InvalidMin),
            (b"min=5%2", InvalidMin),
            (b"min=%zz5", InvalidMin),
            (b"min=%G5", InvalidMin),
            (b"min=%%35", InvalidMin),
            (b"min=\xef\xbc\x95", InvalidMin),
            (b"max=abc", InvalidMax),
            (b"max=", InvalidMax),
            (b"max=9223372036854775808", InvalidMax),
            (b"min=6&max=5", MinAboveMax),
            (b"min=101", MinAboveMax),
            (b"max=-1", MinAboveMax),
            (
                b"min=9223372036854775807&max=-9223372036854775808",
                MinAboveMax,
            ),
            (b"count=", InvalidCount),
            (b"count", InvalidCount),
            (b"count=ten", InvalidCount),
            (b"count=1.5", InvalidCount),
            (b"count=+3", InvalidCount),
            (b"count=%", InvalidCount),
            (b"count=99999999999999999999x", InvalidCount),
            (b"count=0", CountOutOfRange),
            (b"count=-0", CountOutOfRange),
            (b"count=1001", CountOutOfRange),
            (b"count=-1", CountOutOfRange),
            (b"count=65536", CountOutOfRange),
            (b"count=65537", CountOutOfRange),
            (b"count=99999999999999999999999", CountOutOfRange),
            (b"foo=1", UnknownParameter),
            (b"MIN=1", UnknownParameter),
            (b"m%69n=1", UnknownParameter),
            (b"?min=1", UnknownParameter),
            (b"=5", UnknownParameter),
            (b"min=1&x", UnknownParameter),
            (b" min=1", UnknownParameter),
            (b"min=1&min=1", RepeatedParameter),
            (b"max=1&max=2", RepeatedParameter),
            (b"count=2&count=3", RepeatedParameter),
            (b"min=1&max=2&min=x", RepeatedParameter),
            // The first problem from the left wins.
            (b"min=x&foo=1", InvalidMin),
            (b"foo=1&min=x", UnknownParameter),
            (b"count=0&min=x", CountOutOfRange),
        ];
        for (query, want) in cases {
            assert_eq!(
                RandomQuery::parse(query),
                Err(*want),
                "{}",
                String::from_utf8_lossy(query)
            );
        }
    }

    /// std's parser is the oracle, except that it accepts a leading '+'.
    fn oracle(s: &str) -> Result<i64, NotI64> {
        use std::num::IntErrorKind::{NegOverflow, PosOverflow};
        if s.starts_with('+') {
            return Err(NotI64::Malformed);
        }
        s.parse::<i64>().map_err(|e| match e.kind() {
            PosOverflow | NegOverflow => NotI64::OutOfRange,
            _ => NotI64::Malformed,
        })
    }

    #[test]
    fn parse_i64_agrees_with_std_on_every_short_string() {
        let alphabet = ["0", "1", "9", "-", "+", ".", "e", " "];
        let mut strings = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(longer);
        }
        for edge in [
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
        ] {
            strings.extend([edge.to_string(), format!("-{edge}"), format!("0{edge}")]);
        }
        strings.push("-9223372036854775809".to_string());
        for s in strings {
            assert_eq!(parse_i64(s.as_bytes()), oracle(&s), "{s:?}");
        }
    }

    #[test]
    fn messages_name_the_accepted_ranges() {
        let full = format!("from {} to {}", i64::MIN, i64::MAX);
        assert!(InvalidMin.message().starts_with("min "));
        assert!(InvalidMin.message().ends_with(&full));
        assert!(InvalidMax.message().starts_with("max "));
        assert!(InvalidMax.message().ends_with(&full));
        let count = format!("from 1 to {COUNT_MAX}");
        assert!(InvalidCount.message().ends_with(&count));
        assert!(CountOutOfRange.message().ends_with(&count));
        let defaults = format!("min defaults to {MIN_DEFAULT}, max to {MAX_DEFAULT}");
        assert!(MinAboveMax.message().contains(&defaults));
        for e in [UnknownParameter, RepeatedParameter] {
            assert!(e.message().contains("min, max and count"));
        }
    }

    fn json(query: RandomQuery, values: &[i64]) -> String {
        let mut out = b"prefix ".to_vec();
        write_json(&mut out, &query, values);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            json(q(0, 100, None), &[42]),
            "prefix {\"value\": 42, \"min\": 0, \"max\": 100}\n"
        );
        assert_eq!(
            json(q(-5, 5, Some(3)), &[-5, 0, 5]),
            "prefix {\"values\": [-5, 0, 5], \"min\": -5, \"max\": 5}\n"
        );
        assert_eq!(
            json(q(1, 1, Some(1)), &[1]),
            "prefix {\"values\": [1], \"min\": 1, \"max\": 1}\n"
        );
        // Beyond what JSON.parse keeps exact, every number is a string.
        assert_eq!(
            json(q(i64::MIN, i64::MAX, None), &[i64::MIN]),
            "prefix {\"value\": \"-9223372036854775808\", \"min\": \"-9223372036854775808\", \
             \"max\": \"9223372036854775807\"}\n"
        );
        assert_eq!(
            json(q(0, 1 << 53, Some(2)), &[1, 2]),
            "prefix {\"values\": [\"1\", \"2\"], \"min\": \"0\", \"max\": \"9007199254740992\"}\n"
        );
        // The edge of the safe range stays a number, on both sides.
        let safe = JSON_SAFE_MAX;
        assert_eq!(
            json(q(-safe, safe, None), &[safe]),
            "prefix {\"value\": 9007199254740991, \"min\": -9007199254740991, \
             \"max\": 9007199254740991}\n"
        );
        assert!(json(q(-safe - 1, 0, None), &[0]).contains("\"value\": \"0\""));
        // Misuse falls back to the list form.
        assert_eq!(
            json(q(0, 9, None), &[]),
            "prefix {\"values\": [], \"min\": 0, \"max\": 9}\n"
        );
        assert_eq!(
            json(q(0, 9, None), &[1, 2]),
            "prefix {\"values\": [1, 2], \"min\": 0, \"max\": 9}\n"
        );
    }

    #[test]
    fn text_form() {
        let mut out = b"x\n".to_vec();
        write_text(&mut out, &[3, -1, i64::MAX]);
        assert_eq!(out, b"x\n3\n-1\n9223372036854775807\n");
        let mut empty = Vec::new();
        write_text(&mut empty, &[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn write_i64_matches_display() {
        let mut source = RandomSource::new().unwrap();
        let mut values = vec![
            0,
            1,
            -1,
            9,
            10,
            -10,
            99,
            100,
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
        ];
        values.extend((0..1000).map(|_| source.next_u64().unwrap() as i64));
        values.extend((0..19).map(|e| 10i64.pow(e)));
        for value in values {
            let mut out = Vec::new();
            write_i64(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }

    /// A source that plays back `words`, then fails, so a test sees how many
    /// words were consumed and an unexpected extra draw shows up as an error.
    fn scripted(words: &[u64]) -> impl FnMut() -> Result<u64, &'static str> + '_ {
        let mut words = words.iter();
        move || words.next().copied().ok_or("drew too often")
    }

    #[test]
    fn equal_or_inverted_bounds_do_not_draw() {
        for (min, max) in [(5, 5), (i64::MIN, i64::MIN), (i64::MAX, i64::MAX), (3, 2)] {
            assert_eq!(uniform_with(scripted(&[]), min, max), Ok(min));
        }
    }

    #[test]
    fn full_range_is_a_raw_draw() {
        for word in [0, 1, u64::MAX, 1 << 63] {
            assert_eq!(
                uniform_with(scripted(&[word]), i64::MIN, i64::MAX),
                Ok(word as i64)
            );
        }
    }

    #[test]
    fn source_errors_pass_through() {
        assert_eq!(uniform_with(scripted(&[]), 0, 9), Err("drew too often"));
        // 2^64 mod 3 = 1, so word 0 is rejected and the next draw fails.
        assert_eq!(uniform_with(scripted(&[0]), 0, 2), Err("drew too often"));
    }

    #[test]
    fn rejection_skips_exactly_the_low_words() {
        // Size 3: 2^64 mod 3 = 1, only word 0 is rejected.
        assert_eq!(uniform_with(scripted(&[0, 0, 5]), 0, 2), Ok(2));
        assert_eq!(uniform_with(scripted(&[1]), 10, 12), Ok(11));
        assert_eq!(uniform_with(scripted(&[u64::MAX]), 0, 2), Ok(0));
        // Power of two: nothing is rejected.
        assert_eq!(uniform_with(scripted(&[0]), -8, 7), Ok(-8));
        assert_eq!(uniform_with(scripted(&[u64::MAX]), -8, 7), Ok(7));
        // Size 3·2^62 from i64::MIN: 2^64 mod size = 2^62, so words below
        // 2^62 are rejected and the first accepted word maps to offset 2^62.
        let (min, max) = (i64::MIN, (1 << 62) - 1);
        assert_eq!(
            uniform_with(scripted(&[0, (1 << 62) - 1, 1 << 62]), min, max),
            Ok(-(1 << 62))
        );
        // The largest word wraps to offset 2^62 - 1 (2^64 - 1 - 3·2^62).
        assert_eq!(
            uniform_with(scripted(&[u64::MAX]), min, max),
            Ok(-(1 << 62) - 1)
        );
        // Largest size below 2^64: only word 0 is rejected (2^64 mod (2^64-1) = 1).
        let (min, max) = (i64::MIN, i64::MAX - 1);
        assert_eq!(uniform_with(scripted(&[0, 0, 1]), min, max), Ok(min + 1));
        assert_eq!(uniform_with(scripted(&[u64::MAX]), min, max), Ok(min));
    }

    #[test]
    fn refills_give_fresh_words() {
        // Three blocks' worth; a repeated block or a stuck index would repeat
        // words. Chance of a genuine collision: about 1536^2 / 2^65 < 1e-13.
        let mut source = RandomSource::new().unwrap();
        let draws = 3 * BLOCK_BYTES / 8;
        let words: HashSet<u64> = (0..draws).map(|_| source.next_u64().unwrap()).collect();
        assert_eq!(words.len(), draws);
        assert!(format!("{source:?}").contains("unused_bytes: 0"));
    }

    #[test]
    fn draws_stay_within_bounds_and_reach_both_ends() {
        let mut source = RandomSource::new().unwrap();
        let ranges = [
            (7, 7),
            (i64::MIN, i64::MAX),
            (i64::MIN, i64::MIN + 1),
            (i64::MAX - 1, i64::MAX),
            (-5, 5),
        ];
        for (min, max) in ranges {
            let draws: Vec<i64> = (0..10_000)
                .map(|_| source.uniform(min, max).unwrap())
                .collect();
            assert!(
                draws.iter().all(|v| (min..=max).contains(v)),
                "{min}..={max}"
            );
            // Missing an end of a range of at most 11 values in 10,000 draws
            // has probability below 11 · (10/11)^10000, about 1e-413.
            if max.wrapping_sub(min) as u64 <= 10 {
                assert!(
                    draws.contains(&min) && draws.contains(&max),
                    "{min}..={max}"
                );
            }
        }
    }

    #[test]
    fn small_range_passes_chi_square() {
        // 60,000 draws over 0..=9: 6,000 expected per value. With 9 degrees
        // of freedom, P(chi^2 > 70) ≈ 1.5e-11 for a uniform sampler, so this
        // does not flake; an off-by-one that never draws one value scores
        // over 6,000.
        let mut source = RandomSource::new().unwrap();
        let mut counts = [0u32; 10];
        for _ in 0..60_000 {
            let value = source.uniform(0, 9).unwrap();
            counts[usize::try_from(value).unwrap()] += 1;
        }
        let expected = 6_000.0;
        let chi_square: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert!(chi_square < 70.0, "chi^2 = {chi_square}, counts {counts:?}");
    }

    /// Range of size 3·2^62 from i64::MIN, in thirds of 2^62 values each.
    /// A bare `word % size` hits the first third from two words (w and
    /// w + size, for w < 2^62) and the others from one, so it lands there
    /// with probability 1/2 and in each other third with 1/4; rejection gives
    /// 1/3 each.
    ///
    /// Over N = 30,000 draws every third must count 10,000 ± 1,000, a band
    /// of t = 1/30 in proportion. Hoeffding's bound puts the chance that a
    /// fair third leaves it at most 2·exp(-2·N·t²) = 2·exp(-66.7) < 1e-28
    /// per third. A modulo-biased sampler must bring the first third from its
    /// mean of 15,000 down to 11,000, a shift of 2/15 in proportion:
    /// probability at most exp(-2·N·(2/15)²) = exp(-1067).
    const THIRDS_DRAWS: u32 = 30_000;
    const THIRDS_MIN: i64 = i64::MIN;
    const THIRDS_MAX: i64 = (1 << 62) - 1;

    fn thirds_are_equal(mut draw: impl FnMut() -> i64) -> bool {
        let mut thirds = [0u32; 3];
        for _ in 0..THIRDS_DRAWS {
            let offset = draw().wrapping_sub(THIRDS_MIN) as u64;
            thirds[usize::try_from(offset >> 62).unwrap()] += 1;
        }
        thirds.iter().all(|&n| (9_000..=11_000).contains(&n))
    }

    #[test]
    fn no_modulo_bias_on_a_range_of_three_quarters_of_u64() {
        let mut source = RandomSource::new().unwrap();
        assert!(thirds_are_equal(|| source
            .uniform(THIRDS_MIN, THIRDS_MAX)
            .unwrap()));
    }

    #[test]
    fn thirds_test_catches_modulo_bias() {
        let mut source = RandomSource::new().unwrap();
        let size = THIRDS_MAX.wrapping_sub(THIRDS_MIN) as u64 + 1;
        assert!(!thirds_are_equal(|| {
            THIRDS_MIN.wrapping_add((source.next_u64().unwrap() % size) as i64)
        }));
    }
}
