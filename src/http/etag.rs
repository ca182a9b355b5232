//! `If-None-Match` (RFC 9110 §13.1.2) against a resource's own tag: the list
//! grammar in one place, for /v1/fib's per-n tags and the built-in
//! documents' content tags alike.

use super::trim_ows;

/// Whether an `If-None-Match` field value matches, `is_ours` judging each
/// entity tag's opaque part (the characters between its quotes).
///
/// If-None-Match uses weak comparison, so `W/"x"` matches `"x"`. A value
/// that is not a valid `*` or entity-tag list matches nothing as a whole:
/// answering 200 with the full body is always correct, while guessing at a
/// malformed list could wrongly answer 304.
pub fn if_none_match(header: &[u8], mut is_ours: impl FnMut(&[u8]) -> bool) -> bool {
    let mut rest = trim_ows(header);
    if rest == b"*" {
        return true;
    }
    let mut matched = false;
    loop {
        // RFC 9110 §5.6.1: recipients accept empty list elements (`a, ,b`).
        while let Some(after_comma) = rest.strip_prefix(b",") {
            rest = trim_ows(after_comma);
        }
        if rest.is_empty() {
            return matched;
        }
        let Some((opaque, after_tag)) = entity_tag(rest) else {
            return false;
        };
        matched |= is_ours(opaque);
        rest = trim_ows(after_tag);
        if !rest.is_empty() && !rest.starts_with(b",") {
            return false;
        }
    }
}

/// Splits one `entity-tag` (weak or strong) off the front of `input`: the
/// characters between its quotes, and what follows the closing quote.
///
/// Scans for the closing quote instead of splitting the list on commas,
/// because a comma is a valid character inside a tag (`"a,b"`).
fn entity_tag(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let quoted = input.strip_prefix(b"W/").unwrap_or(input);
    let inner = quoted.strip_prefix(b"\"")?;
    let close = inner.iter().position(|&b| b == b'"')?;
    let (opaque, rest) = inner.split_at(close);
    // etagc = %x21 / %x23-7E / obs-text
    let valid = opaque
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80);
    valid.then(|| (opaque, rest.get(1..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_abc(opaque: &[u8]) -> bool {
        opaque == b"abc"
    }

    #[test]
    fn lists_weak_tags_and_star_match_and_malformed_lists_do_not() {
        for header in [
            &b"\"abc\""[..],
            b"W/\"abc\"",
            b" \"x\" , \"abc\"",
            b"\"a,b\", \"abc\"",
            b", ,\"abc\",",
            b"*",
        ] {
            assert!(if_none_match(header, is_abc), "{header:?}");
        }
        for header in [
            &b"\"abd\""[..],
            b"abc",
            b"\"abc\" junk",
            b"\"abc",
            b"\"ab c\"",
            b"",
        ] {
            assert!(!if_none_match(header, is_abc), "{header:?}");
        }
    }
}
