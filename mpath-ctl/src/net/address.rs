//! Interface addresses with their prefix lengths, as the configuration names them and
//! netlink reports them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;

/// An interface address with its prefix length, e.g. `192.0.2.19/24` or `2001:db8::19/64`
/// (host bits kept: the address matters, not only its network).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpCidr(IpNet);

impl IpCidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<IpCidr, CidrError> {
        IpNet::new(addr, prefix_len)
            .map(IpCidr)
            .map_err(|_too_long| CidrError::PrefixLenOutOfRange {
                prefix_len: prefix_len.to_string(),
                max: max_prefix_len(addr),
            })
    }

    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    pub(crate) fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// The address alone, as a host route would name it (/32 or /128).
    pub fn host(&self) -> IpCidr {
        IpCidr(IpNet::from(self.addr()))
    }

    /// The network this address is in: host bits cleared, same prefix length. A route's
    /// destination must equal its network, as the kernel refuses host bits in routes.
    pub fn network(&self) -> IpCidr {
        IpCidr(self.0.trunc())
    }

    /// Whether `addr` lies in this subnet (an address of the other family never does).
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }

    /// Whether the address belongs to one link and no other: not link-local, loopback or
    /// multicast. Only such addresses are a group's to move between NICs.
    pub fn is_global_unicast(&self) -> bool {
        match self.addr() {
            IpAddr::V4(a) => !(a.is_loopback() || a.is_link_local() || a.is_multicast()),
            IpAddr::V6(a) => !(a.is_loopback() || a.is_unicast_link_local() || a.is_multicast()),
        }
    }

    /// The last address of this network (IPv4's broadcast address).
    pub fn last_address(&self) -> IpAddr {
        self.0.broadcast()
    }

    /// The longest prefix of the address's family: 32 or 128.
    pub fn max_prefix_len(&self) -> u8 {
        self.0.max_prefix_len()
    }

    /// Whether this network contains all of `inner`.
    pub fn covers(&self, inner: IpCidr) -> bool {
        self.0.contains(&inner.0)
    }
}

fn max_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parsed here rather than by ipnet, whose one error says nothing of what is wrong: a
/// configuration error names the missing or bad part.
impl FromStr for IpCidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<IpCidr, CidrError> {
        let (addr_text, prefix_text) = text.split_once('/').ok_or(CidrError::MissingPrefixLen)?;
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_not_an_address| CidrError::BadAddress(addr_text.to_string()))?;
        let out_of_range = || CidrError::PrefixLenOutOfRange {
            prefix_len: prefix_text.to_string(),
            max: max_prefix_len(addr),
        };
        if prefix_text.is_empty() || !prefix_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(out_of_range());
        }
        let prefix_len = prefix_text
            .parse()
            .map_err(|_not_a_number| out_of_range())?;
        IpCidr::new(addr, prefix_len).map_err(|_too_long| out_of_range())
    }
}

/// An IPv4 interface address with prefix length: test addresses are IPv4 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr(Ipv4Net);

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Cidr, CidrError> {
        Ipv4Net::new(addr, prefix_len)
            .map(Ipv4Cidr)
            .map_err(|_too_long| CidrError::PrefixLenOutOfRange {
                prefix_len: prefix_len.to_string(),
                max: 32,
            })
    }

    #[cfg(test)]
    pub fn addr(&self) -> Ipv4Addr {
        self.0.addr()
    }
}

impl From<Ipv4Cidr> for IpCidr {
    fn from(cidr: Ipv4Cidr) -> IpCidr {
        IpCidr(IpNet::V4(cidr.0))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("missing prefix length: write ADDRESS/LENGTH, e.g. 192.0.2.19/24")]
    MissingPrefixLen,
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    BadAddress(String),
    #[error("bad prefix length {prefix_len:?}: must be 0 to {max}")]
    PrefixLenOutOfRange { prefix_len: String, max: u8 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> IpCidr {
        text.parse().unwrap()
    }

    fn v4cidr(text: &str) -> Ipv4Cidr {
        let IpAddr::V4(addr) = cidr(text).addr() else {
            panic!("{text} is not IPv4");
        };
        Ipv4Cidr::new(addr, cidr(text).prefix_len()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_round_trips_through_display() {
        for text in ["192.0.2.19/24", "2001:db8::19/64", "0.0.0.0/0", "::/128"] {
            assert_eq!(cidr(text).to_string(), text);
        }
        assert_eq!(v4cidr("192.0.2.21/24").to_string(), "192.0.2.21/24");
        assert_eq!(IpCidr::from(v4cidr("192.0.2.21/24")), cidr("192.0.2.21/24"));
        assert!(IpCidr::new(ip("2001:db8::1"), 129).is_err());
        assert!(Ipv4Cidr::new(Ipv4Addr::new(192, 0, 2, 1), 33).is_err());
    }

    #[test]
    fn only_addresses_of_no_one_link_are_global_unicast() {
        for (text, global) in [
            ("192.0.2.50/24", true),
            ("169.254.1.1/16", false),
            ("127.0.0.1/8", false),
            ("2001:db8::5/64", true),
            ("fe80::1/64", false),
            ("ff02::1/128", false),
        ] {
            assert_eq!(cidr(text).is_global_unicast(), global, "{text}");
        }
    }

    #[test]
    fn containment() {
        assert!(cidr("0.0.0.0/0").covers(cidr("198.51.100.0/24")));
        assert!(cidr("198.51.100.0/24").covers(cidr("198.51.100.128/25")));
        assert!(!cidr("198.51.100.128/25").covers(cidr("198.51.100.0/24")));
        assert!(!cidr("0.0.0.0/0").covers(cidr("::/0")));
        assert!(cidr("2001:db8::20/64").contains("2001:db8::1".parse().unwrap()));
        assert!(!cidr("2001:db8::20/64").contains("2001:db8:1::1".parse().unwrap()));
        assert!(!cidr("0.0.0.0/0").contains("::1".parse().unwrap()));
    }

    #[test]
    fn network_clears_host_bits() {
        for (text, network) in [
            ("198.51.100.7/24", "198.51.100.0/24"),
            ("198.51.100.0/24", "198.51.100.0/24"),
            ("192.0.2.255/25", "192.0.2.128/25"),
            ("192.0.2.7/32", "192.0.2.7/32"),
            ("192.0.2.7/0", "0.0.0.0/0"),
            ("2001:db8::19/64", "2001:db8::/64"),
            ("2001:db8::19/128", "2001:db8::19/128"),
            ("2001:db8::19/0", "::/0"),
        ] {
            assert_eq!(cidr(text).network(), cidr(network), "{text}");
        }
    }
}
