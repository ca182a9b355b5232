//! Address ranges (`10.0.0.0/8`, `::1/128`, or a bare address) for
//! `--trusted-proxy`.

use std::fmt;
use std::net::IpAddr;

/// One address range. IPv4-mapped IPv6 addresses count as IPv4 on both sides,
/// so a dual-stack listener's peers match the IPv4 ranges they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// `ADDR/LEN`, or a bare `ADDR` for one host. Bits below the prefix must
    /// be zero: `10.0.0.1/8` is more likely a typo than a wish.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix_len) = match text.trim().split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text.trim(), None),
        };
        let network = canonical(addr.parse().ok()?);
        let bits = address_bits(network);
        let prefix_len = match prefix_len {
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse::<u8>().ok().filter(|&l| l <= bits)?
            }
            Some(_) => return None,
            None => bits,
        };
        let cidr = Cidr {
            network,
            prefix_len,
        };
        (to_bits(network) & !cidr.mask() == 0).then_some(cidr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && to_bits(ip) & self.mask() == to_bits(self.network)
    }

    /// Prefix bits set, counted within the address family's width.
    fn mask(&self) -> u128 {
        let bits = u32::from(address_bits(self.network));
        let host_bits = bits - u32::from(self.prefix_len);
        let family = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        family & !(u128::MAX.checked_shr(128 - host_bits).unwrap_or(0))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn address_bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn membership() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "10.0.0.0/8",
                &["10.0.0.1", "10.255.255.255", "::ffff:10.1.2.3"],
                &["11.0.0.0", "9.255.255.255", "::a00:1"],
            ),
            ("127.0.0.1", &["127.0.0.1"], &["127.0.0.2", "::1"]),
            ("0.0.0.0/0", &["1.2.3.4", "255.255.255.255"], &["::1"]),
            ("::1", &["::1"], &["::2", "127.0.0.1"]),
            (
                "2001:db8::/32",
                &["2001:db8::1", "2001:db8:ffff::"],
                &["2001:db9::", "10.0.0.1"],
            ),
            ("::/0", &["::", "ffff::1"], &["1.2.3.4"]),
            ("192.0.2.128/25", &["192.0.2.200"], &["192.0.2.127"]),
        ];
        for &(range, inside, outside) in cases {
            let cidr = Cidr::parse(range).unwrap_or_else(|| panic!("{range}"));
            for &a in inside {
                assert!(cidr.contains(ip(a)), "{a} in {range}");
            }
            for &a in outside {
                assert!(!cidr.contains(ip(a)), "{a} not in {range}");
            }
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "::1/129",
            "localhost",
            "10.0.0/8",
            "2001:db8::1/32",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            Cidr::parse(" 10.0.0.0/8 ")
                .map(|c| c.to_string())
                .as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            Cidr::parse("::ffff:10.0.0.0/104")
                .map(|c| c.to_string())
                .as_deref(),
            None,
            "a mapped range is given in IPv4 terms"
        );
    }
}
