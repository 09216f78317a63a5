//! Reconciling what the kernel shows with what the groups hold: which copies of an address to
//! remove, which addresses a group adopts, restores or forgets, what an earlier mpathd's
//! decisions were, and what a group that goes takes along. In IPMP every address of a NIC
//! but its test address belongs to the group and fails over; anything else the host shows is
//! someone else's or a leftover.
//!
//! Pure: the daemon describes its groups as [`Holdings`], asks, and carries out the answer.
//! Kernel events can be late (mpathd's own moves are reported after later ones), so every
//! verdict about one address is confirmed against the kernel before the daemon acts on it.

use std::{collections::BTreeSet, net::IpAddr};

use crate::{
    config::GroupConfig,
    core::failover::DataAddress,
    core::identity::{GroupId, NicSlot},
    core::routes::{Hop, MainRoute},
    net::address::IpCidr,
};

/// A NIC of a group, as far as its addresses are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub slot: NicSlot,
    pub name: String,
    /// While the NIC exists.
    pub ifindex: Option<u32>,
    pub test_address: Option<IpCidr>,
    /// Whether the NIC runs probes: only then can a failure have been decided by them.
    pub probes: bool,
}

/// What a group holds: its members and its data addresses, configured and adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings {
    pub id: GroupId,
    pub group: String,
    pub members: Vec<Member>,
    pub addresses: Vec<DataAddress>,
    /// Which of `addresses` the group adopted from a NIC rather than from the configuration.
    pub adopted: BTreeSet<IpCidr>,
}

impl Holdings {
    fn member_at(&self, ifindex: u32) -> Option<&Member> {
        self.members.iter().find(|m| m.ifindex == Some(ifindex))
    }

    fn member(&self, slot: NicSlot) -> Option<&Member> {
        self.members.iter().find(|m| m.slot == slot)
    }

    /// The NIC an address is placed on, while it exists.
    fn placed_ifindex(&self, address: &DataAddress) -> Option<u32> {
        self.member(address.current?)?.ifindex
    }

    /// Whether `addr` is one of the group's data or test addresses, whatever its prefix.
    fn knows(&self, addr: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.cidr.addr() == addr)
            || self
                .members
                .iter()
                .any(|m| m.test_address.is_some_and(|t| t.addr() == addr))
    }
}

/// What to do about an address that appeared on a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Nothing: mpathd's own copy, or an address of no concern to any group.
    Nothing,
    /// A copy on `nic` of a data address that lives on `placed_on`: two NICs answering for
    /// one address confuse the peers, so this copy goes.
    RemoveCopy { nic: String, placed_on: String },
    /// A data address that had no place (its NIC vanished with nowhere to move it) showed up
    /// on `nic` of group `group`: it is placed there, then placed as usual.
    PlaceHere { group: GroupId, nic: NicSlot },
    /// An address no group knows on `nic` of group `group`: when someone other than
    /// mpathd or the kernel put it there, the group adopts it as a data address of that NIC.
    Adopt { group: GroupId, nic: NicSlot },
}

/// What to do about `cidr` that appeared on `ifindex`; the same address with another prefix
/// length is the same address.
pub fn added(groups: &[Holdings], ifindex: u32, cidr: IpCidr) -> Added {
    let Some(group) = groups
        .iter()
        .find(|g| g.addresses.iter().any(|a| a.cidr.addr() == cidr.addr()))
    else {
        return adoptable(groups, &[(ifindex, cidr)])
            .into_iter()
            .next()
            .map_or(Added::Nothing, |a| Added::Adopt {
                group: a.group,
                nic: a.nic,
            });
    };
    let Some(nic) = group.member_at(ifindex) else {
        return Added::Nothing;
    };
    let Some(data) = group
        .addresses
        .iter()
        .find(|a| a.cidr.addr() == cidr.addr())
    else {
        return Added::Nothing;
    };
    match data.current {
        Some(placed) if placed == nic.slot && data.cidr == cidr => Added::Nothing,
        Some(placed) => Added::RemoveCopy {
            nic: nic.name.clone(),
            placed_on: group
                .member(placed)
                .map_or_else(String::new, |m| m.name.clone()),
        },
        // With another prefix length it stays a stray copy until the address is placed.
        None if data.cidr != cidr => Added::Nothing,
        None => Added::PlaceHere {
            group: group.id,
            nic: nic.slot,
        },
    }
}

/// What to do about an address that vanished from a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Nothing,
    /// A configured data address was removed from `nic`, where mpathd had placed it: it goes
    /// back where the placement wants it.
    Restore {
        group: GroupId,
        nic: NicSlot,
    },
    /// An adopted address was removed by someone: it was theirs to remove, the group forgets
    /// it.
    Forget {
        group: GroupId,
    },
    /// The test address of `nic` was removed: it is put back, or the NIC's probes would fail
    /// for a reason that is not the NIC's.
    RestoreTest {
        nic: String,
        test: IpCidr,
    },
}

/// What to do about `cidr` that vanished from `ifindex`.
pub fn removed(groups: &[Holdings], ifindex: u32, cidr: IpCidr) -> Removed {
    for group in groups {
        let placed_here = group
            .addresses
            .iter()
            .find(|a| a.cidr == cidr && group.placed_ifindex(a) == Some(ifindex));
        if let Some(placed) = placed_here {
            return match placed.current {
                _ if group.adopted.contains(&cidr) => Removed::Forget { group: group.id },
                Some(nic) => Removed::Restore {
                    group: group.id,
                    nic,
                },
                None => Removed::Nothing,
            };
        }
        let test_of = group.members.iter().find(|m| {
            m.ifindex == Some(ifindex) && m.test_address.is_some_and(|t| t.addr() == cidr.addr())
        });
        if let Some(member) = test_of
            && let Some(test) = member.test_address
        {
            return Removed::RestoreTest {
                nic: member.name.clone(),
                test,
            };
        }
    }
    Removed::Nothing
}

/// An address the group `group` adopts from `nic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Adoption {
    pub group: GroupId,
    pub nic: NicSlot,
    pub cidr: IpCidr,
}

/// Which of the addresses someone else put on NICs (`others`: not mpathd's, not the
/// kernel's) the groups adopt: those on a group NIC that are neither data nor test addresses
/// of any group. Each address is adopted once, by the group of the NIC it was found on.
pub(crate) fn adoptable(groups: &[Holdings], others: &[(u32, IpCidr)]) -> Vec<Adoption> {
    let mut adoptions: Vec<Adoption> = Vec::new();
    for (ifindex, cidr) in others {
        // A link's own addresses (link-local, say) never move to another NIC.
        if !cidr.is_global_unicast() {
            continue;
        }
        let known = groups.iter().any(|g| g.knows(cidr.addr()))
            || adoptions.iter().any(|a| a.cidr.addr() == cidr.addr());
        if known {
            continue;
        }
        let owner = groups.iter().find_map(|g| {
            let member = g.member_at(*ifindex)?;
            Some(Adoption {
                group: g.id,
                nic: member.slot,
                cidr: *cidr,
            })
        });
        adoptions.extend(owner);
    }
    adoptions
}

/// Where the kernel holds each of the group's data addresses (in the order of
/// `holdings.addresses`): the first member, in configuration order, that has it.
pub(crate) fn placements(holdings: &Holdings, kernel: &[(u32, IpCidr)]) -> Vec<Option<NicSlot>> {
    holdings
        .addresses
        .iter()
        .map(|address| {
            holdings
                .members
                .iter()
                .filter_map(|m| m.ifindex.map(|i| (i, m.slot)))
                .find(|(ifindex, _)| kernel.contains(&(*ifindex, address.cidr)))
                .map(|(_, slot)| slot)
        })
        .collect()
}

/// Copies of a group's data addresses found on NICs other than the one they are placed on,
/// or with another prefix length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Copies {
    /// On a group NIC, or put anywhere by mpathd (left by a daemon killed in the middle of a
    /// move, or on a NIC that left the group): they are removed.
    pub remove: Vec<(u32, IpCidr)>,
    /// Someone else's, on a NIC in no group (a management NIC, say): mpathd never touches a
    /// NIC outside its groups, where deleting an address can take the kernel's secondary
    /// addresses of its subnet along and cut the path an administrator is logged in through.
    pub outside: Vec<(u32, IpCidr)>,
}

/// The copies of `holdings`' data addresses that are not where they are placed; `group_nics`
/// are the ifindexes of every group's NICs, `mpathds` the addresses mpathd marked as its own.
pub(crate) fn extra_copies(
    holdings: &Holdings,
    kernel: &[(u32, IpCidr)],
    group_nics: &BTreeSet<u32>,
    mpathds: &[(u32, IpCidr)],
) -> Copies {
    let mut copies = Copies::default();
    for a in &holdings.addresses {
        let Some(placed) = holdings.placed_ifindex(a) else {
            continue;
        };
        for copy in kernel.iter().filter(|(ifindex, cidr)| {
            cidr.addr() == a.cidr.addr() && (*ifindex != placed || *cidr != a.cidr)
        }) {
            if group_nics.contains(&copy.0) || mpathds.contains(copy) {
                copies.remove.push(*copy);
            } else {
                copies.outside.push(*copy);
            }
        }
    }
    copies
}

/// Addresses an earlier mpathd put on NICs (`mpathds`) that no group names now (a data
/// address taken out of the file, the test address of a NIC that left the configuration
/// while mpathd was stopped): they are removed, so that a restart converges to the state a
/// reload reaches.
pub(crate) fn unconfigured(groups: &[Holdings], mpathds: &[(u32, IpCidr)]) -> Vec<(u32, IpCidr)> {
    mpathds
        .iter()
        .filter(|(_, cidr)| !groups.iter().any(|g| g.knows(cidr.addr())))
        .copied()
        .collect()
}

/// An earlier mpathd's failure found on the host: `address`, whose home is `nic`, sits on
/// `on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundFailure {
    pub nic: NicSlot,
    pub address: IpCidr,
    pub on: NicSlot,
}

/// What the host shows of an earlier mpathd's failures: a probing NIC whose data addresses
/// sit on another NIC of the group had been failed by its probes (a link failure shows in
/// the link state). Each such NIC is adopted as failed, so that a restart neither fails back
/// nor loses traffic. Only with FAILBACK on: with it off, addresses away from home are normal.
pub(crate) fn found_failures(holdings: &Holdings) -> Vec<FoundFailure> {
    holdings
        .members
        .iter()
        .filter(|m| m.probes)
        .filter_map(|m| {
            let away = holdings
                .addresses
                .iter()
                .find(|a| a.home == m.slot && a.current.is_some_and(|c| c != m.slot))?;
            Some(FoundFailure {
                nic: m.slot,
                address: away.cidr,
                on: away.current?,
            })
        })
        .collect()
}

/// What a group runtime that goes (removed from the configuration, or rebuilt by a reload)
/// takes down of what it set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Retirement {
    /// Test addresses the new configuration no longer has, by ifindex.
    pub test_addresses: Vec<(u32, IpCidr)>,
    /// NICs that leave the group: the datapath goes from them.
    pub leaving: Vec<(String, u32)>,
    /// Data addresses the new configuration no longer has, where they sit.
    pub data_addresses: Vec<(u32, IpCidr)>,
    /// The group is gone: its bucket table and id go too.
    pub group_goes: bool,
}

/// What `old` takes down when the new configuration has `kept` for it (`None`: the group
/// is gone). Addresses the group adopted stay with whoever put them there.
pub(crate) fn retire(old: &Holdings, kept: Option<&GroupConfig>) -> Retirement {
    let kept_interface = |nic: &str| kept.and_then(|g| g.interface(nic));
    let mut retirement = Retirement {
        group_goes: kept.is_none(),
        ..Default::default()
    };
    for m in &old.members {
        let Some(ifindex) = m.ifindex else { continue };
        let test_kept = kept_interface(&m.name)
            .is_some_and(|i| i.test_address.map(IpCidr::from) == m.test_address);
        if let Some(test) = m.test_address.filter(|_| !test_kept) {
            retirement.test_addresses.push((ifindex, test));
        }
        if kept_interface(&m.name).is_none() {
            retirement.leaving.push((m.name.clone(), ifindex));
        }
    }
    let still_configured = |cidr: &IpCidr| {
        kept.is_some_and(|g| g.interfaces.iter().any(|i| i.data_addresses.contains(cidr)))
    };
    for a in old.addresses.iter().filter(|a| !still_configured(&a.cidr)) {
        if old.adopted.contains(&a.cidr) {
            continue;
        }
        if let Some(ifindex) = old.placed_ifindex(a) {
            retirement.data_addresses.push((ifindex, a.cidr));
        }
    }
    retirement
}

/// `rtm_protocol` of the routes the kernel makes itself (RTPROT_KERNEL).
pub const KERNEL_PROTOCOL: u8 = 2;

/// The NIC and the data address whose prefix route `route` was, when `route` (deleted from
/// main) is the route the kernel made with a data address placed on that NIC (`proto kernel`,
/// on-link through the NIC; IPv4's with the address as its source). NetworkManager deletes
/// such routes at `nmcli device reapply`, the routes it listed before mpathd put the address
/// back, and the prefix then no longer leaves through that NIC. Whether the address is still
/// there is for the kernel to say: IPv6 announces an address only after the route made with
/// it (from its DAD work), so mpathd's view of the addresses lags behind the route's deletion.
pub fn prefix_route_lost(
    groups: &[Holdings],
    route: &MainRoute,
    protocol: u8,
) -> Option<(u32, IpCidr)> {
    let [Hop { oif, gateway: None }] = route.hops.as_slice() else {
        return None;
    };
    if protocol != KERNEL_PROTOCOL {
        return None;
    }
    groups
        .iter()
        .flat_map(|g| {
            g.addresses
                .iter()
                .filter(move |a| g.placed_ifindex(a) == Some(*oif))
        })
        .map(|a| a.cidr)
        .find(|cidr| {
            cidr.network() == route.destination
                && route.prefsrc.is_none_or(|source| source == cidr.addr())
        })
        .map(|cidr| (*oif, cidr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InterfaceConfig;
    use crate::core::identity::test_slot as slot;

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    fn member(name: &str, ifindex: u32, test: Option<&str>) -> Member {
        Member {
            slot: slot(name),
            name: name.into(),
            ifindex: Some(ifindex),
            test_address: test.map(cidr),
            probes: test.is_some(),
        }
    }

    fn address(c: &str, home: &str, current: Option<&str>) -> DataAddress {
        DataAddress {
            cidr: cidr(c),
            home: slot(home),
            current: current.map(slot),
        }
    }

    /// Group a (id 3, first in the lists: verdicts name groups by id, not by place): h0
    /// (ifindex 10, test .10) holds .20, h1 (11, test .11) holds .21.
    fn group_a() -> Holdings {
        Holdings {
            id: GroupId(3),
            group: "a".into(),
            members: vec![
                member("h0", 10, Some("192.0.2.10/32")),
                member("h1", 11, Some("192.0.2.11/32")),
            ],
            addresses: vec![
                address("192.0.2.20/24", "h0", Some("h0")),
                address("192.0.2.21/24", "h1", Some("h1")),
            ],
            adopted: BTreeSet::new(),
        }
    }

    /// Group b: g0 (ifindex 20) holds 198.51.100.20, no probing.
    fn group_b() -> Holdings {
        Holdings {
            id: GroupId(0),
            group: "b".into(),
            members: vec![member("g0", 20, None)],
            addresses: vec![address("198.51.100.20/24", "g0", Some("g0"))],
            adopted: BTreeSet::new(),
        }
    }

    #[test]
    fn the_placed_copy_is_no_news() {
        let groups = [group_a(), group_b()];
        assert_eq!(added(&groups, 10, cidr("192.0.2.20/24")), Added::Nothing);
    }

    #[test]
    fn a_copy_on_another_nic_or_with_another_prefix_is_removed() {
        let groups = [group_a(), group_b()];
        let remove = |nic: &str| Added::RemoveCopy {
            nic: nic.into(),
            placed_on: "h0".into(),
        };
        assert_eq!(added(&groups, 11, cidr("192.0.2.20/24")), remove("h1"));
        assert_eq!(added(&groups, 11, cidr("192.0.2.20/25")), remove("h1"));
        assert_eq!(added(&groups, 10, cidr("192.0.2.20/25")), remove("h0"));
    }

    #[test]
    fn a_data_address_on_a_nic_of_another_group_or_outside_groups_is_left_alone() {
        let groups = [group_a(), group_b()];
        assert_eq!(added(&groups, 20, cidr("192.0.2.20/24")), Added::Nothing);
        assert_eq!(added(&groups, 99, cidr("192.0.2.20/24")), Added::Nothing);
    }

    #[test]
    fn an_unplaced_data_address_is_placed_where_it_appears_with_its_own_prefix() {
        let mut a = group_a();
        a.addresses[0].current = None;
        let groups = [a, group_b()];
        assert_eq!(
            added(&groups, 11, cidr("192.0.2.20/24")),
            Added::PlaceHere {
                group: GroupId(3),
                nic: slot("h1")
            }
        );
        assert_eq!(added(&groups, 11, cidr("192.0.2.20/25")), Added::Nothing);
    }

    #[test]
    fn an_unknown_address_on_a_group_nic_is_adopted_by_that_nics_group() {
        let groups = [group_a(), group_b()];
        assert_eq!(
            added(&groups, 20, cidr("198.51.100.50/24")),
            Added::Adopt {
                group: GroupId(0),
                nic: slot("g0")
            }
        );
        assert_eq!(added(&groups, 99, cidr("198.51.100.50/24")), Added::Nothing);
        // A test address is the group's, whatever its prefix.
        assert_eq!(added(&groups, 10, cidr("192.0.2.10/24")), Added::Nothing);
    }

    #[test]
    fn a_removed_data_address_is_restored_and_an_adopted_one_forgotten() {
        let mut b = group_b();
        b.adopted.insert(cidr("198.51.100.20/24"));
        let groups = [group_a(), b];
        assert_eq!(
            removed(&groups, 10, cidr("192.0.2.20/24")),
            Removed::Restore {
                group: GroupId(3),
                nic: slot("h0")
            }
        );
        assert_eq!(
            removed(&groups, 20, cidr("198.51.100.20/24")),
            Removed::Forget { group: GroupId(0) }
        );
    }

    #[test]
    fn removing_a_copy_mpathd_did_not_place_changes_nothing() {
        let groups = [group_a(), group_b()];
        // The copy on the old NIC of a move, or with another prefix.
        assert_eq!(
            removed(&groups, 11, cidr("192.0.2.20/24")),
            Removed::Nothing
        );
        assert_eq!(
            removed(&groups, 10, cidr("192.0.2.20/25")),
            Removed::Nothing
        );
    }

    #[test]
    fn a_removed_test_address_is_restored_on_its_nic_only() {
        let groups = [group_a(), group_b()];
        assert_eq!(
            removed(&groups, 11, cidr("192.0.2.11/32")),
            Removed::RestoreTest {
                nic: "h1".into(),
                test: cidr("192.0.2.11/32")
            }
        );
        assert_eq!(
            removed(&groups, 10, cidr("192.0.2.11/32")),
            Removed::Nothing
        );
    }

    #[test]
    fn adoption_takes_each_unknown_address_once_and_skips_known_ones() {
        let groups = [group_a(), group_b()];
        let found = [
            (10, cidr("192.0.2.50/24")),
            (11, cidr("192.0.2.50/25")),
            (10, cidr("192.0.2.21/24")),
            (11, cidr("192.0.2.10/24")),
            (10, cidr("169.254.7.7/16")),
            (11, cidr("fe80::7/64")),
            (99, cidr("192.0.2.51/24")),
            (20, cidr("198.51.100.50/24")),
        ];
        assert_eq!(
            adoptable(&groups, &found),
            vec![
                Adoption {
                    group: GroupId(3),
                    nic: slot("h0"),
                    cidr: cidr("192.0.2.50/24")
                },
                Adoption {
                    group: GroupId(0),
                    nic: slot("g0"),
                    cidr: cidr("198.51.100.50/24")
                },
            ]
        );
    }

    #[test]
    fn placements_follow_the_kernel_in_configuration_order() {
        let a = group_a();
        let kernel = [
            (11, cidr("192.0.2.20/24")),
            (10, cidr("192.0.2.20/24")),
            (11, cidr("192.0.2.21/25")),
        ];
        assert_eq!(placements(&a, &kernel), vec![Some(slot("h0")), None]);
    }

    #[test]
    fn extra_copies_are_those_off_the_placed_nic_or_prefix() {
        let mut a = group_a();
        a.addresses[1].current = None;
        let kernel = [
            (10, cidr("192.0.2.20/24")),
            (11, cidr("192.0.2.20/24")),
            (10, cidr("192.0.2.20/25")),
            // Unplaced: nothing to compare with.
            (10, cidr("192.0.2.21/24")),
            (11, cidr("192.0.2.21/24")),
        ];
        assert_eq!(
            extra_copies(&a, &kernel, &[10, 11].into(), &[]).remove,
            vec![(11, cidr("192.0.2.20/24")), (10, cidr("192.0.2.20/25"))]
        );
    }

    /// Issue 24: a copy on a management NIC (in no group) was removed, and the kernel took
    /// that NIC's secondary address along.
    #[test]
    fn a_copy_on_a_nic_outside_the_groups_is_left_alone_unless_mpathd_put_it_there() {
        let a = group_a();
        let kernel = [
            (10, cidr("192.0.2.20/24")),
            (8, cidr("192.0.2.20/24")),
            (9, cidr("192.0.2.20/24")),
        ];
        let copies = extra_copies(&a, &kernel, &[10, 11].into(), &[(9, cidr("192.0.2.20/24"))]);
        assert_eq!(copies.remove, vec![(9, cidr("192.0.2.20/24"))]);
        assert_eq!(copies.outside, vec![(8, cidr("192.0.2.20/24"))]);
    }

    #[test]
    fn unconfigured_addresses_are_mpathds_that_no_group_names() {
        let groups = [group_a(), group_b()];
        let mpathds = [
            (10, cidr("192.0.2.20/24")),
            (10, cidr("192.0.2.10/32")),
            (10, cidr("192.0.2.30/24")),
            (12, cidr("192.0.2.12/32")),
        ];
        assert_eq!(
            unconfigured(&groups, &mpathds),
            vec![(10, cidr("192.0.2.30/24")), (12, cidr("192.0.2.12/32"))]
        );
    }

    #[test]
    fn a_probing_nic_whose_address_is_away_was_failed_by_its_probes() {
        let mut a = group_a();
        a.addresses[0].current = Some(slot("h1"));
        assert_eq!(
            found_failures(&a),
            vec![FoundFailure {
                nic: slot("h0"),
                address: cidr("192.0.2.20/24"),
                on: slot("h1")
            }]
        );
        // Without probes a failure shows in the link state, and an unplaced address says
        // nothing.
        a.members[0].probes = false;
        assert!(found_failures(&a).is_empty());
        a.members[0].probes = true;
        a.addresses[0].current = None;
        assert!(found_failures(&a).is_empty());
    }

    fn config_of(holdings: &Holdings) -> GroupConfig {
        GroupConfig {
            name: holdings.group.clone(),
            targets: Vec::new(),
            interfaces: holdings
                .members
                .iter()
                .map(|m| InterfaceConfig {
                    name: m.name.clone(),
                    test_address: m.test_address.map(|t| match t.addr() {
                        IpAddr::V4(a) => crate::net::address::Ipv4Cidr::new(a, 32).unwrap(),
                        IpAddr::V6(_) => unreachable!(),
                    }),
                    data_addresses: holdings
                        .addresses
                        .iter()
                        .filter(|a| a.home == m.slot)
                        .map(|a| a.cidr)
                        .collect(),
                    standby: false,
                })
                .collect(),
            spread: Default::default(),
            routes: Vec::new(),
            probe_rx: Default::default(),
        }
    }

    #[test]
    fn an_unchanged_group_takes_nothing_down() {
        let a = group_a();
        let kept = config_of(&a);
        assert_eq!(retire(&a, Some(&kept)), Retirement::default());
    }

    #[test]
    fn a_removed_group_takes_everything_it_set_up_but_adopted_addresses() {
        let mut a = group_a();
        a.addresses.push(address("192.0.2.50/24", "h1", Some("h1")));
        a.adopted.insert(cidr("192.0.2.50/24"));
        a.members.push(Member {
            ifindex: None,
            ..member("h2", 12, Some("192.0.2.12/32"))
        });
        assert_eq!(
            retire(&a, None),
            Retirement {
                test_addresses: vec![(10, cidr("192.0.2.10/32")), (11, cidr("192.0.2.11/32"))],
                leaving: vec![("h0".into(), 10), ("h1".into(), 11)],
                data_addresses: vec![(10, cidr("192.0.2.20/24")), (11, cidr("192.0.2.21/24"))],
                group_goes: true,
            }
        );
    }

    #[test]
    fn a_changed_group_takes_what_the_new_configuration_dropped() {
        let a = group_a();
        let mut kept = config_of(&a);
        // h1 leaves (with its address), h0 gets another test address.
        kept.interfaces.truncate(1);
        kept.interfaces[0].test_address =
            Some(crate::net::address::Ipv4Cidr::new([192, 0, 2, 9].into(), 32).unwrap());
        assert_eq!(
            retire(&a, Some(&kept)),
            Retirement {
                test_addresses: vec![(10, cidr("192.0.2.10/32")), (11, cidr("192.0.2.11/32"))],
                leaving: vec![("h1".into(), 11)],
                data_addresses: vec![(11, cidr("192.0.2.21/24"))],
                group_goes: false,
            }
        );
    }

    fn prefix_route(destination: &str, oif: u32, source: Option<&str>) -> MainRoute {
        MainRoute {
            destination: cidr(destination),
            metric: 0,
            tos: 0,
            plain: true,
            prefsrc: source.map(|s| s.parse().unwrap()),
            hops: smallvec::smallvec![Hop { oif, gateway: None }],
        }
    }

    #[test]
    fn the_kernel_s_prefix_route_of_a_placed_data_address_is_lost() {
        let groups = [group_a(), group_b()];
        let route = prefix_route("192.0.2.0/24", 10, Some("192.0.2.20"));
        assert_eq!(
            prefix_route_lost(&groups, &route, KERNEL_PROTOCOL),
            Some((10, cidr("192.0.2.20/24")))
        );
        // Someone else's route, or one through a gateway, is theirs.
        assert_eq!(prefix_route_lost(&groups, &route, 4), None);
        let mut via = route.clone();
        via.hops[0].gateway = Some("192.0.2.1".parse().unwrap());
        assert_eq!(prefix_route_lost(&groups, &via, KERNEL_PROTOCOL), None);
        // The address is placed on another NIC, or the route had another source.
        let elsewhere = prefix_route("192.0.2.0/24", 11, Some("192.0.2.20"));
        assert_eq!(
            prefix_route_lost(&groups, &elsewhere, KERNEL_PROTOCOL),
            None
        );
        let other_source = prefix_route("192.0.2.0/24", 10, Some("192.0.2.99"));
        assert_eq!(
            prefix_route_lost(&groups, &other_source, KERNEL_PROTOCOL),
            None
        );
        let mut six = group_a();
        six.addresses
            .push(address("2001:db8::20/64", "h0", Some("h0")));
        let route6 = prefix_route("2001:db8::/64", 10, None);
        assert_eq!(
            prefix_route_lost(&[six], &route6, KERNEL_PROTOCOL),
            Some((10, cidr("2001:db8::20/64")))
        );
    }
}
