//! HTTP/1.1 as bytes: parsing requests and writing responses, with no socket in
//! sight. Everything here is sans-IO so it can be tested byte by byte; the
//! connection state machine in `conn` feeds it, and the outbound client
//! (`crate::net::upstream`) feeds `upstream` the responses it receives.

pub mod accept;
pub mod chunked;
pub mod date;
pub mod etag;
pub mod forwarded;
pub mod message;
pub mod parse;
pub mod query;
pub mod request_id;
pub mod response;
pub mod upstream;

/// Strips optional whitespace (spaces and tabs, RFC 9110 §5.6.3) from both
/// ends of a header value or list element.
pub fn trim_ows(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}
