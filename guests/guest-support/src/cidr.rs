//! IPv4 prefixes in their text form, "10.0.1.0/24".

use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 address with a prefix length, as written ("10.0.1.0/24"). The
/// address may have host bits set (a NIC's "10.0.1.5/24"); see
/// [`Cidr::network`] and [`Cidr::is_network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses "a.b.c.d/n" with n in 0..=32. The error says what is wrong
    /// with `text`, for a reason a person reads.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let Some((addr, len)) = text.split_once('/') else {
            return Err(format!("{text:?} is not an IPv4 prefix (a.b.c.d/n)"));
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| {
            format!("{text:?} is not an IPv4 prefix: {addr:?} is not an IPv4 address")
        })?;
        // `u8::from_str` accepts a leading '+'; a prefix length is digits only.
        let prefix_len = match len.parse::<u8>() {
            Ok(n) if n <= 32 && len.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "{text:?} is not an IPv4 prefix: the length {len:?} is not 0 to 32"
                ));
            }
        };
        Ok(Cidr { addr, prefix_len })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        // checked_shl: a shift by 32 (prefix 0) would overflow.
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The prefix's first address ("10.0.1.0" for "10.0.1.5/24").
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The prefix's last address ("10.0.1.255" for "10.0.1.0/24").
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether the address has no host bits set, as a route destination
    /// must (the kernel refuses "10.0.0.1/8" as a route).
    pub fn is_network(&self) -> bool {
        self.addr == self.network()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_the_usual_form() {
        let c = Cidr::parse("10.0.1.0/24").unwrap();
        assert_eq!(c.addr(), ip("10.0.1.0"));
        assert_eq!(c.prefix_len(), 24);
        assert_eq!(c.to_string(), "10.0.1.0/24");
    }

    #[test]
    fn refuses_what_is_not_an_ipv4_prefix() {
        for bad in [
            "",
            "10.0.1.0",
            "10.0.1.0/",
            "10.0.1.0/33",
            "10.0.1.0/+8",
            "10.0.1.0/-1",
            "10.0.1/24",
            "fd00::/64",
            "10.0.1.0/24/1",
            " 10.0.1.0/24",
        ] {
            let err = Cidr::parse(bad).unwrap_err();
            assert!(err.contains("is not an IPv4 prefix"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn membership_network_and_broadcast() {
        let c = Cidr::parse("10.0.1.0/24").unwrap();
        assert!(c.contains(ip("10.0.1.0")));
        assert!(c.contains(ip("10.0.1.255")));
        assert!(!c.contains(ip("10.0.2.0")));
        assert!(!c.contains(ip("10.0.0.255")));
        assert_eq!(c.network(), ip("10.0.1.0"));
        assert_eq!(c.broadcast(), ip("10.0.1.255"));
        assert!(c.is_network());
        assert!(!Cidr::parse("10.0.1.5/24").unwrap().is_network());
    }

    #[test]
    fn the_edges_of_the_prefix_length() {
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(all.is_network());
        assert!(!Cidr::parse("10.0.0.0/0").unwrap().is_network());
        let one = Cidr::parse("10.0.1.7/32").unwrap();
        assert!(one.contains(ip("10.0.1.7")));
        assert!(!one.contains(ip("10.0.1.6")));
        assert_eq!(one.network(), one.broadcast());
    }
}
