//! Source address selection for inbound load spreading: which data addresses the source hook
//! may give a socket, and for which destinations (see `mpath_common::sources`).
//!
//! Through a gateway the kernel gives each IPv4 nexthop its NIC's data address, so IPv4 flows
//! through gateways already use every NIC's address (see [`crate::core::routes`]). On-link it
//! gives every IPv4 connection the route's preferred source, and for IPv6 it takes the source
//! of a route through a nexthop group from the group's first member, whichever NIC the flow
//! leaves: all such connections would share one data address and all replies would arrive on
//! one NIC. The hook spreads the choice per destination over the group's placed data
//! addresses, for exactly those destinations.
//!
//! This module decides the hook's tables from the route [`Plan`] and the groups' addresses;
//! it does no IO.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use mpath_common::sources::{MAX_SOURCES, SourceClass, spreadable};

use crate::{
    core::routes::{GroupKey, Plan, TableRoute, Via},
    net::address::IpCidr,
};

/// Every destination of mpathd's table as `plan` has it: the group whose route the hook
/// serves, or `None` where the table throws the lookup on to `main` or, for IPv4, sends it
/// through gateways (whose nexthops give each NIC's flows its own address).
pub(crate) fn routes(plan: &Plan) -> BTreeMap<IpCidr, Option<String>> {
    plan.routes
        .iter()
        .map(|((destination, _), route)| (*destination, group_of(*destination, route)))
        .collect()
}

/// The group whose route to `destination` the hook serves, as in [`routes`].
pub(crate) fn group_of(destination: IpCidr, route: &TableRoute<GroupKey>) -> Option<String> {
    match &route.via {
        Via::Group(key) if destination.addr().is_ipv6() || key.gateways.is_empty() => {
            Some(key.group.clone())
        }
        Via::Group(_) | Via::Throw => None,
    }
}

/// The prefixes of one family's table (`prefixes`) that a trie holding at most `capacity`
/// leaves to the kernel: none while all fit. A destination whose prefix is left out must find no prefix
/// holding it in the trie either, or the hook would give it the source of a route that does
/// not serve it; so the most specific prefixes stay, the first `capacity` of them, and a
/// prefix never stays without every prefix of the table inside it (which are longer).
pub(crate) fn left_out(prefixes: &[IpCidr], capacity: usize) -> BTreeSet<IpCidr> {
    if prefixes.len() <= capacity {
        return BTreeSet::new();
    }
    let mut by_length = prefixes.to_vec();
    by_length.sort_by_key(|prefix| Reverse(prefix.prefix_len()));
    by_length.split_off(capacity).into_iter().collect()
}

/// The networks that hold `prefix`, longest first: a trie that cannot hold `prefix` must not
/// hold them either (see [`left_out`]).
pub(crate) fn holders(prefix: IpCidr) -> impl Iterator<Item = IpCidr> {
    (0..prefix.prefix_len())
        .rev()
        .filter_map(move |len| IpCidr::new(prefix.addr(), len).ok())
        .map(|holder| holder.network())
}

/// A group's sources by class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sources {
    /// Sorted, so that a destination keeps its source whatever order the addresses were
    /// placed in.
    pub by_class: BTreeMap<SourceClass, Vec<IpCidr>>,
    /// More placed addresses of a class than the hook holds: those past the first
    /// [`MAX_SOURCES`] are never chosen.
    pub overflowing: bool,
}

impl Sources {
    pub(crate) fn of(&self, class: SourceClass) -> &[IpCidr] {
        self.by_class.get(&class).map_or(&[], Vec::as_slice)
    }
}

/// A group's sources: its data addresses that are on a NIC now (`placed`), by class, with
/// their prefixes (an on-link destination gets an address whose subnet holds it).
pub(crate) fn sources(addresses: impl IntoIterator<Item = (IpCidr, bool)>) -> Sources {
    let placed: BTreeSet<IpCidr> = addresses
        .into_iter()
        .filter(|(cidr, placed)| {
            *placed
                && match cidr.addr() {
                    IpAddr::V4(a) => mpath_common::sources::spreadable4(&a.octets()),
                    IpAddr::V6(a) => spreadable(&a.octets()),
                }
        })
        .map(|(cidr, _)| cidr)
        .collect();
    let mut sources = Sources::default();
    for cidr in placed {
        sources
            .by_class
            .entry(SourceClass::of_source(cidr.addr()))
            .or_default()
            .push(cidr);
    }
    for set in sources.by_class.values_mut() {
        if set.len() > MAX_SOURCES {
            set.truncate(MAX_SOURCES);
            sources.overflowing = true;
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::routes::{self, GroupRouting, Hop, MainRoute};
    use smallvec::smallvec;

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    fn main_route(destination: &str, oif: u32, gateway: Option<&str>) -> MainRoute {
        MainRoute {
            destination: cidr(destination),
            metric: 1024,
            tos: 0,
            plain: true,
            prefsrc: None,
            hops: smallvec![Hop {
                oif,
                gateway: gateway.map(|g| g.parse().unwrap()),
            }],
        }
    }

    fn addresses(list: &[(&str, bool)]) -> Vec<(IpCidr, bool)> {
        list.iter().map(|(a, placed)| (cidr(a), *placed)).collect()
    }

    fn strings(addrs: &[IpCidr]) -> Vec<String> {
        addrs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_hook_serves_the_group_s_ipv6_and_on_link_ipv4_destinations_and_throws_main_s_ones() {
        let main = [
            main_route("::/0", 2, Some("fe80::1")),
            main_route("2001:db8::/64", 2, None),
            main_route("2001:db8:5::/64", 9, None),
            main_route("0.0.0.0/0", 2, Some("192.0.2.1")),
            main_route("192.0.2.0/24", 2, None),
            main_route("192.0.2.128/25", 9, None),
        ];
        let groups = [GroupRouting {
            name: "g0".into(),
            members: vec![2, 3],
            serving: vec![2, 3],
            addresses: vec![
                (cidr("2001:db8::19/64"), Some(2)),
                (cidr("192.0.2.19/24"), Some(2)),
                (cidr("192.0.2.20/24"), Some(3)),
            ],
            configured: Vec::new(),
        }];
        let expected: BTreeMap<IpCidr, Option<String>> = [
            (cidr("::/0"), Some("g0".to_string())),
            (cidr("2001:db8::/64"), Some("g0".to_string())),
            // The management NIC's network lies inside the group's default route: the
            // table throws it to main, and so does the hook.
            (cidr("2001:db8:5::/64"), None),
            // Through the gateway each nexthop has its NIC's own address: the kernel's.
            (cidr("0.0.0.0/0"), None),
            // On-link the route names one source: the hook's.
            (cidr("192.0.2.0/24"), Some("g0".to_string())),
            (cidr("192.0.2.128/25"), None),
        ]
        .into();
        assert_eq!(routes(&routes::plan(&main, &groups)), expected);
    }

    #[test]
    fn sources_are_the_placed_data_addresses_sorted_by_class() {
        let sources = sources(addresses(&[
            ("2001:db8::20/64", true),
            ("192.0.2.19/24", true),
            ("2001:db8::19/64", true),
            // On no NIC now: not a source until it is placed again.
            ("2001:db8::21/64", false),
            ("fd00::19/64", true),
        ]));
        assert_eq!(
            strings(sources.of(SourceClass::Global)),
            ["2001:db8::19/64", "2001:db8::20/64"]
        );
        assert_eq!(
            strings(sources.of(SourceClass::UniqueLocal)),
            ["fd00::19/64"]
        );
        assert_eq!(strings(sources.of(SourceClass::Ipv4)), ["192.0.2.19/24"]);
        assert!(!sources.overflowing);
    }

    #[test]
    fn a_group_without_placed_addresses_offers_none_and_too_many_are_cut() {
        assert_eq!(
            sources(addresses(&[("192.0.2.19/24", false)])),
            Sources::default()
        );

        let many: Vec<(IpCidr, bool)> = (1..=MAX_SOURCES + 2)
            .map(|i| (cidr(&format!("2001:db8::{i:x}/64")), true))
            .collect();
        let sources = sources(many);
        assert_eq!(sources.of(SourceClass::Global).len(), MAX_SOURCES);
        assert!(sources.overflowing);
    }

    #[test]
    fn a_trie_too_small_keeps_the_most_specific_prefixes_and_never_one_holding_a_left_out_one() {
        // In the table's order, by address.
        let routes = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.2.0.0/16",
            "172.16.0.0/24",
            "172.16.1.0/24",
        ]
        .map(cidr);
        assert!(left_out(&routes, 7).is_empty());
        assert!(left_out(&routes, 100).is_empty());
        let strings =
            |set: BTreeSet<IpCidr>| set.iter().map(ToString::to_string).collect::<Vec<_>>();
        // Of the two /16s the first in address order stays: 10.2.0.0/16 goes, and with it
        // 10.0.0.0/8 and the default route, which hold it.
        assert_eq!(
            strings(left_out(&routes, 4)),
            ["0.0.0.0/0", "10.0.0.0/8", "10.2.0.0/16"]
        );
        for capacity in 0..routes.len() {
            let out = left_out(&routes, capacity);
            assert_eq!(out.len(), routes.len() - capacity);
            for kept in routes.iter().filter(|p| !out.contains(p)) {
                assert!(
                    out.iter().all(|gone| !kept.covers(*gone)),
                    "{kept} stays over a left-out prefix (capacity {capacity})"
                );
            }
        }
    }

    #[test]
    fn the_holders_of_a_prefix_are_its_networks_of_every_shorter_length() {
        let strings: Vec<String> = holders(cidr("10.1.2.0/24"))
            .map(|h| h.to_string())
            .collect();
        assert_eq!(strings.len(), 24);
        assert_eq!(strings[..3], ["10.1.2.0/23", "10.1.0.0/22", "10.1.0.0/21"]);
        assert_eq!(strings[23], "0.0.0.0/0");
        assert_eq!(holders(cidr("::/0")).count(), 0);
        assert_eq!(
            holders(cidr("2001:db8::/33")).next(),
            Some(cidr("2001:db8::/32"))
        );
    }
}
