//! IPv6 source address selection, for IPMP's inbound load spreading: the kernel takes the
//! IPv6 source of a route through a nexthop group from the group's first member, so every
//! connection would use one data address and all replies would come back on one NIC. The
//! source hook (cgroup `connect6` and `sendmsg6`) instead picks, per destination, one of the
//! data addresses of the group whose route serves the destination.
//!
//! mpathd mirrors its routing table into `SOURCE_ROUTES` (a longest-prefix-match trie): a
//! group route names its group, a `throw` route [`NO_GROUP`], so that the trie answers a
//! lookup exactly as the table does. `SOURCES` holds each group's placed IPv6 data addresses,
//! one set per [`SourceClass`].

use core::net::Ipv6Addr;

use crate::{MAX_GROUPS, flow_hash};

/// Data addresses of one group and class the hook chooses from.
pub const MAX_SOURCES: usize = 16;
/// Prefixes of mpathd's IPv6 table the trie holds: far more than a host's routes.
pub const MAX_SOURCE_ROUTES: u32 = 16 * 1024;
/// [`SourceRoute::group`] of a destination that is not a group's (a `throw` route).
pub const NO_GROUP: u32 = u32::MAX;

/// What mpathd's table does with a destination. Key: the destination prefix (an LPM trie
/// key of the 16 address bytes).
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

    /// The group serving the prefix; `None` for a destination that goes on to `main`.
    pub const fn group(&self) -> Option<u32> {
        if self.group == NO_GROUP {
            None
        } else {
            Some(self.group)
        }
    }
}

/// Which of a group's addresses may be the source for a destination: unique local addresses
/// (fc00::/7) for unique local destinations, global ones for the rest, as the kernel's own
/// choice prefers an address of the destination's kind (RFC 6724, rule 6).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceClass {
    Global = 0,
    UniqueLocal = 1,
}

impl SourceClass {
    pub const COUNT: u32 = 2;
    pub const ALL: [SourceClass; 2] = [SourceClass::Global, SourceClass::UniqueLocal];

    #[inline(always)]
    pub const fn of(addr: &[u8; 16]) -> SourceClass {
        if addr[0] & 0xfe == 0xfc {
            SourceClass::UniqueLocal
        } else {
            SourceClass::Global
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            SourceClass::Global => "global",
            SourceClass::UniqueLocal => "unique-local",
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
}

impl SourceSet {
    /// The set of `addrs`; `None` when there are more than [`MAX_SOURCES`].
    pub fn new(addrs: &[Ipv6Addr]) -> Option<SourceSet> {
        if addrs.len() > MAX_SOURCES {
            return None;
        }
        let mut set = SourceSet {
            count: addrs.len() as u32,
            ..Default::default()
        };
        for (slot, addr) in set.addrs.iter_mut().zip(addrs) {
            *slot = addr.octets();
        }
        Some(set)
    }

    pub fn addresses(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.addrs
            .iter()
            .take(self.count as usize)
            .map(|a| Ipv6Addr::from(*a))
    }

    /// The source for `dst`: the same for every connection to it.
    #[inline(always)]
    pub fn pick(&self, dst: &[u8; 16]) -> Option<[u8; 16]> {
        if self.count == 0 {
            return None;
        }
        let i = flow_hash::destination(dst) % self.count;
        self.addrs.get(i as usize).copied()
    }
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
        assert_eq!(set_index(3, SourceClass::UniqueLocal), 7);
        assert_eq!(
            set_index(MAX_GROUPS - 1, SourceClass::UniqueLocal),
            SOURCE_SETS - 1
        );
    }

    #[test]
    fn a_destination_keeps_its_source_and_destinations_spread_evenly() {
        let sources: [Ipv6Addr; 3] = [
            "2001:db8::19".parse().unwrap(),
            "2001:db8::20".parse().unwrap(),
            "2001:db8::21".parse().unwrap(),
        ];
        let set = SourceSet::new(&sources).unwrap();
        assert_eq!(set.addresses().collect::<Vec<_>>(), sources);
        let mut per_source = [0u32; 3];
        for host in 0..3000u32 {
            let dst = octets(&format!(
                "2001:db8:ff::{:x}:{:x}",
                host >> 16,
                host & 0xffff
            ));
            let picked = set.pick(&dst).unwrap();
            assert_eq!(set.pick(&dst), Some(picked));
            let i = sources.iter().position(|s| s.octets() == picked).unwrap();
            per_source[i] += 1;
        }
        for n in per_source {
            assert!((n as i32 - 1000).abs() < 100, "{per_source:?}");
        }
    }

    #[test]
    fn an_empty_set_picks_nothing_and_a_set_holds_at_most_max_sources() {
        assert_eq!(SourceSet::default().pick(&octets("2001:db8::1")), None);
        let many = [Ipv6Addr::LOCALHOST; MAX_SOURCES + 1];
        assert!(SourceSet::new(&many[..MAX_SOURCES]).is_some());
        assert!(SourceSet::new(&many).is_none());
    }

    #[test]
    fn a_throw_route_names_no_group() {
        assert_eq!(SourceRoute::new(None).group(), None);
        assert_eq!(SourceRoute::new(Some(0)).group(), Some(0));
        assert_eq!(size_of::<SourceSet>(), 4 + 16 * MAX_SOURCES);
        assert_eq!(size_of::<SourceCounters>(), 16);
    }
}
