//! Who the client is behind a reverse proxy: the client address from the
//! `Forwarded` (RFC 7239) and `X-Forwarded-For` fields, sans-IO.
//!
//! It owns the fields' syntax and the choice of address; it does not own
//! which proxies are trusted (the caller passes that in as a predicate, see
//! `crate::access`) nor what the address is used for.
//!
//! # The rule
//! Only a trusted proxy's word counts. When the peer is not trusted, both
//! fields are ignored: anyone can send them. When it is, the fields are read
//! from the right (the hop nearest to us) and the first address that is not
//! itself a trusted proxy is the client: everything to its left was written
//! by that client or by proxies it chose, so it may be forged, while the
//! entries to its right were written by proxies the operator trusts. An entry
//! that is not an address (`unknown`, an obfuscated name, garbage) stops the
//! walk at the last trusted hop, which then counts as the client; a chain of
//! trusted proxies only names its leftmost one.
//!
//! When both fields are present they must name the same client. A proxy
//! that writes one of them passes the other through from the client
//! untouched, so a disagreement means one is forged; the request is then
//! charged to the proxy itself, a bucket all such requests share, so
//! forging gains nothing.
//!
//! Only the last line of each field is read (see `parse::Request`): nginx's
//! `$proxy_add_x_forwarded_for` extends the line it received, and proxies
//! that add a line of their own add it last, so the nearest proxy's entry is
//! always there.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Hops remembered from the right end of one field; a longer chain of
/// trusted proxies is cut short at the last one remembered, which then counts
/// as the client. Real chains have two or three hops.
const HOPS_MAX: usize = 16;

/// The address to treat as the client's, given the peer's address, the
/// request's last `Forwarded` and `X-Forwarded-For` lines, and which
/// addresses are trusted proxies. See "The rule" above.
pub fn client_address(
    peer: IpAddr,
    forwarded: Option<&[u8]>,
    x_forwarded_for: Option<&[u8]>,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let by_forwarded = forwarded.map(|v| rightmost_untrusted(peer, forwarded_for(v), &trusted));
    let by_xff =
        x_forwarded_for.map(|v| rightmost_untrusted(peer, x_forwarded_for_hops(v), &trusted));
    match (by_forwarded, by_xff) {
        (Some(a), Some(b)) if a != b => peer,
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => peer,
    }
}

/// The walk from the right over `hops` (left to right, as written; `None`
/// for an entry that is not an address).
fn rightmost_untrusted(
    peer: IpAddr,
    hops: impl Iterator<Item = Option<IpAddr>>,
    trusted: &impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let mut last = [None; HOPS_MAX];
    let mut count = 0usize;
    for hop in hops {
        last[count % HOPS_MAX] = hop;
        count += 1;
    }
    let mut client = peer;
    for back in 1..=count.min(HOPS_MAX) {
        match last[(count - back) % HOPS_MAX] {
            None => return client,
            Some(ip) if !trusted(ip) => return ip,
            Some(ip) => client = ip,
        }
    }
    client
}

/// `X-Forwarded-For: client, proxy1, proxy2`; empty entries are skipped.
fn x_forwarded_for_hops(value: &[u8]) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    value
        .split(|&b| b == b',')
        .map(super::trim_ows)
        .filter(|entry| !entry.is_empty())
        .map(node_address)
}

/// The `for=` node of each element of a `Forwarded` line. An element without
/// one is a hop that did not say, `None`; so is a syntax error, which also
/// ends the line (nothing to its left can be trusted to be split right).
fn forwarded_for(value: &[u8]) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let input = rest.take()?;
        match forwarded_element(input) {
            Some(element) => {
                rest = element.rest;
                Some(element.node.and_then(node_address))
            }
            None => Some(None),
        }
    })
}

/// One element of a `Forwarded` line.
struct Element<'a> {
    /// Its `for` value, if it has one.
    node: Option<&'a [u8]>,
    /// What follows the comma that ends it; `None` at the end of the line.
    rest: Option<&'a [u8]>,
}

/// Parses one element (`pair *( ";" pair )`) from the start of `input`;
/// `None` on a syntax error.
fn forwarded_element(input: &[u8]) -> Option<Element<'_>> {
    let mut rest = super::trim_ows(input);
    let mut node = None;
    loop {
        let name_len = rest.iter().position(|&b| matches!(b, b'=' | b';' | b','));
        let (name, after_name) = rest.split_at(name_len.unwrap_or(rest.len()));
        let name = super::trim_ows(name);
        rest = after_name;
        if let Some(after_eq) = rest.strip_prefix(b"=") {
            let (value, after_value) = forwarded_value(after_eq)?;
            if name.eq_ignore_ascii_case(b"for") {
                node = Some(value);
            }
            rest = super::trim_ows(after_value);
        } else if !name.is_empty() {
            return None; // a parameter without a value
        }
        match rest.split_first() {
            None => return Some(Element { node, rest: None }),
            Some((b',', after)) => {
                return Some(Element {
                    node,
                    rest: Some(after),
                });
            }
            Some((b';', after)) => rest = super::trim_ows(after),
            Some(_) => return None,
        }
    }
}

/// A token or a quoted string, and the bytes after it. A quoted string with
/// an escape is returned with its backslash, which no address contains, so
/// it reads as "not an address" rather than being unescaped.
fn forwarded_value(input: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(quoted) = input.strip_prefix(b"\"") {
        let mut i = 0;
        while let Some(&b) = quoted.get(i) {
            match b {
                b'"' => return Some((&quoted[..i], &quoted[i + 1..])),
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        return None; // unterminated
    }
    let end = input
        .iter()
        .position(|&b| matches!(b, b';' | b',' | b' ' | b'\t'))
        .unwrap_or(input.len());
    (end > 0).then(|| input.split_at(end))
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, or either
/// with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`). Anything else
/// (`unknown`, `_hidden`) is not an address.
fn node_address(node: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(node).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    // `[v6]` without a port.
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const PROXY2: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    /// 10.0.0.0/24 are the trusted proxies.
    fn trusted(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 0, 0])
    }

    fn resolve(peer: IpAddr, forwarded: Option<&str>, xff: Option<&str>) -> IpAddr {
        client_address(
            peer,
            forwarded.map(str::as_bytes),
            xff.map(str::as_bytes),
            trusted,
        )
    }

    #[test]
    fn x_forwarded_for_from_a_trusted_peer() {
        let client = v4(203, 0, 113, 5);
        let cases: &[(&str, IpAddr)] = &[
            ("203.0.113.5", client),
            // A client's forged entries sit left of the real one.
            ("1.2.3.4, 203.0.113.5", client),
            ("1.2.3.4, 5.6.7.8, 203.0.113.5", client),
            // Trusted hops on the right are skipped.
            ("203.0.113.5, 10.0.0.2", client),
            ("9.9.9.9, 203.0.113.5, 10.0.0.2, 10.0.0.3", client),
            // Ports, IPv6, spacing, empty entries.
            ("203.0.113.5:4711", client),
            ("  203.0.113.5 ,, ", client),
            ("[2001:db8::1]:80", "2001:db8::1".parse().unwrap()),
            ("2001:db8::1", "2001:db8::1".parse().unwrap()),
            ("[2001:db8::1]", "2001:db8::1".parse().unwrap()),
            // Not an address: stop at the last trusted hop.
            ("1.2.3.4, unknown", PROXY),
            ("1.2.3.4, unknown, 10.0.0.2", PROXY2),
            ("garbage", PROXY),
            ("", PROXY),
            // Only trusted hops: the leftmost.
            ("10.0.0.3, 10.0.0.2", v4(10, 0, 0, 3)),
        ];
        for &(xff, expected) in cases {
            assert_eq!(resolve(PROXY, None, Some(xff)), expected, "{xff:?}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        for (forwarded, xff) in [
            (None, Some("203.0.113.5")),
            (Some("for=203.0.113.5"), None),
            (Some("for=10.0.0.1"), Some("10.0.0.1")),
        ] {
            assert_eq!(resolve(STRANGER, forwarded, xff), STRANGER);
        }
        assert_eq!(resolve(PROXY, None, None), PROXY);
    }

    #[test]
    fn forwarded_from_a_trusted_peer() {
        let client = v4(192, 0, 2, 60);
        let v6: IpAddr = "2001:db8:cafe::17".parse().unwrap();
        let cases: &[(&str, IpAddr)] = &[
            ("for=192.0.2.60", client),
            ("For=192.0.2.60;proto=http;by=203.0.113.43", client),
            ("for=\"192.0.2.60:8080\"", client),
            ("for=\"[2001:db8:cafe::17]:4711\"", v6),
            ("for=\"[2001:db8:cafe::17]\"", v6),
            ("for=1.2.3.4, for=192.0.2.60", client),
            ("for=192.0.2.60, for=10.0.0.2;proto=https", client),
            ("for=192.0.2.60 , for=\"10.0.0.2\"", client),
            ("proto=https;for=192.0.2.60;host=\"a,b\"", client),
            // Not an address, or a hop that did not say: stop there.
            ("for=192.0.2.60, for=unknown", PROXY),
            ("for=192.0.2.60, for=_hidden", PROXY),
            ("for=192.0.2.60, proto=https", PROXY),
            ("for=\"1.2.3.4\\\"\"", PROXY),
            // Syntax errors count as "not an address".
            ("for=\"192.0.2.60", PROXY),
            ("for", PROXY),
            ("for=192.0.2.60 x", PROXY),
            ("for=", PROXY),
        ];
        for &(forwarded, expected) in cases {
            assert_eq!(
                resolve(PROXY, Some(forwarded), None),
                expected,
                "{forwarded:?}"
            );
        }
    }

    #[test]
    fn both_fields_must_agree() {
        let client = v4(203, 0, 113, 5);
        assert_eq!(
            resolve(PROXY, Some("for=203.0.113.5"), Some("203.0.113.5")),
            client
        );
        // One of them was forged by the client and passed through.
        assert_eq!(
            resolve(PROXY, Some("for=1.2.3.4"), Some("203.0.113.5")),
            PROXY
        );
    }

    #[test]
    fn a_long_trusted_chain_is_cut_at_the_last_hop_remembered() {
        let mut xff = String::from("203.0.113.5");
        for i in 0..HOPS_MAX {
            xff.push_str(&format!(", 10.0.0.{}", i + 10));
        }
        assert_eq!(resolve(PROXY, None, Some(&xff)), v4(10, 0, 0, 10));
        let short: String = xff
            .split(", ")
            .take(HOPS_MAX)
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(resolve(PROXY, None, Some(&short)), v4(203, 0, 113, 5));
    }

    /// The obvious slow walk: split the whole list, go right to left.
    fn naive_xff(peer: IpAddr, xff: &str) -> IpAddr {
        let mut client = peer;
        for entry in xff
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .rev()
        {
            match node_address(entry.as_bytes()) {
                None => return client,
                Some(ip) if !trusted(ip) => return ip,
                Some(ip) => client = ip,
            }
        }
        client
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_from_any_peer_never_panic(
            forwarded in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            xff in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            // Whatever a trusted proxy passes on, the walk ends without a panic.
            client_address(PROXY, Some(&forwarded), Some(&xff), trusted);
            let from_stranger = client_address(STRANGER, Some(&forwarded), Some(&xff), trusted);
            proptest::prop_assert_eq!(from_stranger, STRANGER);
        }

        #[test]
        fn x_forwarded_for_agrees_with_the_naive_walk(
            hops in proptest::collection::vec(
                proptest::sample::select(vec![
                    "10.0.0.2", "10.0.0.3", "203.0.113.5", "198.51.100.1", "unknown", "", " ",
                    "[2001:db8::1]:80", "10.0.0.9:1",
                ]),
                0..(HOPS_MAX - 1),
            )
        ) {
            let xff = hops.join(",");
            proptest::prop_assert_eq!(resolve(PROXY, None, Some(&xff)), naive_xff(PROXY, &xff));
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let samples: &[&[u8]] = &[
            b"\"",
            b"for=\"\\",
            b";;;,,,",
            b"for=\"[::1\"",
            b"\xff\xfe",
            b"=,=",
            b"for=\"\\\"",
        ];
        for &s in samples {
            let _ = client_address(PROXY, Some(s), Some(s), trusted);
        }
    }
}
