//! One outbound call's vocabulary: the request as it is sent, the id a call
//! is known by, and why a call produced no response. A leaf: the pool
//! (`mod.rs`), one connection (`conn`) and targets (`target`) all name it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::http::upstream::ResponseError;

/// A request ready to send: its bytes, encoded once and shared.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub(super) addr: SocketAddr,
    pub(super) bytes: Rc<[u8]>,
    pub(super) head_only: bool,
}

impl Outbound {
    /// Encodes `METHOD target HTTP/1.1` with `Host`, the given fields and
    /// the body (with its Content-Length when there is one, or the method
    /// usually carries one). `addr` is where to connect, resolved by the
    /// caller once (never on the loop).
    pub fn new(
        method: &str,
        addr: SocketAddr,
        host: &str,
        target: &str,
        fields: &[(&str, &str)],
        body: &[u8],
    ) -> Outbound {
        let mut out = Vec::with_capacity(64 + target.len() + host.len() + body.len());
        for part in [method, " ", target, " HTTP/1.1\r\nHost: ", host, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
        for (name, value) in fields {
            for part in [*name, ": ", *value, "\r\n"] {
                out.extend_from_slice(part.as_bytes());
            }
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        Outbound {
            addr,
            bytes: out.into(),
            head_only: method == "HEAD",
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request's body, for other modules' tests.
    #[cfg(test)]
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[self.head_len()..]
    }

    /// The request line and header fields, for other modules' tests.
    #[cfg(test)]
    pub(crate) fn head(&self) -> &[u8] {
        &self.bytes[..self.head_len()]
    }

    #[cfg(test)]
    fn head_len(&self) -> usize {
        memchr::memmem::find(&self.bytes, b"\r\n\r\n").map_or(0, |i| i + 4)
    }
}

/// Names one call; made by [`Client::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub(super) u64);

/// Why a call produced no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The connection could not be opened (refused, unreachable...).
    Connect(io::ErrorKind),
    /// The upstream closed or reset the connection before a whole answer.
    Closed,
    /// The deadline passed first.
    Timeout,
    /// The answer was not acceptable HTTP/1.1, or over the size cap.
    Response(ResponseError),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect(kind) => write!(f, "cannot connect: {kind}"),
            CallError::Closed => f.write_str("the connection closed before a whole answer"),
            CallError::Timeout => f.write_str("no answer before the deadline"),
            CallError::Response(e) => f.write_str(e.message()),
        }
    }
}
