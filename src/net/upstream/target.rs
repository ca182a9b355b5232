//! Where an outbound call goes: an `http://` URL parsed ([`HttpUrl`]) and its host
//! resolved once, at start-up (a DNS lookup never runs on the loop). The
//! /api/smart upstream and the Zipkin collector are both given this way.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::call::Outbound;

/// A resolved `http://host[:port][/path][?query]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` field: the URL's authority as given.
    pub host: String,
    /// Path and query, as given (`/` when the URL has none).
    pub target: String,
}

/// A parsed `http://host[:port][/path][?query]`, not resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// The URL's authority as given, for the `Host` field.
    pub authority: String,
    /// The host without its port (an IPv6 literal keeps its brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, as given (`/` when the URL has none).
    pub target: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path][?query]`; the error names the
    /// form wanted.
    pub fn parse(url: &str) -> Result<HttpUrl, &'static str> {
        // `get`, not indexing: a client's URL may put a multi-byte
        // character across byte 8.
        if url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            return Err("plain http:// only; put a local TLS proxy in front of an HTTPS server");
        }
        let rest = url
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
            .and_then(|_| url.get(7..))
            .ok_or("an http:// URL")?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') || target.contains('#') {
            return Err("an http://HOST[:PORT]/PATH URL without user info or fragment");
        }
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        if target.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("a URL whose path is printable ASCII (percent-encode the rest)");
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                let port = p
                    .parse()
                    .ok()
                    .filter(|_| p.bytes().all(|b| b.is_ascii_digit()));
                (h, port.ok_or("a port from 0 to 65535 after the host")?)
            }
            _ => (authority, 80),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let name_like = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if host.is_empty() || !(bracketed || name_like) {
            return Err("a host name or IP address before the port");
        }
        Ok(HttpUrl {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            target,
        })
    }

    /// The host as an IP address, when it is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
            .parse()
            .ok()
    }
}

impl Target {
    /// Parses `http://host[:port][/path][?query]` and resolves the host
    /// (start-up only).
    pub fn resolve(url: &str) -> Result<Target, &'static str> {
        let url = HttpUrl::parse(url)?;
        let addr = (
            url.host.trim_start_matches('[').trim_end_matches(']'),
            url.port,
        )
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or("a host that resolves")?;
        Ok(Target {
            addr,
            host: url.authority,
            target: url.target,
        })
    }

    /// A request to `path` on this URL's server (its own path set aside),
    /// for servers with several resources, such as etcd's gateway.
    pub fn request_to(
        &self,
        method: &str,
        path: &str,
        fields: &[(&str, &str)],
        body: &[u8],
    ) -> Outbound {
        Outbound::new(method, self.addr, &self.host, path, fields, body)
    }

    /// A request to this URL, encoded once (see [`Outbound::new`]).
    pub fn request(&self, method: &str, fields: &[(&str, &str)], body: &[u8]) -> Outbound {
        Outbound::new(method, self.addr, &self.host, &self.target, fields, body)
    }
}

/// The URL as given, for logs.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.host, self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_resolved() {
        let t = Target::resolve("http://127.0.0.1:9000/api/data?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.target.as_str()),
            ("127.0.0.1:9000", "/api/data?x=1")
        );
        assert_eq!(t.to_string(), "http://127.0.0.1:9000/api/data?x=1");
        let t = Target::resolve("http://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.target.as_str()), (80, "/"));
        let t = Target::resolve("HTTP://[::1]:81?q").unwrap();
        assert_eq!((t.addr.port(), t.target.as_str()), (81, "/?q"));
        let https = Target::resolve("https://127.0.0.1/").unwrap_err();
        assert!(https.contains("TLS proxy"));
        for bad in [
            "127.0.0.1:9000",
            "ftp://x/",
            "http://",
            "http://u@127.0.0.1/",
            "http://127.0.0.1/a b",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:/",
            "http://a b/",
            "https:/\u{e9}",
            "http:/\u{e9}x",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
            "http://\u{e9}/",
        ] {
            assert!(Target::resolve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_parse_without_resolving() {
        let url = HttpUrl::parse("http://Hooks.Example:8080/in?x=1").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.host.as_str(), url.port),
            ("Hooks.Example:8080", "Hooks.Example", 8080)
        );
        assert_eq!((url.target.as_str(), url.ip()), ("/in?x=1", None));
        let url = HttpUrl::parse("http://[::1]/").unwrap();
        assert_eq!((url.port, url.ip()), (80, Some("::1".parse().unwrap())));
        let url = HttpUrl::parse("http://10.0.0.7:81").unwrap();
        assert_eq!(url.ip(), Some("10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn requests_carry_the_host_and_path() {
        let t = Target::resolve("http://127.0.0.1:9411/api/v2/spans").unwrap();
        let post = t.request("POST", &[("Content-Type", "application/json")], b"[]");
        assert_eq!(post.addr(), t.addr);
        assert_eq!(
            &*post.bytes,
            b"POST /api/v2/spans HTTP/1.1\r\nHost: 127.0.0.1:9411\r\n\
              Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
        );
    }
}
