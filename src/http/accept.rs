//! Content negotiation: choosing between the two representations fibd can
//! produce from a request's `Accept` field (RFC 9110 §12.5.1).
//!
//! It owns the reading of the field and the choice; it does not know routes
//! or how either format is written. Malformed members of the list are
//! skipped rather than refused: a client with an odd Accept still deserves an
//! answer, and only a well-formed list that excludes both formats earns a 406.

use super::trim_ows;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// How exactly a media range names a format; more specific ranges decide a
/// format's weight and break ties between formats (RFC 9110 §12.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Any,
    Type,
    Exact,
}

/// The weight a header gives one format: from its most specific matching
/// range, the highest q among equally specific ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Weight {
    specificity: Specificity,
    /// The qvalue in thousandths, 0..=1000.
    q: u16,
}

/// Picks the format to answer with, or `None` when the client accepts
/// neither (the caller answers 406). No header, an empty one, or one with no
/// well-formed member means "anything", so `default`.
pub fn negotiate(accept: Option<&[u8]>, default: Format) -> Option<Format> {
    let Some(accept) = accept else {
        return Some(default);
    };
    let mut text: Option<Weight> = None;
    let mut json: Option<Weight> = None;
    let mut any_range = false;
    for (type_, subtype, q) in accept.split(|&b| b == b',').filter_map(media_range) {
        any_range = true;
        for (format, slot) in [(Format::Text, &mut text), (Format::Json, &mut json)] {
            if let Some(specificity) = matches(format, type_, subtype) {
                let weight = Weight { specificity, q };
                *slot = Some(match *slot {
                    Some(old) if old.specificity > specificity => old,
                    Some(old) if old.specificity == specificity && old.q >= q => old,
                    _ => weight,
                });
            }
        }
    }
    if !any_range {
        return Some(default);
    }
    let score = |w: Option<Weight>| w.filter(|w| w.q > 0).map(|w| (w.q, w.specificity));
    match (score(text), score(json)) {
        (None, None) => None,
        (Some(_), None) => Some(Format::Text),
        (None, Some(_)) => Some(Format::Json),
        (Some(t), Some(j)) if t > j => Some(Format::Text),
        (Some(t), Some(j)) if j > t => Some(Format::Json),
        (Some(_), Some(_)) => Some(default),
    }
}

/// Parses one list member, `type/subtype *( OWS ";" OWS param )`, into its
/// type, subtype and q in thousandths; `None` when it is malformed.
fn media_range(member: &[u8]) -> Option<(&[u8], &[u8], u16)> {
    let mut parts = member.split(|&b| b == b';');
    let range = trim_ows(parts.next()?);
    let slash = range.iter().position(|&b| b == b'/')?;
    let (type_, subtype) = range.split_at(slash);
    let subtype = subtype.get(1..)?;
    if !is_token(type_) || !is_token(subtype) || (type_ == b"*" && subtype != b"*") {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let param = trim_ows(param);
        let eq = param.iter().position(|&b| b == b'=')?;
        let (name, value) = param.split_at(eq);
        if trim_ows(name).eq_ignore_ascii_case(b"q") {
            q = parse_qvalue(trim_ows(value.get(1..)?))?;
            // Parameters after q are accept-extensions, which we ignore.
            break;
        }
    }
    Some((type_, subtype, q))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`.
fn parse_qvalue(value: &[u8]) -> Option<u16> {
    let (&whole, rest) = value.split_first()?;
    let fraction = match rest {
        [] => &[][..],
        [b'.', fraction @ ..] if fraction.len() <= 3 => fraction,
        _ => return None,
    };
    let mut thousandths = 0u16;
    let mut scale = 100u16;
    for &digit in fraction {
        let d = u16::try_from(char::from(digit).to_digit(10)?).ok()?;
        thousandths += d * scale;
        scale /= 10;
    }
    match whole {
        b'0' => Some(thousandths),
        b'1' if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn matches(format: Format, type_: &[u8], subtype: &[u8]) -> Option<Specificity> {
    let (want_type, want_subtype): (&[u8], &[u8]) = match format {
        Format::Text => (b"text", b"plain"),
        Format::Json => (b"application", b"json"),
    };
    if type_ == b"*" {
        return Some(Specificity::Any);
    }
    if !type_.eq_ignore_ascii_case(want_type) {
        return None;
    }
    if subtype == b"*" {
        Some(Specificity::Type)
    } else if subtype.eq_ignore_ascii_case(want_subtype) {
        Some(Specificity::Exact)
    } else {
        None
    }
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::Format::{Json, Text};
    use super::*;
    use proptest::prelude::*;

    /// (Accept field, default, expected choice)
    type Case = (Option<&'static [u8]>, Format, Option<Format>);

    #[test]
    fn negotiation_table() {
        let cases: &[Case] = &[
            (None, Text, Some(Text)),
            (None, Json, Some(Json)),
            (Some(b""), Json, Some(Json)),
            (Some(b"  "), Text, Some(Text)),
            (Some(b"text/plain"), Json, Some(Text)),
            (Some(b"application/json"), Text, Some(Json)),
            (Some(b"TEXT/PLAIN"), Json, Some(Text)),
            (Some(b"Application/JSON; charset=utf-8"), Text, Some(Json)),
            (Some(b"text/*"), Json, Some(Text)),
            (Some(b"application/*"), Text, Some(Json)),
            (Some(b"*/*"), Text, Some(Text)),
            (Some(b"*/*"), Json, Some(Json)),
            (Some(b"text/html"), Text, None),
            (Some(b"image/png, text/html;q=0.9"), Json, None),
            (Some(b"text/html, */*;q=0.1"), Json, Some(Json)),
            (
                Some(b"text/plain;q=0.5, application/json"),
                Text,
                Some(Json),
            ),
            (
                Some(b"text/plain, application/json;q=0.5"),
                Json,
                Some(Text),
            ),
            (
                Some(b"text/plain;q=0.5, application/json;q=0.5"),
                Text,
                Some(Text),
            ),
            (
                Some(b"text/plain;q=0.5, application/json;q=0.5"),
                Json,
                Some(Json),
            ),
            (Some(b"text/*, application/json"), Text, Some(Json)),
            (Some(b"text/plain, application/*"), Json, Some(Text)),
            (Some(b"*/*, application/json"), Text, Some(Json)),
            (Some(b"text/plain;q=0"), Text, None),
            (Some(b"text/plain;q=0, */*"), Text, Some(Json)),
            (Some(b"application/json;q=0, */*"), Json, Some(Text)),
            (Some(b"*/*;q=0"), Text, None),
            (Some(b"*/*;q=0, text/plain;q=0.001"), Json, Some(Text)),
            (Some(b"text/plain;q=0.5, */*"), Text, Some(Json)),
            (
                Some(b"text/plain;q=0.2, text/plain;q=0.9, application/json;q=0.5"),
                Json,
                Some(Text),
            ),
            (Some(b"text/*;q=1.0, text/plain;q=0"), Text, None),
            (
                Some(b"application/json ; q = 1 , text/plain;q=0.9"),
                Text,
                Some(Json),
            ),
            (
                Some(b"text/plain;level=1;q=0.3;ext=x, application/json;q=0.2"),
                Json,
                Some(Text),
            ),
            (Some(b"garbage"), Json, Some(Json)),
            (Some(b",,,"), Text, Some(Text)),
            (Some(b"text/plain;q=2, application/json"), Text, Some(Json)),
            (
                Some(b"text/plain;q=0.5000, application/json;q=0.1"),
                Text,
                Some(Json),
            ),
            (Some(b"text/plain;q=abc"), Json, Some(Json)),
            (Some(b"*/plain"), Json, Some(Json)),
            (Some(b"text/, /plain, text"), Json, Some(Json)),
            (Some(b"text/plain;q"), Json, Some(Json)),
        ];
        for &(accept, default, expected) in cases {
            assert_eq!(
                negotiate(accept, default),
                expected,
                "{:?} default {default:?}",
                accept.map(|a| a.escape_ascii().to_string())
            );
        }
    }

    #[test]
    fn qvalues() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"0", Some(0)),
            (b"1", Some(1000)),
            (b"0.", Some(0)),
            (b"1.", Some(1000)),
            (b"0.5", Some(500)),
            (b"0.05", Some(50)),
            (b"0.123", Some(123)),
            (b"1.000", Some(1000)),
            (b"1.001", None),
            (b"0.1234", None),
            (b"2", None),
            (b"", None),
            (b".5", None),
            (b"0,5", None),
            (b"0.a", None),
        ];
        for &(value, expected) in cases {
            assert_eq!(parse_qvalue(value), expected, "{value:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic(header in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = negotiate(Some(&header), Format::Text);
        }
    }
}
