//! Writing response heads into a caller's buffer, with no allocation beyond the
//! buffer's own growth. Bodies are appended by the caller (inline) or shared
//! (`conn::Output::push_shared`), so this file only knows the head's grammar.

use super::date::HttpDate;
use super::message::Persistence;
use crate::base::digits;
use crate::http::request_id::{self, RequestId};

/// A status code with its reason phrase; only the codes fibd sends exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    code: u16,
    /// The whole status line, written as one copy.
    line: &'static str,
}

impl Status {
    pub const OK: Status = Status::new(200, "HTTP/1.1 200 OK\r\n");
    pub const ACCEPTED: Status = Status::new(202, "HTTP/1.1 202 Accepted\r\n");
    pub const NOT_MODIFIED: Status = Status::new(304, "HTTP/1.1 304 Not Modified\r\n");
    pub const BAD_REQUEST: Status = Status::new(400, "HTTP/1.1 400 Bad Request\r\n");
    pub const UNAUTHORIZED: Status = Status::new(401, "HTTP/1.1 401 Unauthorized\r\n");
    pub const FORBIDDEN: Status = Status::new(403, "HTTP/1.1 403 Forbidden\r\n");
    pub const NOT_FOUND: Status = Status::new(404, "HTTP/1.1 404 Not Found\r\n");
    pub const METHOD_NOT_ALLOWED: Status = Status::new(405, "HTTP/1.1 405 Method Not Allowed\r\n");
    pub const NOT_ACCEPTABLE: Status = Status::new(406, "HTTP/1.1 406 Not Acceptable\r\n");
    pub const REQUEST_TIMEOUT: Status = Status::new(408, "HTTP/1.1 408 Request Timeout\r\n");
    pub const CONFLICT: Status = Status::new(409, "HTTP/1.1 409 Conflict\r\n");
    pub const PAYLOAD_TOO_LARGE: Status = Status::new(413, "HTTP/1.1 413 Content Too Large\r\n");
    pub const URI_TOO_LONG: Status = Status::new(414, "HTTP/1.1 414 URI Too Long\r\n");
    pub const UNSUPPORTED_MEDIA_TYPE: Status =
        Status::new(415, "HTTP/1.1 415 Unsupported Media Type\r\n");
    pub const EXPECTATION_FAILED: Status = Status::new(417, "HTTP/1.1 417 Expectation Failed\r\n");
    pub const MISDIRECTED: Status = Status::new(421, "HTTP/1.1 421 Misdirected Request\r\n");
    pub const UNPROCESSABLE: Status = Status::new(422, "HTTP/1.1 422 Unprocessable Content\r\n");
    pub const TOO_MANY_REQUESTS: Status = Status::new(429, "HTTP/1.1 429 Too Many Requests\r\n");
    pub const HEADERS_TOO_LARGE: Status =
        Status::new(431, "HTTP/1.1 431 Request Header Fields Too Large\r\n");
    pub const INTERNAL_ERROR: Status = Status::new(500, "HTTP/1.1 500 Internal Server Error\r\n");
    pub const NOT_IMPLEMENTED: Status = Status::new(501, "HTTP/1.1 501 Not Implemented\r\n");
    pub const SERVICE_UNAVAILABLE: Status =
        Status::new(503, "HTTP/1.1 503 Service Unavailable\r\n");
    pub const VERSION_NOT_SUPPORTED: Status =
        Status::new(505, "HTTP/1.1 505 HTTP Version Not Supported\r\n");

    const fn new(code: u16, line: &'static str) -> Status {
        Status { code, line }
    }

    pub fn code(self) -> u16 {
        self.code
    }

    /// 1xx, 204 and 304 responses never carry a body, so no Content-Length
    /// other than the one a GET would have had.
    fn is_bodiless(self) -> bool {
        self.code == 304
    }
}

/// Content types fibd serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    Text,
    Json,
    Prometheus,
    Html,
}

impl ContentType {
    fn as_str(self) -> &'static str {
        match self {
            // Digits and ASCII only: text/plain's default charset fits, and
            // every byte saved counts at a million replies a second.
            ContentType::Text => "text/plain",
            ContentType::Json => "application/json",
            ContentType::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            ContentType::Html => "text/html; charset=utf-8",
        }
    }
}

/// Appends one response head to `out`. Start with [`Head::start`], add
/// headers, then [`Head::finish`] with the body length.
pub struct Head<'o> {
    out: &'o mut Vec<u8>,
}

impl<'o> Head<'o> {
    /// Every answer carries the request's id: there is no head without one.
    pub fn start(
        out: &'o mut Vec<u8>,
        status: Status,
        date: &HttpDate,
        request_id: &RequestId,
    ) -> Head<'o> {
        out.extend_from_slice(status.line.as_bytes());
        out.extend_from_slice(b"Server: fibd\r\nDate: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut head = Head { out };
        head.header(request_id::HEADER, request_id.as_bytes());
        head
    }

    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// A header whose value the caller formats straight into the buffer.
    pub fn header_with(&mut self, name: &str, value: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        value(self.out);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn header_u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        digits::write_u64(self.out, value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn content_type(&mut self, content_type: ContentType) -> &mut Self {
        self.header("Content-Type", content_type.as_str().as_bytes())
    }

    /// Ends the head and hands the buffer back for the body. `content_length`
    /// is the length of the body a GET gets, also for HEAD (RFC 9110 §9.3.2);
    /// `persistence` says whether a `Connection` field is due.
    pub fn finish(
        self,
        status: Status,
        content_length: usize,
        persistence: Persistence,
    ) -> &'o mut Vec<u8> {
        if !status.is_bodiless() || content_length > 0 {
            self.out.extend_from_slice(b"Content-Length: ");
            digits::write_u64(self.out, content_length as u64);
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(persistence.field());
        self.out.extend_from_slice(b"\r\n");
        self.out
    }
}

/// Appends `s` as the inside of a JSON string literal, escaping what JSON
/// requires; fibd's own messages are ASCII, but echoed input may not be.
pub fn write_json_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn date() -> HttpDate {
        HttpDate::new(UNIX_EPOCH + Duration::from_secs(784_111_777))
    }

    fn id() -> RequestId {
        RequestId::from_caller(b"r-1").unwrap()
    }

    #[test]
    fn head_has_status_date_length_and_close() {
        let mut out = Vec::new();
        let mut head = Head::start(&mut out, Status::OK, &date(), &id());
        head.content_type(ContentType::Text)
            .header_u64("X-Fib-Index", 7);
        head.finish(Status::OK, 3, Persistence::Close);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: fibd\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             X-Request-Id: r-1\r\nContent-Type: text/plain\r\nX-Fib-Index: 7\r\n\
             Content-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn not_modified_without_length_has_no_content_length() {
        let mut out = Vec::new();
        Head::start(&mut out, Status::NOT_MODIFIED, &date(), &id()).finish(
            Status::NOT_MODIFIED,
            0,
            Persistence::KeepAlive,
        );
        assert!(!String::from_utf8(out).unwrap().contains("Content-Length"));
    }

    #[test]
    fn the_connection_field_follows_version_and_keep_alive() {
        use crate::http::message::Version::{Http10, Http11};
        let cases = [
            (Http11, true, false, ""),
            (Http11, false, false, "Connection: close\r\n"),
            (Http10, true, false, "Connection: keep-alive\r\n"),
            (Http10, false, false, "Connection: close\r\n"),
            (Http10, true, true, "Connection: close\r\n"),
            (Http11, true, true, "Connection: close\r\n"),
        ];
        for (version, keep_alive, forced_close, field) in cases {
            let persistence = Persistence::of(version, keep_alive).or_close(forced_close);
            let mut out = Vec::new();
            Head::start(&mut out, Status::OK, &date(), &id()).finish(Status::OK, 0, persistence);
            let head = String::from_utf8(out).unwrap();
            let expected = format!("Content-Length: 0\r\n{field}\r\n");
            assert!(
                head.ends_with(&expected),
                "{version:?} {keep_alive}: {head}"
            );
            assert_eq!(persistence.closes(), field.contains("close"));
        }
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_bytes() {
        let mut out = Vec::new();
        write_json_str(&mut out, b"a\"b\\c\n\xff");
        assert_eq!(out, b"a\\\"b\\\\c\\u000a\\u00ff");
    }

    #[test]
    fn every_status_line_carries_its_own_code() {
        for status in [
            Status::OK,
            Status::NOT_MODIFIED,
            Status::BAD_REQUEST,
            Status::UNAUTHORIZED,
            Status::FORBIDDEN,
            Status::NOT_FOUND,
            Status::METHOD_NOT_ALLOWED,
            Status::NOT_ACCEPTABLE,
            Status::REQUEST_TIMEOUT,
            Status::CONFLICT,
            Status::PAYLOAD_TOO_LARGE,
            Status::URI_TOO_LONG,
            Status::EXPECTATION_FAILED,
            Status::UNPROCESSABLE,
            Status::TOO_MANY_REQUESTS,
            Status::HEADERS_TOO_LARGE,
            Status::INTERNAL_ERROR,
            Status::NOT_IMPLEMENTED,
            Status::SERVICE_UNAVAILABLE,
            Status::VERSION_NOT_SUPPORTED,
        ] {
            let prefix = format!("HTTP/1.1 {} ", status.code());
            assert!(status.line.starts_with(&prefix), "{}", status.line);
            assert!(status.line.ends_with("\r\n") && status.line.len() > prefix.len() + 2);
        }
    }
}
