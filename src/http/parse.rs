//! The request head parser: bytes in, and out comes a [`Request`] borrowing
//! from them, [`Parsed::Partial`] (send more bytes), or a [`ParseError`].
//!
//! It owns the syntax of the request line and header fields (RFC 9112 §2–§6)
//! and the framing decisions that follow from them (Host, Content-Length,
//! Transfer-Encoding, Connection). It does not own the socket, the body bytes
//! (see `super::chunked`), routing, or the mapping of errors to statuses.
//!
//! The model is httparse's: sans-IO, no allocation, and the caller calls
//! [`parse`] again from the start of its buffer whenever more bytes arrive.
//! Every limit in [`Limits`] is enforced here, also on incomplete input, so a
//! client that never finishes its head is refused rather than buffered
//! forever; the work of one call is bounded by `head_bytes_max`.
//!
//! Line endings: CRLF, and also a bare LF, which RFC 9112 §2.2 lets a recipient
//! accept; `printf`-and-`nc` clients use it and treating it as a line end
//! cannot make us see a different message than a conforming sender meant. A
//! bare CR (one not followed by LF) is always rejected, by the rule for the
//! element it appears in (method, target, version, header name or value).
//! Empty lines before the request line are skipped (RFC 9112 §2.2).

use std::fmt;

use memchr::memchr;

use super::message::{Method, Persistence, Version};
use super::trim_ows;

/// Bounds on what one request may make us hold or read; units last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub head_bytes_max: usize,
    pub uri_bytes_max: usize,
    pub headers_max: usize,
    pub body_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes_max: 8192,
            uri_bytes_max: 2048,
            headers_max: 64,
            body_bytes_max: 65536,
        }
    }
}

/// How the body that follows the head is delimited. A `Content-Length: 0`
/// is reported as `None`, so callers have a single "no body" case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed head. Everything borrows from the caller's buffer; header fields
/// the server does not use are validated and then forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// Still percent-encoded. For absolute-form targets the scheme and
    /// authority are dropped (an empty path becomes `/`); `*` for `OPTIONS *`.
    pub path: &'a [u8],
    /// The bytes after the first `?`, still encoded; empty when there is none.
    pub query: &'a [u8],
    pub version: Version,
    /// HTTP/1.1 keeps the connection unless `Connection` lists `close`;
    /// HTTP/1.0 closes unless it lists `keep-alive`. `close` always wins.
    pub keep_alive: bool,
    pub body: BodyFraming,
    /// First `Accept` field, trimmed.
    pub accept: Option<&'a [u8]>,
    /// First `If-None-Match` field, trimmed.
    pub if_none_match: Option<&'a [u8]>,
    /// First `X-API-Key` field, trimmed.
    pub api_key: Option<&'a [u8]>,
    /// Last `Forwarded` field line (RFC 7239), trimmed: the one the nearest
    /// proxy wrote or appended to. Only read when the peer is a trusted proxy.
    pub forwarded: Option<&'a [u8]>,
    /// Last `X-Forwarded-For` field line, trimmed; as for `forwarded`.
    pub x_forwarded_for: Option<&'a [u8]>,
    /// First `X-Request-Id` field, trimmed; `request_id` validates it.
    pub request_id: Option<&'a [u8]>,
    /// First `traceparent` field (W3C Trace Context), trimmed; `trace` parses it.
    pub traceparent: Option<&'a [u8]>,
    /// First `Content-Type` field, trimmed; routes that read a body check it.
    pub content_type: Option<&'a [u8]>,
    /// First `Idempotency-Key` field, trimmed; the primes tasks validate it.
    pub idempotency_key: Option<&'a [u8]>,
    /// First `Fibd-Cluster-Secret` field, trimmed: the internal endpoint
    /// between cluster nodes checks it.
    pub cluster_secret: Option<&'a [u8]>,
    /// `Expect: 100-continue` was sent: the client may wait for a 100 before
    /// sending the body. Other expectations are ignored.
    pub expect_continue: bool,
}

impl Request<'_> {
    /// Whether the connection stays open after the answer, and how the
    /// answer says so.
    pub fn persistence(&self) -> Persistence {
        Persistence::of(self.version, self.keep_alive)
    }
}

/// The outcome of one call. `Partial` is not an error: the head so far is a
/// valid prefix within every limit, and more bytes may complete it.
// Returned by value once per head; boxing the large variant would allocate
// per request on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// `head_len` counts from the start of the buffer through the empty line,
    /// so the body (or the next pipelined request) starts at `buf[head_len..]`.
    Complete {
        request: Request<'a>,
        head_len: usize,
    },
    Partial,
}

/// Why a head was refused. Fieldless so it is cheap to copy into a response
/// path and to match exhaustively; `message` gives the human text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    HeadTooLarge,
    UriTooLong,
    TooManyHeaders,
    InvalidMethod,
    InvalidTarget,
    InvalidVersion,
    UnsupportedVersion,
    Http2Preface,
    InvalidHeaderName,
    InvalidHeaderValue,
    ObsFold,
    MissingHost,
    DuplicateHost,
    InvalidContentLength,
    DuplicateContentLength,
    ContentLengthWithTransferEncoding,
    UnsupportedTransferEncoding,
    BodyTooLarge,
}

impl ParseError {
    /// Text for the client: says what to change, never echoes input, and
    /// carries no numbers because the limits are configurable.
    pub fn message(self) -> &'static str {
        match self {
            ParseError::HeadTooLarge => {
                "request head (request line and header fields) is larger than this server accepts"
            }
            ParseError::UriTooLong => "request target is longer than this server accepts",
            ParseError::TooManyHeaders => "request has more header fields than this server accepts",
            ParseError::InvalidMethod => "request method is not a valid token",
            ParseError::InvalidTarget => {
                "request target is missing or malformed; send an origin-form path such as /current, percent-encoding any other bytes"
            }
            ParseError::InvalidVersion => {
                "request line must end with a single space and HTTP/1.1 or HTTP/1.0"
            }
            ParseError::UnsupportedVersion => "only HTTP/1.1 and HTTP/1.0 are supported",
            ParseError::Http2Preface => {
                "HTTP/2 is not supported; connect with HTTP/1.1 without prior knowledge"
            }
            ParseError::InvalidHeaderName => {
                "a header field name is empty, not a token, or followed by whitespace before the colon"
            }
            ParseError::InvalidHeaderValue => "a header field value contains a control character",
            ParseError::ObsFold => {
                "header field line folding (a line starting with whitespace) is not accepted; send each field on one line"
            }
            ParseError::MissingHost => "HTTP/1.1 requests must carry a Host header field",
            ParseError::DuplicateHost => "request carries more than one Host header field",
            ParseError::InvalidContentLength => {
                "Content-Length must be a single non-negative decimal number"
            }
            ParseError::DuplicateContentLength => {
                "request carries more than one Content-Length header field"
            }
            ParseError::ContentLengthWithTransferEncoding => {
                "request carries both Content-Length and Transfer-Encoding; send only one"
            }
            ParseError::UnsupportedTransferEncoding => {
                "only Transfer-Encoding: chunked is supported, and only with HTTP/1.1"
            }
            ParseError::BodyTooLarge => "request body is larger than this server accepts",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ParseError {}

/// The first line of the HTTP/2 connection preface (RFC 9113 §3.4). Seeing it
/// is enough to answer 505 instead of waiting for the rest.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// Parses one request head from the start of `buf`.
///
/// Bytes past `head_bytes_max` are never looked at: a head that has not ended
/// by then is too large whatever follows, which also bounds each call's work.
pub fn parse<'b>(buf: &'b [u8], limits: &Limits) -> Result<Parsed<'b>, ParseError> {
    let window = buf.get(..limits.head_bytes_max).unwrap_or(buf);
    let mut lines = Lines::new(window);

    let line = loop {
        match lines.next_line() {
            Some([]) => continue,
            Some(line) => break line,
            None => {
                // Check what has arrived of the request line now, so a TLS
                // handshake, an HTTP/2 preface or an endless target is refused
                // at once instead of after head_bytes_max bytes.
                let rest = lines.rest();
                let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
                request_line(rest, false, limits)?;
                return incomplete(buf, limits);
            }
        }
    };
    // A complete line always yields a start line or an error; the `else` only
    // keeps this total without an unwrap.
    let Some(start) = request_line(line, true, limits)? else {
        return Err(ParseError::InvalidVersion);
    };

    let mut fields = Fields::default();
    let mut count = 0usize;
    loop {
        match lines.next_line() {
            Some([]) => break,
            Some(line) => {
                count += 1;
                if count > limits.headers_max {
                    return Err(ParseError::TooManyHeaders);
                }
                let (name, value) = field_line(line)?;
                fields.add(name, value)?;
            }
            None => return incomplete(buf, limits),
        }
    }
    let head_len = lines.pos;
    let request = finish(start, &fields, limits)?;
    Ok(Parsed::Complete { request, head_len })
}

/// A valid prefix is `Partial` only while it could still end within the limit.
fn incomplete<'b>(buf: &[u8], limits: &Limits) -> Result<Parsed<'b>, ParseError> {
    if buf.len() >= limits.head_bytes_max {
        Err(ParseError::HeadTooLarge)
    } else {
        Ok(Parsed::Partial)
    }
}

/// Splits lines on LF, dropping one CR before it (see the module doc).
/// Shared with the upstream response reader (`super::upstream`).
pub(super) struct Lines<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl<'b> Lines<'b> {
    pub(super) fn new(buf: &'b [u8]) -> Lines<'b> {
        Lines { buf, pos: 0 }
    }

    /// Bytes consumed so far: the start of what follows the last line taken.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn next_line(&mut self) -> Option<&'b [u8]> {
        let rest = self.rest();
        let lf = memchr(b'\n', rest)?;
        let (line, _) = rest.split_at(lf);
        self.pos += lf + 1;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn rest(&self) -> &'b [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

struct StartLine<'b> {
    method: Method,
    path: &'b [u8],
    query: &'b [u8],
    version: Version,
}

/// Parses a request line, or (when `complete` is false) checks that `line` can
/// still become one: `Ok(None)` means "valid so far".
fn request_line<'b>(
    line: &'b [u8],
    complete: bool,
    limits: &Limits,
) -> Result<Option<StartLine<'b>>, ParseError> {
    if line.starts_with(H2_PREFACE_LINE) {
        return Err(ParseError::Http2Preface);
    }
    // `PRI * HTTP/2.` would read as a bad asterisk-form request; wait until
    // it is clear whether this is the preface.
    if !complete && H2_PREFACE_LINE.starts_with(line) {
        return Ok(None);
    }

    let method_len = line
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(line.len());
    let (method, rest) = line.split_at(method_len);
    let Some((&space, rest)) = rest.split_first() else {
        return match (complete, method.is_empty()) {
            (false, _) => Ok(None),
            (true, true) => Err(ParseError::InvalidMethod),
            (true, false) => Err(ParseError::InvalidTarget),
        };
    };
    if space != b' ' || method.is_empty() {
        return Err(ParseError::InvalidMethod);
    }
    let method = Method::from_token(method);

    let target_len = rest
        .iter()
        .position(|&b| !is_target_char(b))
        .unwrap_or(rest.len());
    if target_len > limits.uri_bytes_max {
        return Err(ParseError::UriTooLong);
    }
    let (target, rest) = rest.split_at(target_len);
    let Some((&space, version)) = rest.split_first() else {
        return match (complete, target.is_empty()) {
            (false, _) => Ok(None),
            (true, true) => Err(ParseError::InvalidTarget),
            (true, false) => Err(ParseError::InvalidVersion),
        };
    };
    if space != b' ' || target.is_empty() {
        return Err(ParseError::InvalidTarget);
    }
    let (path, query) = split_target(method, target)?;

    let Some(version) = parse_version(version, complete)? else {
        return Ok(None);
    };
    Ok(Some(StartLine {
        method,
        path,
        query,
        version,
    }))
}

/// Checks `v` against `HTTP/DIGIT.DIGIT`; a prefix of it is fine until the
/// line is complete. Only well-formed versions earn the 505 answer.
fn parse_version(v: &[u8], complete: bool) -> Result<Option<Version>, ParseError> {
    const SHAPE: &[u8; 8] = b"HTTP/0.0";
    let shaped = v.len() <= SHAPE.len()
        && v.iter().zip(SHAPE).all(|(&b, &s)| match s {
            b'0' => b.is_ascii_digit(),
            _ => b == s,
        });
    if !shaped {
        return Err(ParseError::InvalidVersion);
    }
    if !complete {
        return Ok(None);
    }
    match v {
        b"HTTP/1.1" => Ok(Some(Version::Http11)),
        b"HTTP/1.0" => Ok(Some(Version::Http10)),
        _ if v.len() == SHAPE.len() => Err(ParseError::UnsupportedVersion),
        _ => Err(ParseError::InvalidVersion),
    }
}

/// Accepts origin-form, absolute-form (http/https) and asterisk-form (OPTIONS
/// only); authority-form, fragments and bad percent-escapes are refused.
fn split_target(method: Method, target: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    if target == b"*" {
        return match method {
            Method::Options => Ok((target, b"")),
            _ => Err(ParseError::InvalidTarget),
        };
    }
    if !valid_percent_escapes(target) {
        return Err(ParseError::InvalidTarget);
    }
    let rest = if target.starts_with(b"/") {
        target
    } else {
        strip_scheme_and_authority(target).ok_or(ParseError::InvalidTarget)?
    };
    // Square brackets are only legal in an IP-literal authority (RFC 3986 §3.2.2).
    if rest.iter().any(|&b| b == b'[' || b == b']') {
        return Err(ParseError::InvalidTarget);
    }
    let (path, query) = match memchr(b'?', rest) {
        Some(q) => {
            let (path, query) = rest.split_at(q);
            (path, query.get(1..).unwrap_or_default())
        }
        None => (rest, &b""[..]),
    };
    let path = if path.is_empty() { &b"/"[..] } else { path };
    Ok((path, query))
}

/// Returns what follows `scheme://authority`, which starts with `/` or `?`
/// or is empty.
fn strip_scheme_and_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))?;
    let authority_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    if authority_len == 0 {
        return None;
    }
    Some(rest.split_at(authority_len).1)
}

fn strip_prefix_ignore_case<'b>(s: &'b [u8], prefix: &[u8]) -> Option<&'b [u8]> {
    let (head, tail) = s.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(tail)
}

fn valid_percent_escapes(s: &[u8]) -> bool {
    memchr::memchr_iter(b'%', s).all(|i| {
        matches!(
            s.get(i + 1..i + 3),
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit()
        )
    })
}

/// Splits `name: value`, trimming optional whitespace around the value.
pub(super) fn field_line(line: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(ParseError::ObsFold);
    }
    let name_len = line
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(name_len);
    let Some(value) = rest.strip_prefix(b":") else {
        return Err(ParseError::InvalidHeaderName);
    };
    if name.is_empty() {
        return Err(ParseError::InvalidHeaderName);
    }
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(ParseError::InvalidHeaderValue);
    }
    Ok((name, trim_ows(value)))
}

/// What the header fields said, gathered before any cross-field rule applies.
#[derive(Default)]
struct Fields<'b> {
    host: bool,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    accept: Option<&'b [u8]>,
    if_none_match: Option<&'b [u8]>,
    api_key: Option<&'b [u8]>,
    forwarded: Option<&'b [u8]>,
    x_forwarded_for: Option<&'b [u8]>,
    request_id: Option<&'b [u8]>,
    traceparent: Option<&'b [u8]>,
    content_type: Option<&'b [u8]>,
    idempotency_key: Option<&'b [u8]>,
    cluster_secret: Option<&'b [u8]>,
    expect_continue: bool,
}

impl<'b> Fields<'b> {
    fn add(&mut self, name: &[u8], value: &'b [u8]) -> Result<(), ParseError> {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        if is("host") {
            if self.host {
                return Err(ParseError::DuplicateHost);
            }
            self.host = true;
        } else if is("content-length") {
            // Two lengths are refused even when equal: intermediaries disagree
            // on such messages, which is how requests get smuggled.
            if self.content_length.is_some() {
                return Err(ParseError::DuplicateContentLength);
            }
            self.content_length = Some(parse_content_length(value)?);
        } else if is("transfer-encoding") {
            // Only a single, exact `chunked`: any other coding list would mean
            // decoding a body we only want to skip.
            if self.chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(ParseError::UnsupportedTransferEncoding);
            }
            self.chunked = true;
        } else if is("connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is("accept") {
            self.accept.get_or_insert(value);
        } else if is("if-none-match") {
            self.if_none_match.get_or_insert(value);
        } else if is("x-api-key") {
            self.api_key.get_or_insert(value);
        } else if is("forwarded") {
            self.forwarded = Some(value);
        } else if is("x-forwarded-for") {
            self.x_forwarded_for = Some(value);
        } else if is("x-request-id") {
            self.request_id.get_or_insert(value);
        } else if is("traceparent") {
            self.traceparent.get_or_insert(value);
        } else if is("content-type") {
            self.content_type.get_or_insert(value);
        } else if is("idempotency-key") {
            self.idempotency_key.get_or_insert(value);
        } else if is("fibd-cluster-secret") {
            self.cluster_secret.get_or_insert(value);
        } else if is("expect") {
            self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }
}

pub(super) fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    if value.is_empty() {
        return Err(ParseError::InvalidContentLength);
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = char::from(b)
            .to_digit(10)
            .ok_or(ParseError::InvalidContentLength)?;
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit)))
            .ok_or(ParseError::InvalidContentLength)
    })
}

/// Applies the rules that need the whole head (RFC 9112 §3.2, §6.1, §6.3).
fn finish<'b>(
    start: StartLine<'b>,
    fields: &Fields<'b>,
    limits: &Limits,
) -> Result<Request<'b>, ParseError> {
    if start.version == Version::Http11 && !fields.host {
        return Err(ParseError::MissingHost);
    }
    let body = match (fields.chunked, fields.content_length) {
        (true, Some(_)) => return Err(ParseError::ContentLengthWithTransferEncoding),
        // An HTTP/1.0 recipient may not know chunked, so a sender using it
        // with 1.0 is confused or smuggling (RFC 9112 §6.1).
        (true, None) if start.version == Version::Http10 => {
            return Err(ParseError::UnsupportedTransferEncoding);
        }
        (true, None) => BodyFraming::Chunked,
        (false, None | Some(0)) => BodyFraming::None,
        (false, Some(n)) if n > limits.body_bytes_max => return Err(ParseError::BodyTooLarge),
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = !fields.close
        && match start.version {
            Version::Http11 => true,
            Version::Http10 => fields.keep_alive,
        };
    Ok(Request {
        method: start.method,
        path: start.path,
        query: start.query,
        version: start.version,
        keep_alive,
        body,
        accept: fields.accept,
        if_none_match: fields.if_none_match,
        api_key: fields.api_key,
        forwarded: fields.forwarded,
        x_forwarded_for: fields.x_forwarded_for,
        request_id: fields.request_id,
        traceparent: fields.traceparent,
        content_type: fields.content_type,
        idempotency_key: fields.idempotency_key,
        cluster_secret: fields.cluster_secret,
        expect_continue: fields.expect_continue,
    })
}

/// `tchar` from RFC 9110 §5.6.2: what methods and field names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// RFC 3986 unreserved, sub-delims, `:@/?%` and the IP-literal brackets; `#`
/// is excluded because a fragment never belongs in a request target.
fn is_target_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
                | b'['
                | b']'
        )
}

/// Field values allow visible ASCII, SP, HTAB and obs-text (RFC 9110 §5.5).
pub(super) fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    fn limits() -> Limits {
        Limits::default()
    }

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf, &limits()) {
            Ok(Parsed::Complete { request, head_len }) => (request, head_len),
            other => panic!(
                "expected Complete for {:?}, got {other:?}",
                buf.escape_ascii().to_string()
            ),
        }
    }

    fn error(buf: &[u8]) -> ParseError {
        match parse(buf, &limits()) {
            Err(e) => e,
            other => panic!(
                "expected an error for {:?}, got {other:?}",
                buf.escape_ascii().to_string()
            ),
        }
    }

    const VALID: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /v1/fib?n=10 HTTP/1.1\r\nHost: localhost:8080\r\nAccept: application/json\r\nUser-Agent: curl/8.0\r\n\r\n",
        b"POST /next HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-API-Key:  secret \r\nExpect: 100-continue\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /current HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://example.com:80/p?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET /lf HTTP/1.1\nHost: a\n\n",
        b"DELETE /%41%2f HTTP/1.1\r\nhost: a\r\nif-none-match: \"abc\"\r\n\r\n",
    ];

    #[test]
    fn valid_requests_parse_to_their_fields() {
        let (r, len) = complete(VALID[1]);
        assert_eq!(len, VALID[1].len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, b"/v1/fib");
        assert_eq!(r.query, b"n=10");
        assert_eq!(r.version, Version::Http11);
        assert!(r.keep_alive);
        assert_eq!(r.body, BodyFraming::None);
        assert_eq!(r.accept, Some(&b"application/json"[..]));
        assert_eq!(r.if_none_match, None);
        assert_eq!(r.api_key, None);
        assert!(!r.expect_continue);

        let (r, _) = complete(VALID[2]);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.body, BodyFraming::Length(5));
        assert_eq!(r.api_key, Some(&b"secret"[..]));
        assert_eq!(r.content_type, None);
        assert!(r.expect_continue);

        let (r, _) = complete(VALID[3]);
        assert_eq!(r.body, BodyFraming::Chunked);

        let (r, len) = complete(VALID[5]);
        assert_eq!(
            (r.method, r.path, r.query),
            (Method::Options, &b"*"[..], &b""[..])
        );
        assert_eq!(len, VALID[5].len());

        let (r, _) = complete(VALID[8]);
        assert_eq!(r.method, Method::Delete);
        assert_eq!(r.path, b"/%41%2f");
        assert_eq!(r.if_none_match, Some(&b"\"abc\""[..]));
    }

    #[test]
    fn every_valid_request_parses_completely() {
        for req in VALID {
            let (_, len) = complete(req);
            assert_eq!(len, req.len());
        }
    }

    #[test]
    fn every_proper_prefix_is_partial() {
        for req in VALID {
            for end in 0..req.len() {
                let prefix = &req[..end];
                assert_eq!(
                    parse(prefix, &limits()),
                    Ok(Parsed::Partial),
                    "prefix {:?}",
                    prefix.escape_ascii().to_string()
                );
            }
        }
    }

    #[test]
    fn methods_are_case_sensitive_tokens() {
        let cases: &[(&[u8], Method)] = &[
            (b"GET", Method::Get),
            (b"HEAD", Method::Head),
            (b"POST", Method::Post),
            (b"PUT", Method::Put),
            (b"DELETE", Method::Delete),
            (b"PATCH", Method::Patch),
            (b"OPTIONS", Method::Options),
            (b"TRACE", Method::Trace),
            (b"get", Method::Other),
            (b"BREW", Method::Other),
        ];
        for &(token, method) in cases {
            let mut req = token.to_vec();
            req.extend_from_slice(b" / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(complete(&req).0.method, method);
        }
    }

    #[test]
    fn rejections() {
        use ParseError::*;
        let cases: &[(&[u8], ParseError)] = &[
            (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", InvalidMethod),
            (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", InvalidMethod),
            (b"\x16\x03\x01\x02\x00", InvalidMethod),
            (b"GET\r\n\r\n", InvalidTarget),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", InvalidVersion),
            (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /%4 HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /a%4 HTTP/1.1", InvalidTarget),
            (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET ftp://h/p HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /[x] HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", InvalidVersion),
            (b"GET / http/1.1\r\nHost: a\r\n\r\n", InvalidVersion),
            (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", InvalidVersion),
            (b"GET / HTTP/1\r\nHost: a\r\n\r\n", InvalidVersion),
            (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", InvalidVersion),
            (b"GET /\r\n\r\n", InvalidVersion),
            (b"GET / HTTP/1.1\rHost: a\r\n\r\n", InvalidVersion),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", UnsupportedVersion),
            (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", UnsupportedVersion),
            (b"GET / HTTP/0.9\r\n\r\n", UnsupportedVersion),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2Preface),
            (b"PRI * HTTP/2.0", Http2Preface),
            (b"PRI * HTTP/2.0\r\n", Http2Preface),
            (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", InvalidHeaderName),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", InvalidHeaderName),
            (b"GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", InvalidHeaderName),
            (b"GET / HTTP/1.1\r\nNoColon\r\nHost: a\r\n\r\n", InvalidHeaderName),
            (b"GET / HTTP/1.1\r\nHost\r: a\r\n\r\n", InvalidHeaderName),
            (b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\x1b\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  2\r\n\r\n", ObsFold),
            (b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", ObsFold),
            (b"GET / HTTP/1.1\r\n\r\n", MissingHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n", DuplicateHost),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n", BodyTooLarge),
        ];
        for &(input, expected) in cases {
            assert_eq!(
                parse(input, &limits()),
                Err(expected),
                "input {:?}",
                input.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn limits_apply_to_incomplete_heads() {
        let limits = limits();
        let mut long_target = b"GET /".to_vec();
        long_target.resize(limits.uri_bytes_max + 10, b'a');
        assert_eq!(error(&long_target), ParseError::UriTooLong);

        let mut at_limit = b"GET /".to_vec();
        at_limit.resize(4 + limits.uri_bytes_max, b'a');
        assert_eq!(parse(&at_limit, &limits), Ok(Parsed::Partial));
        at_limit.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(
            parse(&at_limit, &limits),
            Ok(Parsed::Complete { .. })
        ));

        let mut big_head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        big_head.resize(9 * 1024, b'p');
        assert_eq!(error(&big_head), ParseError::HeadTooLarge);

        let mut blank_lines = Vec::new();
        while blank_lines.len() < limits.head_bytes_max {
            blank_lines.extend_from_slice(b"\r\n");
        }
        assert_eq!(error(&blank_lines), ParseError::HeadTooLarge);

        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for _ in 0..limits.headers_max {
            many.extend_from_slice(b"X: y\r\n");
        }
        assert_eq!(error(&many), ParseError::TooManyHeaders);
    }

    #[test]
    fn head_limit_is_inclusive() {
        let req = VALID[0];
        let exact = Limits {
            head_bytes_max: req.len(),
            ..limits()
        };
        assert!(matches!(parse(req, &exact), Ok(Parsed::Complete { .. })));
        let short = Limits {
            head_bytes_max: req.len() - 1,
            ..limits()
        };
        assert_eq!(parse(req, &short), Err(ParseError::HeadTooLarge));

        let mut headers = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for _ in 1..limits().headers_max {
            headers.extend_from_slice(b"X: y\r\n");
        }
        headers.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse(&headers, &limits()),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let first = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        let second = b"GET /b?x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let both = [&first[..], &second[..]].concat();
        let (r, len) = complete(&both);
        assert_eq!((r.path, len), (&b"/a"[..], first.len()));
        let (r, len) = complete(&both[len..]);
        assert_eq!(
            (r.path, r.query, r.keep_alive),
            (&b"/b"[..], &b"x"[..], false)
        );
        assert_eq!(len, second.len());
    }

    #[test]
    fn absolute_form_drops_scheme_and_authority() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b"http://example.com/p?q=1", b"/p", b"q=1"),
            (b"HTTPS://example.com:8443/a/b", b"/a/b", b""),
            (b"http://example.com", b"/", b""),
            (b"http://example.com?n=3", b"/", b"n=3"),
            (b"http://[::1]:8080/fib", b"/fib", b""),
            (b"http://user@h/x", b"/x", b""),
        ];
        for &(target, path, query) in cases {
            let req = [&b"GET "[..], target, b" HTTP/1.1\r\nHost: h\r\n\r\n"].concat();
            let (r, _) = complete(&req);
            assert_eq!((r.path, r.query), (path, query));
        }
    }

    #[test]
    fn query_splits_at_the_first_question_mark() {
        let (r, _) = complete(b"GET /p?a=1?b=2&c HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((r.path, r.query), (&b"/p"[..], &b"a=1?b=2&c"[..]));
        let (r, _) = complete(b"GET /p? HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((r.path, r.query), (&b"/p"[..], &b""[..]));
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade,  Close \r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\nConnection: te\r\n\r\n", false),
        ];
        for &(input, keep_alive) in cases {
            assert_eq!(
                complete(input).0.keep_alive,
                keep_alive,
                "input {:?}",
                input.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn header_names_are_case_insensitive_and_first_wins() {
        let (r, _) = complete(
            b"GET / HTTP/1.1\r\nhOsT: a\r\nACCEPT: text/plain\r\naccept: application/json\r\n\
              x-api-KEY: k1\r\nX-Api-Key: k2\r\nIF-NONE-MATCH: *\r\nEXPECT: 100-Continue\r\n\
              CONTENT-LENGTH: 3\r\ncontent-TYPE:  application/json \r\nContent-Type: text/plain\r\n\
              idempotency-KEY: retry-7 \r\nIdempotency-Key: other\r\n\r\n",
        );
        assert_eq!(r.content_type, Some(&b"application/json"[..]));
        assert_eq!(r.idempotency_key, Some(&b"retry-7"[..]));
        assert_eq!(r.cluster_secret, None);
        assert_eq!(r.accept, Some(&b"text/plain"[..]));
        assert_eq!(r.api_key, Some(&b"k1"[..]));
        assert_eq!(r.if_none_match, Some(&b"*"[..]));
        assert!(r.expect_continue);
        assert_eq!(r.body, BodyFraming::Length(3));
    }

    #[test]
    fn forwarding_fields_keep_the_last_line() {
        let (r, _) = complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nforwarded: for=2.2.2.2\r\n\
              x-forwarded-for:  3.3.3.3, 4.4.4.4 \r\nFORWARDED: for=5.5.5.5\r\n\r\n",
        );
        assert_eq!(r.x_forwarded_for, Some(&b"3.3.3.3, 4.4.4.4"[..]));
        assert_eq!(r.forwarded, Some(&b"for=5.5.5.5"[..]));
        let (r, _) = complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((r.forwarded, r.x_forwarded_for), (None, None));
    }

    #[test]
    fn request_id_and_traceparent_are_surfaced_first_wins() {
        let (r, _) = complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nx-request-ID:  abc-1 \r\nX-Request-Id: abc-2\r\n\
              TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        );
        assert_eq!(r.request_id, Some(&b"abc-1"[..]));
        assert_eq!(
            r.traceparent,
            Some(&b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..])
        );
        let (r, _) = complete(VALID[0]);
        assert_eq!((r.request_id, r.traceparent), (None, None));
    }

    #[test]
    fn whitespace_around_values_is_trimmed() {
        let (r, _) = complete(
            b"GET / HTTP/1.1\r\nHost:a\r\nAccept:\t text/plain \t\r\nX-API-Key:   \r\n\
              Content-Length:  0 \r\nX-Empty:\r\nX-Inner: a  b\r\n\r\n",
        );
        assert_eq!(r.accept, Some(&b"text/plain"[..]));
        assert_eq!(r.api_key, Some(&b""[..]));
        assert_eq!(r.body, BodyFraming::None);
    }

    #[test]
    fn obs_text_is_allowed_in_values() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: \xc3\xa9\r\n\r\n");
        assert_eq!(r.api_key, Some(&b"\xc3\xa9"[..]));
    }

    #[test]
    fn leading_empty_lines_count_toward_head_len() {
        let req = b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        let (r, len) = complete(req);
        assert_eq!(r.path, b"/");
        assert_eq!(&req[len..], b"rest");
    }

    #[test]
    fn mixed_line_endings_are_accepted() {
        let (r, len) = complete(b"GET /m HTTP/1.1\nHost: a\r\nAccept: */*\n\r\nX");
        assert_eq!((r.path, r.accept), (&b"/m"[..], Some(&b"*/*"[..])));
        assert_eq!(len, 39);
    }

    #[test]
    fn preface_prefixes_wait_until_they_can_tell() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for end in 0..preface.len() {
            let expected = if end < H2_PREFACE_LINE.len() {
                Ok(Parsed::Partial)
            } else {
                Err(ParseError::Http2Preface)
            };
            assert_eq!(parse(&preface[..end], &limits()), expected, "end {end}");
        }
    }

    #[test]
    fn content_length_bounds() {
        let at_max = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n";
        assert_eq!(complete(at_max).0.body, BodyFraming::Length(65536));
        let huge = Limits {
            body_bytes_max: u64::MAX,
            ..limits()
        };
        let max = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n";
        let Ok(Parsed::Complete { request, .. }) = parse(max, &huge) else {
            panic!("u64::MAX is a valid length");
        };
        assert_eq!(request.body, BodyFraming::Length(u64::MAX));
        let zeros = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n";
        assert_eq!(complete(zeros).0.body, BodyFraming::Length(7));
    }

    #[test]
    fn messages_are_sentences_without_numbers() {
        use ParseError::*;
        let all = [
            HeadTooLarge,
            UriTooLong,
            TooManyHeaders,
            InvalidMethod,
            InvalidTarget,
            InvalidVersion,
            UnsupportedVersion,
            Http2Preface,
            InvalidHeaderName,
            InvalidHeaderValue,
            ObsFold,
            MissingHost,
            DuplicateHost,
            InvalidContentLength,
            DuplicateContentLength,
            ContentLengthWithTransferEncoding,
            UnsupportedTransferEncoding,
            BodyTooLarge,
        ];
        for e in all {
            let m = e.message();
            assert!(m.len() > 10, "{e:?}");
            assert_eq!(e.to_string(), m);
        }
    }

    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        proptest::sample::select(VALID).prop_map(<[u8]>::to_vec)
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Flip(usize, u8),
        Insert(usize, u8),
        Remove(usize),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Remove),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn apply(buf: &mut Vec<u8>, m: &Mutation) {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *m {
            Mutation::Flip(i, bit) => {
                let i = at(i, buf.len());
                if let Some(b) = buf.get_mut(i) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Insert(i, b) => {
                let i = at(i, buf.len() + 1);
                buf.insert(i, b);
            }
            Mutation::Remove(i) => {
                if !buf.is_empty() {
                    let i = at(i, buf.len());
                    buf.remove(i);
                }
            }
            Mutation::Truncate(i) => {
                let i = at(i, buf.len() + 1);
                buf.truncate(i);
            }
        }
    }

    /// Generous: a parse touches at most head_bytes_max bytes a few times.
    const PARSE_TIME_MAX: Duration = Duration::from_millis(200);

    fn parse_timed<'b>(buf: &'b [u8], limits: &Limits) -> Result<Parsed<'b>, ParseError> {
        let started = Instant::now();
        let result = parse(buf, limits);
        assert!(started.elapsed() < PARSE_TIME_MAX);
        result
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..10_000)) {
            let _ = parse_timed(&buf, &limits());
        }

        #[test]
        fn header_shaped_noise_never_panics(
            pieces in proptest::collection::vec(
                proptest::sample::select(&[
                    "\r\n", "\n", "\r", ":", " ", "\t", ",", "Host", "Content-Length",
                    "Transfer-Encoding", "Connection", "chunked", "close", "keep-alive", "7",
                    "99999999999999999999", "Accept", "X-API-Key", "Expect", "100-continue", "\0", "\u{7f}",
                ][..]),
                0..60,
            ),
        ) {
            let buf = ["GET / HTTP/1.1\r\n", &pieces.concat()].concat();
            let _ = parse_timed(buf.as_bytes(), &limits());
        }

        #[test]
        fn mutated_requests_never_panic(
            mut buf in valid_request(),
            mutations in proptest::collection::vec(mutation(), 1..8),
        ) {
            for m in &mutations {
                apply(&mut buf, m);
            }
            let _ = parse_timed(&buf, &limits());
            let small = Limits { head_bytes_max: 40, uri_bytes_max: 8, headers_max: 2, body_bytes_max: 3 };
            let _ = parse_timed(&buf, &small);
        }

        #[test]
        fn valid_request_then_anything_yields_the_request_first(
            req in valid_request(),
            tail in proptest::collection::vec(any::<u8>(), 0..2_000),
        ) {
            let alone = parse(&req, &limits());
            let joined = [&req[..], &tail[..]].concat();
            prop_assert_eq!(parse_timed(&joined, &limits()), alone);
            let complete_alone = matches!(alone, Ok(Parsed::Complete { head_len, .. }) if head_len == req.len());
            prop_assert!(complete_alone);
        }
    }
}
