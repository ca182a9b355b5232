//! Where a client may make fibd send a request (`--callback-allow`): without
//! this list, a task's `callback_url` could turn fibd against the hosts
//! behind it (its metadata service, an admin port on loopback). Entries are
//! address ranges (`10.0.0.0/8`, `127.0.0.1`) or `HOST[:PORT]` names,
//! resolved once at start-up; a URL is admitted by its literal address or
//! by an allowed name, never by a DNS lookup on the loop (which would also
//! let a name re-point at a forbidden address after the check).

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::cidr::{Cidr, canonical};
use crate::net::upstream::HttpUrl;

/// One allowed name and what it resolved to at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AllowedHost {
    /// Lowercase, without brackets.
    name: String,
    /// Only this port, when the entry gave one.
    port: Option<u16>,
    addrs: Vec<IpAddr>,
}

/// The allow-list; empty unless the operator set one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    ranges: Vec<Cidr>,
    hosts: Vec<AllowedHost>,
}

/// An entry that is neither a range nor a name that resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry {
    pub entry: String,
    pub reason: &'static str,
}

/// Why a URL is not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAllowed {
    /// The server has no allow-list: it sends nowhere on a client's word.
    NoList,
    /// The URL's host is in none of the entries.
    Host,
}

impl Destinations {
    /// Parses and resolves the entries (start-up only: names are looked up).
    pub fn resolve(entries: &[String]) -> Result<Destinations, BadEntry> {
        let mut list = Destinations::default();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Some(range) = Cidr::parse(entry) {
                list.ranges.push(range);
                continue;
            }
            let bad = |reason| BadEntry {
                entry: entry.to_owned(),
                reason,
            };
            let url = HttpUrl::parse(&format!("http://{entry}/"))
                .ok()
                .filter(|url| url.target == "/")
                .ok_or(bad(
                    "an address range (127.0.0.1, 10.0.0.0/8) or HOST[:PORT]",
                ))?;
            let given_port = url.authority.len() > url.host.len();
            let bare = url.host.trim_start_matches('[').trim_end_matches(']');
            let addrs: Vec<IpAddr> = (bare, url.port)
                .to_socket_addrs()
                .map_err(|_| bad("a host name that resolves (it is looked up once, at start-up)"))?
                .map(|addr| canonical(addr.ip()))
                .collect();
            list.hosts.push(AllowedHost {
                name: bare.to_ascii_lowercase(),
                port: given_port.then_some(url.port),
                addrs,
            });
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.hosts.is_empty()
    }

    /// Where `url` goes, if the list admits it: a literal address inside a
    /// range, or equal to an address an allowed name resolved to; a name
    /// equal (ignoring case) to an allowed one. An entry's port, when it
    /// has one, must match.
    pub fn admit(&self, url: &HttpUrl) -> Result<SocketAddr, NotAllowed> {
        if self.is_empty() {
            return Err(NotAllowed::NoList);
        }
        let port_fits = |host: &AllowedHost| host.port.is_none_or(|p| p == url.port);
        if let Some(ip) = url.ip() {
            let ip = canonical(ip);
            let in_range = self.ranges.iter().any(|r| r.contains(ip));
            let named = self
                .hosts
                .iter()
                .any(|h| port_fits(h) && h.addrs.contains(&ip));
            return (in_range || named)
                .then_some(SocketAddr::new(ip, url.port))
                .ok_or(NotAllowed::Host);
        }
        self.hosts
            .iter()
            .filter(|h| port_fits(h) && h.name.eq_ignore_ascii_case(&url.host))
            .find_map(|h| h.addrs.first())
            .map(|&ip| SocketAddr::new(ip, url.port))
            .ok_or(NotAllowed::Host)
    }
}

/// The entries, for the start-up log.
impl fmt::Display for Destinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = self.ranges.iter().map(ToString::to_string);
        let hosts = self.hosts.iter().map(|host| match host.port {
            Some(port) => format!("{}:{port}", host.name),
            None => host.name.clone(),
        });
        f.write_str(&ranges.chain(hosts).collect::<Vec<_>>().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(list: &Destinations, url: &str) -> Result<SocketAddr, NotAllowed> {
        list.admit(&HttpUrl::parse(url).unwrap())
    }

    #[test]
    fn ranges_admit_literal_addresses_on_any_port() {
        let list = Destinations::resolve(&["127.0.0.1".into(), " 10.0.0.0/8 ".into()]).unwrap();
        assert_eq!(
            admit(&list, "http://127.0.0.1:9000/h"),
            Ok("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            admit(&list, "http://10.2.3.4/"),
            Ok("10.2.3.4:80".parse().unwrap())
        );
        assert_eq!(
            admit(&list, "http://[::ffff:10.0.0.1]:81/"),
            Ok("10.0.0.1:81".parse().unwrap())
        );
        for refused in [
            "http://127.0.0.2/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
        ] {
            assert_eq!(admit(&list, refused), Err(NotAllowed::Host), "{refused}");
        }
        assert_eq!(
            admit(&list, "http://localhost:9000/"),
            Err(NotAllowed::Host),
            "a name is never looked up on a client's word"
        );
        assert_eq!(list.to_string(), "127.0.0.1/32, 10.0.0.0/8");
    }

    #[test]
    fn names_admit_themselves_and_their_start_up_addresses_with_their_port() {
        let list = Destinations::resolve(&["LocalHost:9000".into()]).unwrap();
        let to = admit(&list, "http://localhost:9000/hook").unwrap();
        assert!(to.ip().is_loopback() && to.port() == 9000);
        assert_eq!(
            admit(&list, "http://localhost:9001/"),
            Err(NotAllowed::Host)
        );
        assert!(
            admit(&list, "http://127.0.0.1:9000/").is_ok()
                || admit(&list, "http://[::1]:9000/").is_ok()
        );
        assert_eq!(
            admit(&list, "http://127.0.0.1:9001/"),
            Err(NotAllowed::Host)
        );
    }

    #[test]
    fn no_list_admits_nothing_and_bad_entries_are_named() {
        let none = Destinations::default();
        assert_eq!(admit(&none, "http://127.0.0.1/"), Err(NotAllowed::NoList));
        let error = Destinations::resolve(&["http://x/".into()]).unwrap_err();
        assert_eq!(error.entry, "http://x/");
        assert!(Destinations::resolve(&["no-such-host.invalid".into()]).is_err());
    }
}
