//! Upstream responses as bytes: the sans-IO reader of one HTTP/1.1 response
//! that fibd's outbound client (`crate::net::upstream`) receives.
//!
//! It owns the status line, the header fields that frame the body
//! (Content-Length, Transfer-Encoding, Connection), the body itself
//! (Content-Length, chunked through `super::chunked`, or read until the
//! upstream closes) and a cap on every part of it. Line splitting and field
//! syntax are the request parser's (`super::parse`), so both directions read
//! HTTP the same way. It does not own the socket, the request, or what a
//! status means to the caller: a 500 is a complete response here.
//!
//! Feed it the bytes received so far with [`ResponseReader::feed`]; it says
//! how many it used. The head is parsed from the start of the caller's buffer
//! each time (the caller keeps unconsumed bytes, as with requests); body bytes
//! are copied into the response as they come. Interim 1xx responses are
//! skipped. A body delimited by the close of the connection ends with
//! [`ResponseReader::end_of_stream`].

use std::fmt;

use super::chunked::{ChunkError, ChunkProgress, ChunkedDecoder};
use super::parse::{Lines, field_line, is_field_byte, parse_content_length};
use super::trim_ows;

/// Bounds on one upstream response; units last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseLimits {
    pub head_bytes_max: usize,
    pub headers_max: usize,
    pub body_bytes_max: usize,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits {
            head_bytes_max: 16 * 1024,
            headers_max: 100,
            body_bytes_max: 1 << 20,
        }
    }
}

/// A whole response; the header fields other than the framing ones are
/// validated and dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The connection may carry another request (HTTP/1.1 without
    /// `Connection: close`, a body not delimited by the close).
    pub keep_alive: bool,
}

/// Why a response was refused. Fieldless but for the chunk error, so callers
/// copy and match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    InvalidStatusLine,
    UnsupportedVersion,
    HeadTooLarge,
    TooManyHeaders,
    InvalidHeader,
    InvalidContentLength,
    /// Two Content-Length fields, or one with Transfer-Encoding: the framing
    /// is ambiguous, which is how responses get smuggled.
    AmbiguousFraming,
    UnsupportedTransferEncoding,
    BodyTooLarge,
    Chunk(ChunkError),
    /// The upstream closed the connection before the response ended.
    Truncated,
}

impl ResponseError {
    pub fn message(self) -> &'static str {
        match self {
            ResponseError::InvalidStatusLine => "the upstream's status line is malformed",
            ResponseError::UnsupportedVersion => "the upstream does not answer in HTTP/1.x",
            ResponseError::HeadTooLarge => "the upstream's response head is too large",
            ResponseError::TooManyHeaders => "the upstream's response has too many header fields",
            ResponseError::InvalidHeader => "the upstream sent a malformed header field",
            ResponseError::InvalidContentLength => "the upstream sent an invalid Content-Length",
            ResponseError::AmbiguousFraming => {
                "the upstream's response framing is ambiguous (two lengths, or a length and chunked)"
            }
            ResponseError::UnsupportedTransferEncoding => {
                "the upstream used a transfer coding other than chunked"
            }
            ResponseError::BodyTooLarge => "the upstream's answer is larger than fibd accepts",
            ResponseError::Chunk(ChunkError::BodyTooLarge) => {
                "the upstream's answer is larger than fibd accepts"
            }
            ResponseError::Chunk(_) => "the upstream's chunked body is malformed",
            ResponseError::Truncated => "the upstream closed the connection mid-answer",
        }
    }
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ResponseError {}

/// The outcome of one feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// `consumed` bytes were used (possibly none, while the head is partial:
    /// keep them and feed them again with what comes next).
    NeedMore { consumed: usize },
    /// The response ended after `consumed` bytes of this buffer.
    Done { consumed: usize, response: Response },
}

#[derive(Clone, Debug)]
enum State {
    Head,
    Length { remaining: usize },
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// Reads one response; make a new one per request.
#[derive(Clone, Debug)]
pub struct ResponseReader {
    state: State,
    limits: ResponseLimits,
    /// The request was HEAD: no body follows whatever the head says.
    head_only: bool,
    status: u16,
    keep_alive: bool,
    body: Vec<u8>,
}

impl ResponseReader {
    pub fn new(limits: ResponseLimits, head_only: bool) -> ResponseReader {
        ResponseReader {
            state: State::Head,
            limits,
            head_only,
            status: 0,
            keep_alive: false,
            body: Vec::new(),
        }
    }

    /// Whether any part of a final response has been read (a reused
    /// connection that fails before this may be retried safely).
    pub fn has_begun(&self) -> bool {
        !matches!(self.state, State::Head)
    }

    pub fn feed(&mut self, buf: &[u8]) -> Result<Progress, ResponseError> {
        let mut pos = 0;
        if matches!(self.state, State::Head) {
            match self.head(buf)? {
                None => return Ok(Progress::NeedMore { consumed: 0 }),
                Some(head_len) => pos = head_len,
            }
        }
        let rest = buf.get(pos..).unwrap_or_default();
        let used = match &mut self.state {
            State::Head | State::Done => 0,
            State::Length { remaining } => {
                let used = rest.len().min(*remaining);
                self.body
                    .extend_from_slice(rest.get(..used).unwrap_or_default());
                *remaining -= used;
                if *remaining == 0 {
                    self.state = State::Done;
                }
                used
            }
            State::Chunked(decoder) => {
                let body = &mut self.body;
                match decoder
                    .feed_with(rest, |data| body.extend_from_slice(data))
                    .map_err(ResponseError::Chunk)?
                {
                    ChunkProgress::NeedMore { consumed } => consumed,
                    ChunkProgress::Done { consumed } => {
                        self.state = State::Done;
                        consumed
                    }
                }
            }
            State::UntilClose => {
                if self.body.len() + rest.len() > self.limits.body_bytes_max {
                    return Err(ResponseError::BodyTooLarge);
                }
                self.body.extend_from_slice(rest);
                rest.len()
            }
        };
        pos += used;
        Ok(match self.state {
            State::Done => Progress::Done {
                consumed: pos,
                response: self.take(),
            },
            _ => Progress::NeedMore { consumed: pos },
        })
    }

    /// The upstream closed the connection: the end of a body delimited by
    /// the close, or a truncated response.
    pub fn end_of_stream(&mut self) -> Result<Response, ResponseError> {
        match self.state {
            State::UntilClose => {
                self.state = State::Done;
                Ok(self.take())
            }
            _ => Err(ResponseError::Truncated),
        }
    }

    fn take(&mut self) -> Response {
        Response {
            status: self.status,
            body: std::mem::take(&mut self.body),
            keep_alive: self.keep_alive,
        }
    }

    /// Parses the head (skipping interim 1xx ones) and sets the body state;
    /// `None` while it is incomplete.
    fn head(&mut self, buf: &[u8]) -> Result<Option<usize>, ResponseError> {
        let mut pos = 0;
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            let Some((head, len)) = parse_head(rest, &self.limits)? else {
                // Interim heads count towards the head limit too.
                if buf.len() >= self.limits.head_bytes_max {
                    return Err(ResponseError::HeadTooLarge);
                }
                return Ok(None);
            };
            pos += len;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            if head.status == 101 {
                return Err(ResponseError::InvalidStatusLine);
            }
            self.status = head.status;
            let bodiless = self.head_only || head.status == 204 || head.status == 304;
            self.keep_alive = head.keep_alive;
            self.state = match head.framing {
                _ if bodiless => State::Done,
                Framing::Length(n) => {
                    let n = usize::try_from(n)
                        .ok()
                        .filter(|&n| n <= self.limits.body_bytes_max)
                        .ok_or(ResponseError::BodyTooLarge)?;
                    if n == 0 {
                        State::Done
                    } else {
                        self.body.reserve_exact(n);
                        State::Length { remaining: n }
                    }
                }
                Framing::Chunked => {
                    State::Chunked(ChunkedDecoder::new(self.limits.body_bytes_max as u64))
                }
                Framing::UntilClose => {
                    self.keep_alive = false;
                    State::UntilClose
                }
            };
            return Ok(Some(pos));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

/// One head from the start of `buf`, with its length; `None` if incomplete.
fn parse_head(buf: &[u8], limits: &ResponseLimits) -> Result<Option<(Head, usize)>, ResponseError> {
    let window = buf.get(..limits.head_bytes_max).unwrap_or(buf);
    let mut lines = Lines::new(window);
    let Some(line) = lines.next_line() else {
        status_line(buf.get(..16).unwrap_or(buf), false)?;
        return Ok(None);
    };
    let (http11, status) = status_line(line, true)?;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut count = 0;
    loop {
        let Some(line) = lines.next_line() else {
            return Ok(None);
        };
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > limits.headers_max {
            return Err(ResponseError::TooManyHeaders);
        }
        let (name, value) = field_line(line).map_err(|_| ResponseError::InvalidHeader)?;
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        if is("content-length") {
            if content_length.is_some() {
                return Err(ResponseError::AmbiguousFraming);
            }
            content_length =
                Some(parse_content_length(value).map_err(|_| ResponseError::InvalidContentLength)?);
        } else if is("transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(ResponseError::UnsupportedTransferEncoding);
            }
            chunked = true;
        } else if is("connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let framing = match (chunked, content_length) {
        (true, Some(_)) => return Err(ResponseError::AmbiguousFraming),
        (true, None) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::UntilClose,
    };
    let keep_alive = !close && (http11 || keep_alive);
    let head = Head {
        status,
        framing,
        keep_alive,
    };
    Ok(Some((head, lines.pos())))
}

/// `HTTP/1.x SSS reason`: whether it is 1.1, and the status. With `complete`
/// false, checks only that the bytes so far can begin one.
fn status_line(line: &[u8], complete: bool) -> Result<(bool, u16), ResponseError> {
    let prefix_of = |shape: &[u8]| line.iter().zip(shape).all(|(b, s)| b == s);
    if !prefix_of(b"HTTP/1.") {
        return Err(if prefix_of(b"HTTP/") && line.len() > 5 {
            ResponseError::UnsupportedVersion
        } else {
            ResponseError::InvalidStatusLine
        });
    }
    if !matches!(line.get(7), None | Some(b'0' | b'1')) {
        return Err(ResponseError::UnsupportedVersion);
    }
    let code_shape = line
        .get(8..)
        .unwrap_or_default()
        .iter()
        .zip(b" 000")
        .all(|(&b, &s)| {
            if s == b' ' {
                b == s
            } else {
                b.is_ascii_digit()
            }
        });
    if !code_shape {
        return Err(ResponseError::InvalidStatusLine);
    }
    if !complete {
        return Ok((false, 0));
    }
    let http11 = match line.get(5..8) {
        Some(b"1.1") => true,
        Some(b"1.0") => false,
        _ => return Err(ResponseError::UnsupportedVersion),
    };
    let (Some(digits), rest) = (line.get(9..12), line.get(12..).unwrap_or_default()) else {
        return Err(ResponseError::InvalidStatusLine);
    };
    let reason_ok = match rest.split_first() {
        None => true,
        Some((b' ', reason)) => reason.iter().all(|&b| is_field_byte(b)),
        Some(_) => false,
    };
    if !reason_ok {
        return Err(ResponseError::InvalidStatusLine);
    }
    let status = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if status < 100 {
        return Err(ResponseError::InvalidStatusLine);
    }
    Ok((http11, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> ResponseLimits {
        ResponseLimits {
            head_bytes_max: 1024,
            headers_max: 8,
            body_bytes_max: 64,
        }
    }

    /// Feeds `input` whole, as a connection that keeps unconsumed bytes would.
    fn read(input: &[u8]) -> Result<Progress, ResponseError> {
        ResponseReader::new(limits(), false).feed(input)
    }

    /// Feeds `input` in pieces of `step` bytes, keeping what was not consumed.
    fn read_in_steps(input: &[u8], step: usize) -> Result<(Response, usize), ResponseError> {
        let mut reader = ResponseReader::new(limits(), false);
        let mut kept = Vec::new();
        let mut total = 0;
        for piece in input.chunks(step) {
            kept.extend_from_slice(piece);
            match reader.feed(&kept)? {
                Progress::NeedMore { consumed } => {
                    total += consumed;
                    kept.drain(..consumed);
                }
                Progress::Done { consumed, response } => return Ok((response, total + consumed)),
            }
        }
        reader.end_of_stream().map(|r| (r, total + kept.len()))
    }

    const VALID: &[(&[u8], u16, &[u8], bool)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            200,
            b"hello",
            true,
        ),
        (
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            500,
            b"{}",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
            200,
            b"[1,2]",
            true,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n7",
            201,
            b"7",
            true,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", true),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n1",
            200,
            b"1",
            true,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n1", 200, b"1", false),
        (b"HTTP/1.1 200\nContent-Length: 0\n\n", 200, b"", true),
    ];

    #[test]
    fn valid_responses_end_exactly_and_keep_their_body() {
        for &(input, status, body, keep_alive) in VALID {
            let expected = Response {
                status,
                body: body.to_vec(),
                keep_alive,
            };
            let name = input.escape_ascii().to_string();
            assert_eq!(
                read(input),
                Ok(Progress::Done {
                    consumed: input.len(),
                    response: expected.clone()
                }),
                "{name}"
            );
            for step in [1, 2, 3, 7] {
                assert_eq!(
                    read_in_steps(input, step),
                    Ok((expected.clone(), input.len())),
                    "{name} step {step}"
                );
            }
        }
    }

    #[test]
    fn every_proper_prefix_is_partial() {
        for &(input, ..) in VALID {
            for end in 0..input.len() {
                let mut reader = ResponseReader::new(limits(), false);
                match reader.feed(&input[..end]) {
                    Ok(Progress::NeedMore { consumed }) => assert!(consumed <= end),
                    other => panic!("{:?} at {end}: {other:?}", input.escape_ascii().to_string()),
                }
            }
        }
    }

    #[test]
    fn a_body_until_close_ends_at_end_of_stream() {
        let input = b"HTTP/1.1 200 OK\r\n\r\n{\"a\": 1}";
        let mut reader = ResponseReader::new(limits(), false);
        assert_eq!(
            reader.feed(input),
            Ok(Progress::NeedMore {
                consumed: input.len()
            })
        );
        let response = reader.end_of_stream().unwrap();
        assert_eq!(
            (response.body.as_slice(), response.keep_alive),
            (&b"{\"a\": 1}"[..], false)
        );
        // A length-delimited body cut short is truncated, not complete.
        let mut reader = ResponseReader::new(limits(), false);
        reader
            .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
            .unwrap();
        assert_eq!(reader.end_of_stream(), Err(ResponseError::Truncated));
        assert_eq!(
            ResponseReader::new(limits(), false).end_of_stream(),
            Err(ResponseError::Truncated)
        );
    }

    #[test]
    fn bytes_after_the_response_are_not_consumed() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
        let Ok(Progress::Done { consumed, .. }) = read(input) else {
            panic!()
        };
        assert_eq!(consumed, input.len() - 17);
    }

    #[test]
    fn a_head_request_gets_no_body() {
        let mut reader = ResponseReader::new(limits(), true);
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n";
        let Ok(Progress::Done { consumed, response }) = reader.feed(input) else {
            panic!()
        };
        assert_eq!((consumed, response.body.len()), (input.len(), 0));
    }

    #[test]
    fn the_body_cap_holds_for_every_framing() {
        let over = b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(read(over), Err(ResponseError::BodyTooLarge));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n";
        assert_eq!(
            read(chunked),
            Err(ResponseError::Chunk(ChunkError::BodyTooLarge))
        );
        let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        until_close.extend_from_slice(&[b'x'; 65]);
        assert_eq!(read(&until_close), Err(ResponseError::BodyTooLarge));
        assert_eq!(
            read_in_steps(&until_close, 5),
            Err(ResponseError::BodyTooLarge)
        );
    }

    #[test]
    fn rejections() {
        use ResponseError::*;
        let cases: &[(&[u8], ResponseError)] = &[
            (b"HTTP/2 200\r\n\r\n", UnsupportedVersion),
            (b"HTTP/1.2 200 OK\r\n\r\n", UnsupportedVersion),
            (b"SSH-2.0-OpenSSH\r\n", InvalidStatusLine),
            (b"HTTP/1.1 20 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 2000 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 099 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 200 O\x01K\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 101 Switching\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", InvalidHeader),
            (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", InvalidHeader),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", InvalidContentLength),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                AmbiguousFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                AmbiguousFraming,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                UnsupportedTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Chunk(ChunkError::InvalidChunkSize),
            ),
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\n\r\n",
                TooManyHeaders,
            ),
        ];
        for &(input, expected) in cases {
            let name = input.escape_ascii().to_string();
            assert_eq!(read(input), Err(expected), "{name}");
            assert!(!expected.message().is_empty());
        }
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(2000, b'a');
        assert_eq!(read(&long), Err(HeadTooLarge));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_splitting_changes_nothing(
            input in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b' '), Just(b'1')],
                0..200,
            ),
            step in 1usize..20,
        ) {
            let mut prefixed = b"HTTP/1.1 200 OK\r\n".to_vec();
            prefixed.extend_from_slice(&input);
            let whole = match read(&prefixed) {
                Ok(Progress::Done { response, consumed }) => Some(Ok((response, consumed))),
                Ok(Progress::NeedMore { .. }) => None,
                Err(e) => Some(Err(e)),
            };
            if let Some(whole) = whole {
                prop_assert_eq!(read_in_steps(&prefixed, step), whole);
            }
        }
    }
}
