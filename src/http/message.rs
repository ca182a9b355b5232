//! The vocabulary a request and its response share: the method, the
//! version, and whether the connection persists after the answer. The
//! parser produces them and the head writer reads them; neither owns them.

/// Request methods; `Other` is a well-formed token we have no route for, so
/// the router can answer 405/501 instead of the parser answering 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Trace,
    Connect,
    Other,
}

impl Method {
    /// The token as sent; `OTHER` for a method fibd has no name for.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Connect => "CONNECT",
            Method::Other => "OTHER",
        }
    }

    /// Methods are case-sensitive (RFC 9110 §9.1), so `get` is `Other`.
    pub(super) fn from_token(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Whether the connection stays open after a response, and what the
/// response's `Connection` field says about it: the one place that rule lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 persists by default, so nothing needs saying.
    KeepAlive,
    /// An HTTP/1.0 client that asked for keep-alive waits for the close that
    /// ends a response unless told otherwise, so it is told:
    /// `Connection: keep-alive` (RFC 9112 §9.3 and Appendix C.2.2).
    KeepAliveHttp10,
    /// `Connection: close`; the server closes once the response is written.
    Close,
}

impl Persistence {
    /// From the request's version and its `Connection` field, as the parser
    /// judged them (`keep_alive`).
    pub fn of(version: Version, keep_alive: bool) -> Persistence {
        match (keep_alive, version) {
            (false, _) => Persistence::Close,
            (true, Version::Http11) => Persistence::KeepAlive,
            (true, Version::Http10) => Persistence::KeepAliveHttp10,
        }
    }

    /// The same, unless `close` forces the connection shut (after an error
    /// that leaves the connection in an unknown state).
    pub fn or_close(self, close: bool) -> Persistence {
        if close { Persistence::Close } else { self }
    }

    pub fn closes(self) -> bool {
        self == Persistence::Close
    }

    pub(super) fn field(self) -> &'static [u8] {
        match self {
            Persistence::KeepAlive => b"",
            Persistence::KeepAliveHttp10 => b"Connection: keep-alive\r\n",
            Persistence::Close => b"Connection: close\r\n",
        }
    }
}
