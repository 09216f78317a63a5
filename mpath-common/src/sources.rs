//! Source address selection, for IPMP's inbound load spreading. The kernel takes the IPv6
//! source of a route through a nexthop group from the group's first member, and the IPv4
//! source of an on-link route from the route's preferred source: every such connection would
//! use one data address and all replies would come back on one NIC. The source hook (cgroup
//! `connect4`/`connect6` and `sendmsg4`/`sendmsg6`) instead picks, per destination, one of
//! the data addresses of the group whose route serves the destination. (IPv4 through a
//! gateway needs no hook: the kernel gives each nexthop its own NIC's data address.)
//!
//! mpathd mirrors its routing table into `SOURCE_ROUTES` and `SOURCE_ROUTES4` (longest-prefix-
//! match tries): a route the hook serves names its group, every other one (a `throw`, an IPv4
//! route through gateways) [`NO_GROUP`], so that a trie answers a lookup exactly as the table
//! does. `SOURCES` holds each group's placed data addresses, one set per [`SourceClass`];
//! IPv4 addresses are kept in their IPv4-mapped IPv6 form (`::ffff:a.b.c.d`).

use core::net::{IpAddr, Ipv6Addr};

use crate::{MAX_GROUPS, flow_hash};

/// Data addresses of one group and class the hook chooses from.
pub const MAX_SOURCES: usize = 16;
/// Prefixes of mpathd's table each trie (IPv4, IPv6) holds: far more than a host's routes.
/// The limit costs nothing until used, as the kernel allocates an LPM trie's nodes as entries
/// come (it refuses to preallocate one): a prefix takes a node of 64 bytes with its key and
/// value, and the trie at most one more such intermediate node per prefix, so at most 128 MiB
/// for a full map, charged to mpathd's memory cgroup. Past the limit the kernel picks the
/// sources of what does not fit, and mpathd says so.
pub const MAX_SOURCE_ROUTES: u32 = 1 << 20;
/// [`SourceRoute::group`] of a destination the hook leaves to the kernel (a `throw` route, an
/// IPv4 route through gateways).
pub const NO_GROUP: u32 = u32::MAX;

/// What mpathd's table does with a destination. Key: the destination prefix (an LPM trie
/// key of the 16 or 4 address bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRoute {
    /// The group id whose route serves the prefix, or [`NO_GROUP`].
    pub group: u32,
}

impl SourceRoute {
    pub const fn new(group: Option<u32>) -> Self {
        SourceRoute {
            group: match group {
                Some(g) => g,
                None => NO_GROUP,
            },
        }
    }

    /// The group serving the prefix; `None` for a destination the hook leaves to the kernel.
    pub const fn group(&self) -> Option<u32> {
        if self.group == NO_GROUP {
            None
        } else {
            Some(self.group)
        }
    }
}

/// The bits before an IPv4 address in its IPv4-mapped IPv6 form.
const IPV4_MAPPED_BITS: u8 = 96;

/// Which of a group's addresses may be the source for a destination: IPv4 ones for IPv4;
/// for IPv6, unique local addresses (fc00::/7) for unique local destinations and global ones
/// for the rest, as the kernel's own choice prefers an address of the destination's kind
/// (RFC 6724, rule 6).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceClass {
    Global = 0,
    UniqueLocal = 1,
    Ipv4 = 2,
}

impl SourceClass {
    pub const COUNT: u32 = 3;
    pub const ALL: [SourceClass; 3] = [
        SourceClass::Global,
        SourceClass::UniqueLocal,
        SourceClass::Ipv4,
    ];

    /// The class of an IPv6 destination.
    #[inline(always)]
    pub const fn of(addr: &[u8; 16]) -> SourceClass {
        if addr[0] & 0xfe == 0xfc {
            SourceClass::UniqueLocal
        } else {
            SourceClass::Global
        }
    }

    /// The class of a source address.
    pub const fn of_source(addr: IpAddr) -> SourceClass {
        match addr {
            IpAddr::V4(_) => SourceClass::Ipv4,
            IpAddr::V6(a) => SourceClass::of(&a.octets()),
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            SourceClass::Global => "global",
            SourceClass::UniqueLocal => "unique-local",
            SourceClass::Ipv4 => "ipv4",
        }
    }
}

/// Index of a group's set of `class` in `SOURCES`.
#[inline(always)]
pub const fn set_index(group: u32, class: SourceClass) -> u32 {
    group * SourceClass::COUNT + class as u32
}

/// Entries of `SOURCES`.
pub const SOURCE_SETS: u32 = MAX_GROUPS * SourceClass::COUNT;

/// The addresses one group offers as sources to destinations of one class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSet {
    pub count: u32,
    pub addrs: [[u8; 16]; MAX_SOURCES],
    /// Each address's prefix length, in bits of the 16-byte form: its subnet.
    pub prefix_bits: [u8; MAX_SOURCES],
}

impl SourceSet {
    /// The set of `addrs`, each with its prefix length; `None` when there are more than
    /// [`MAX_SOURCES`].
    pub fn new(addrs: &[(IpAddr, u8)]) -> Option<SourceSet> {
        if addrs.len() > MAX_SOURCES {
            return None;
        }
        let mut set = SourceSet {
            count: addrs.len() as u32,
            ..Default::default()
        };
        for (i, (addr, prefix_len)) in addrs.iter().enumerate() {
            (set.addrs[i], set.prefix_bits[i]) = match addr {
                IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), IPV4_MAPPED_BITS + *prefix_len),
                IpAddr::V6(a) => (a.octets(), *prefix_len),
            };
        }
        Some(set)
    }

    /// The addresses, IPv4 ones in their own form (an IPv6 set never holds IPv4-mapped ones:
    /// see [`spreadable`]).
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().take(self.count as usize).map(|a| {
            let a = Ipv6Addr::from(*a);
            match a.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(a),
            }
        })
    }

    /// The source for `dst` (16-byte form), among the addresses whose own subnet holds it
    /// when `on_link` (as the kernel picks a source for an on-link destination), else among
    /// all: the same for every connection to it.
    #[inline(always)]
    pub fn pick(&self, dst: &[u8; 16], on_link: bool) -> Option<[u8; 16]> {
        let dst_words = words(dst);
        let eligible = |i: usize| {
            if !on_link {
                return true;
            }
            let (addr_words, mask) = (words(&self.addrs[i]), subnet_mask(self.prefix_bits[i]));
            let mut same = true;
            let mut w = 0;
            while w < 4 {
                same &= (addr_words[w] ^ dst_words[w]) & mask[w] == 0;
                w += 1;
            }
            same
        };
        // Loops over the constant bound, as the verifier can follow them.
        let mut count = 0u32;
        for i in 0..MAX_SOURCES {
            if i as u32 >= self.count {
                break;
            }
            count += eligible(i) as u32;
        }
        if count == 0 {
            return None;
        }
        let mut nth = flow_hash::destination(dst) % count;
        for i in 0..MAX_SOURCES {
            if i as u32 >= self.count {
                break;
            }
            if eligible(i) {
                if nth == 0 {
                    return Some(self.addrs[i]);
                }
                nth -= 1;
            }
        }
        None
    }
}

/// The 16 bytes as big-endian words, the first bit of the address first.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut w = 0;
    while w < 4 {
        words[w] = u32::from_be_bytes([
            addr[4 * w],
            addr[4 * w + 1],
            addr[4 * w + 2],
            addr[4 * w + 3],
        ]);
        w += 1;
    }
    words
}

/// The mask of the first `bits` bits, as the words of [`words`].
#[inline(always)]
const fn subnet_mask(bits: u8) -> [u32; 4] {
    let bits = bits as u32;
    let mut mask = [0u32; 4];
    let mut w = 0;
    while w < 4 {
        let before = 32 * w as u32;
        mask[w] = if bits >= before + 32 {
            u32::MAX
        } else if bits <= before {
            0
        } else {
            u32::MAX << (32 - (bits - before))
        };
        w += 1;
    }
    mask
}

/// The 16-byte form of an IPv4 address, as [`SourceSet`] holds it.
#[inline(always)]
pub const fn ipv4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Whether an IPv4 destination may get a source from the hook: never 0.0.0.0/8, loopback,
/// link-local, multicast or the limited broadcast, which no group route serves.
#[inline(always)]
pub const fn spreadable4(dst: &[u8; 4]) -> bool {
    !(dst[0] == 0 || dst[0] == 127 || (dst[0] == 169 && dst[1] == 254) || dst[0] >= 224)
}

/// What the hook did in one group, per CPU. Index: group id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCounters {
    /// Sockets given a source.
    pub chosen: u64,
    /// Sources the kernel refused to bind (an address in the middle of a move): the kernel
    /// chose these sockets' sources itself.
    pub bind_failed: u64,
}

/// Whether a destination may get a source from the hook at all: never the unspecified,
/// loopback, IPv4-mapped, link-local or multicast ones, which no group route serves.
#[inline(always)]
pub const fn spreadable(dst: &[u8; 16]) -> bool {
    let multicast = dst[0] == 0xff;
    let link_local = dst[0] == 0xfe && dst[1] & 0xc0 == 0x80;
    let mut zero_prefix = true;
    let mut i = 0;
    while i < 10 {
        zero_prefix &= dst[i] == 0;
        i += 1;
    }
    // ::/80 holds the unspecified and loopback addresses, ::ffff:0:0/96 the IPv4-mapped ones.
    !(multicast || link_local || zero_prefix)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, vec::Vec};

    use super::*;

    fn octets(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn only_unicast_beyond_the_link_is_spreadable() {
        for no in [
            "::",
            "::1",
            "::ffff:192.0.2.1",
            "fe80::1",
            "febf::1",
            "ff02::1",
        ] {
            assert!(!spreadable(&octets(no)), "{no}");
        }
        for yes in ["2001:db8::1", "fc00::1", "fec0::1", "64:ff9b::c000:201"] {
            assert!(spreadable(&octets(yes)), "{yes}");
        }
    }

    #[test]
    fn unique_local_destinations_have_their_own_class() {
        assert_eq!(
            SourceClass::of(&octets("fd00::1")),
            SourceClass::UniqueLocal
        );
        assert_eq!(
            SourceClass::of(&octets("fc00::1")),
            SourceClass::UniqueLocal
        );
        assert_eq!(SourceClass::of(&octets("2001:db8::1")), SourceClass::Global);
        assert_eq!(set_index(3, SourceClass::UniqueLocal), 10);
        assert_eq!(
            SourceClass::of_source("192.0.2.1".parse().unwrap()),
            SourceClass::Ipv4
        );
        assert_eq!(
            set_index(MAX_GROUPS - 1, SourceClass::Ipv4),
            SOURCE_SETS - 1
        );
    }

    #[test]
    fn a_destination_keeps_its_source_and_destinations_spread_evenly() {
        let sources: [IpAddr; 3] = [
            "2001:db8::19".parse().unwrap(),
            "2001:db8::20".parse().unwrap(),
            "2001:db8::21".parse().unwrap(),
        ];
        let set = SourceSet::new(&sources.map(|a| (a, 64))).unwrap();
        assert_eq!(set.addresses().collect::<Vec<_>>(), sources);
        let mut per_source = [0u32; 3];
        for host in 0..3000u32 {
            let dst = octets(&format!(
                "2001:db8:ff::{:x}:{:x}",
                host >> 16,
                host & 0xffff
            ));
            // Through a gateway: any of the set, whatever its subnet.
            let picked = set.pick(&dst, false).unwrap();
            assert_eq!(set.pick(&dst, false), Some(picked));
            let picked = IpAddr::V6(picked.into());
            let i = sources.iter().position(|s| *s == picked).unwrap();
            per_source[i] += 1;
        }
        for n in per_source {
            assert!((n as i32 - 1000).abs() < 100, "{per_source:?}");
        }
    }

    #[test]
    fn an_empty_set_picks_nothing_and_a_set_holds_at_most_max_sources() {
        assert_eq!(
            SourceSet::default().pick(&octets("2001:db8::1"), false),
            None
        );
        let many = [(IpAddr::V6(Ipv6Addr::LOCALHOST), 128); MAX_SOURCES + 1];
        assert!(SourceSet::new(&many[..MAX_SOURCES]).is_some());
        assert!(SourceSet::new(&many).is_none());
    }

    #[test]
    fn an_on_link_destination_gets_a_source_whose_subnet_holds_it_and_keeps_it() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let sources = [
            (v4("192.0.2.19"), 24),
            (v4("203.0.113.7"), 24),
            (v4("192.0.2.20"), 24),
            (v4("192.0.2.21"), 24),
            // A /32 holds only itself.
            (v4("198.51.100.9"), 32),
        ];
        let set = SourceSet::new(&sources).unwrap();
        assert_eq!(set.addresses().collect::<Vec<_>>(), sources.map(|(a, _)| a));
        let mut per_source = [0u32; 5];
        for host in 0..=255u8 {
            let dst = ipv4_mapped([192, 0, 2, host]);
            let picked = set.pick(&dst, true).unwrap();
            assert_eq!(set.pick(&dst, true), Some(picked));
            let i = set.addrs.iter().position(|a| *a == picked).unwrap();
            per_source[i] += 1;
        }
        // Never an address of another subnet; the three of this one about evenly.
        assert_eq!((per_source[1], per_source[4]), (0, 0), "{per_source:?}");
        for n in [per_source[0], per_source[2], per_source[3]] {
            assert!((n as i32 - 85).abs() < 30, "{per_source:?}");
        }
        // A subnet no address is on: the kernel's choice.
        assert_eq!(set.pick(&ipv4_mapped([198, 51, 100, 1]), true), None);
        let lone = ipv4_mapped([198, 51, 100, 9]);
        assert_eq!(set.pick(&lone, true), Some(lone));
    }

    #[test]
    fn only_unicast_ipv4_beyond_the_host_is_spreadable() {
        for no in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [169, 254, 1, 1],
            [224, 0, 0, 1],
            [239, 1, 1, 1],
            [255, 255, 255, 255],
        ] {
            assert!(!spreadable4(&no), "{no:?}");
        }
        for yes in [[192, 0, 2, 1], [10, 0, 0, 1], [198, 51, 100, 255]] {
            assert!(spreadable4(&yes), "{yes:?}");
        }
    }

    #[test]
    fn a_throw_route_names_no_group() {
        assert_eq!(SourceRoute::new(None).group(), None);
        assert_eq!(SourceRoute::new(Some(0)).group(), Some(0));
        assert_eq!(size_of::<SourceRoute>(), 4);
        assert_eq!(size_of::<SourceSet>(), 4 + 17 * MAX_SOURCES);
        assert_eq!(size_of::<SourceCounters>(), 16);
    }
}
