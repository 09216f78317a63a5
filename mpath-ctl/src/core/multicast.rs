//! Multicast memberships that follow a failover: which groups mpathd joins on which NIC.
//!
//! In IPMP "network access" moves with a failover, multicast included: the switch delivers a
//! group only to ports that reported a membership, so an application joined on a NIC that
//! failed hears nothing until the group is joined on the NIC that took over. Linux delivers
//! a group's datagrams arriving on any NIC where the host is a member to every socket bound to
//! the port (IP_MULTICAST_ALL, on by default; IPv6 matches memberships by group only), so
//! mpathd joining the group there with a socket of its own is enough.
//!
//! [`wanted`] takes each NIC's memberships as the kernel lists them, the members' roles, the
//! data addresses and what mpathd has joined already, and returns the memberships to hold:
//!
//! - A NIC that is unusable (failed or offline) has its groups followed by the NIC that took
//!   its data addresses (where the first of them is now), else by the first active NIC;
//!   with no active NIC (group failure) nothing is joined.
//! - Groups every NIC joins by itself are left out: all-hosts (224.0.0.1), interface-local
//!   (ff01::/16), all-nodes (ff02::1) and solicited-node (ff02::1:ff00:0/104) groups.
//! - mpathd's own joins are not memberships to follow (the kernel counts them among the
//!   users of a group on a NIC; they are subtracted), and a group someone else already joined
//!   on the taking NIC needs no join.
//!
//! The daemon joins what is wanted and not held and leaves what is held and not wanted, so a
//! repair, failback or online undoes the joins, and a group joined or left on a failed NIC
//! later follows at the next look.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::core::failover::DataAddress;
use crate::core::identity::NicSlot;
use crate::core::state::{NicRole, Role};

/// A group mpathd holds on `on` for the applications that joined it on `from`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Followed {
    pub on: String,
    pub group: IpAddr,
    pub from: String,
}

impl fmt::Display for Followed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "multicast group {} of {} joined on {}",
            self.group, self.from, self.on
        )
    }
}

/// The groups joined on each NIC, by NIC name, with how many joins each has (the kernel's
/// user count: sockets and the kernel itself).
pub(crate) type Memberships = BTreeMap<String, BTreeMap<IpAddr, u32>>;

/// How many multicast groups a summary line names; the others are counted.
const NAMED_IN_SUMMARY: usize = 3;

/// Whether a summary tells of joins or of leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Joined,
    Left,
}

/// One line per NIC and NIC it stands in for, for the joins (or leaves) of one look: with
/// 500 groups a failover would otherwise log 500 lines each way. Each comes with the NIC
/// that joined or left, then the NIC out of use, for the log's fields.
pub(crate) fn summaries(followed: &[Followed], change: Change) -> Vec<(String, String, String)> {
    let mut by_pair: BTreeMap<(&str, &str), Vec<IpAddr>> = BTreeMap::new();
    for f in followed {
        by_pair.entry((&f.on, &f.from)).or_default().push(f.group);
    }
    by_pair
        .into_iter()
        .map(|((on, from), groups)| {
            let count = groups.len();
            let named = a_few(&groups);
            let line = match change {
                Change::Joined => format!(
                    "joined {count} multicast groups on {on} for {from}, whose applications \
                     receive through {on}: {named}"
                ),
                Change::Left => format!(
                    "left {count} multicast groups on {on} that {from}'s applications no \
                     longer need there: {named}"
                ),
            };
            (on.to_owned(), from.to_owned(), line)
        })
        .collect()
}

/// The first few of `groups` by name and how many others: "239.1.0.1, 239.1.0.2, 239.1.0.3
/// and 497 more".
pub(crate) fn a_few<T: fmt::Display>(groups: &[T]) -> String {
    let named: Vec<String> = groups
        .iter()
        .take(NAMED_IN_SUMMARY)
        .map(ToString::to_string)
        .collect();
    let named = named.join(", ");
    match groups.len().saturating_sub(NAMED_IN_SUMMARY) {
        0 => named,
        others => format!("{named} and {others} more"),
    }
}

/// Whether a membership is one an application made rather than one every NIC has.
pub(crate) fn follows(group: IpAddr) -> bool {
    match group {
        IpAddr::V4(g) => g.is_multicast() && g.octets() != [224, 0, 0, 1],
        IpAddr::V6(g) => {
            let s = g.segments();
            let interface_local = s[0] == 0xff01;
            let all_nodes = g == std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
            let solicited_node = s[..6] == [0xff02, 0, 0, 0, 0, 1] && s[6] & 0xff00 == 0xff00;
            g.is_multicast() && !interface_local && !all_nodes && !solicited_node
        }
    }
}

/// The memberships mpathd should hold now (see the module documentation). `held` is what it
/// holds already.
pub(crate) fn wanted(
    roles: &[NicRole],
    addresses: &[DataAddress],
    kernel: &Memberships,
    held: &BTreeSet<Followed>,
) -> BTreeSet<Followed> {
    // Joins by others than mpathd, per NIC and group.
    let others = |nic: &str, group: IpAddr| -> u32 {
        let users = kernel
            .get(nic)
            .and_then(|groups| groups.get(&group))
            .copied()
            .unwrap_or(0);
        let ours = held.iter().any(|f| f.on == nic && f.group == group);
        users.saturating_sub(u32::from(ours))
    };
    let mut wanted = BTreeSet::new();
    for failed in roles.iter().filter(|r| r.role == Role::Unusable) {
        let Some(on) = taker(failed, roles, addresses) else {
            continue;
        };
        let Some(groups) = kernel.get(&failed.name) else {
            continue;
        };
        for &group in groups.keys() {
            if follows(group) && others(&failed.name, group) > 0 && others(on, group) == 0 {
                wanted.insert(Followed {
                    on: on.to_string(),
                    group,
                    from: failed.name.clone(),
                });
            }
        }
    }
    // One join per NIC and group, however many failed NICs had it.
    let mut seen = BTreeSet::new();
    wanted.retain(|f| seen.insert((f.on.clone(), f.group)));
    wanted
}

/// The NIC that took over from `failed`: where its first data address is now, else the first
/// active NIC.
fn taker<'a>(failed: &NicRole, roles: &'a [NicRole], addresses: &[DataAddress]) -> Option<&'a str> {
    let active = |slot: NicSlot| {
        roles
            .iter()
            .find(|r| r.slot == slot && matches!(r.role, Role::Active { .. }))
            .map(|r| r.name.as_str())
    };
    addresses
        .iter()
        .filter(|a| a.home == failed.slot)
        .filter_map(|a| a.current)
        .find_map(active)
        .or_else(|| {
            roles
                .iter()
                .find(|r| matches!(r.role, Role::Active { .. }))
                .map(|r| r.name.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::test_slot as slot;
    use crate::net::address::IpCidr;

    fn role(name: &str, role: Role) -> NicRole {
        NicRole {
            slot: slot(name),
            name: name.into(),
            standby: false,
            role,
        }
    }

    const ACTIVE: Role = Role::Active {
        reclaims_home: true,
    };

    fn address(cidr: &str, home: &str, current: &str) -> DataAddress {
        DataAddress {
            cidr: cidr.parse::<IpCidr>().unwrap(),
            home: slot(home),
            current: Some(slot(current)),
        }
    }

    fn kernel(entries: &[(&str, &str, u32)]) -> Memberships {
        let mut m = Memberships::new();
        for (nic, group, users) in entries {
            m.entry(nic.to_string())
                .or_default()
                .insert(group.parse().unwrap(), *users);
        }
        m
    }

    fn followed(on: &str, group: &str, from: &str) -> Followed {
        Followed {
            on: on.into(),
            group: group.parse().unwrap(),
            from: from.into(),
        }
    }

    /// h0 failed, its address on h2; h1 active with its own.
    fn h0_failed() -> (Vec<NicRole>, Vec<DataAddress>) {
        (
            vec![
                role("h0", Role::Unusable),
                role("h1", ACTIVE),
                role("h2", ACTIVE),
            ],
            vec![
                address("192.0.2.19/24", "h0", "h2"),
                address("192.0.2.20/24", "h1", "h1"),
            ],
        )
    }

    #[test]
    fn a_failed_nics_groups_are_joined_where_its_addresses_went() {
        let (roles, addresses) = h0_failed();
        let kernel = kernel(&[
            ("h0", "239.1.1.1", 1),
            ("h0", "ff05::db8:1", 1),
            ("h0", "224.0.0.1", 1),
            ("h0", "ff02::1", 1),
            ("h0", "ff01::1", 1),
            ("h0", "ff02::1:ff00:19", 1),
            ("h1", "239.1.1.2", 1),
        ]);
        assert_eq!(
            wanted(&roles, &addresses, &kernel, &BTreeSet::new()),
            [
                followed("h2", "239.1.1.1", "h0"),
                followed("h2", "ff05::db8:1", "h0")
            ]
            .into(),
            "the well-known groups stay, h1's own groups stay"
        );
    }

    #[test]
    fn nothing_is_wanted_once_the_nic_is_back() {
        let (mut roles, addresses) = h0_failed();
        roles[0].role = ACTIVE;
        let kernel = kernel(&[("h0", "239.1.1.1", 1), ("h2", "239.1.1.1", 1)]);
        let held = [followed("h2", "239.1.1.1", "h0")].into();
        assert!(wanted(&roles, &addresses, &kernel, &held).is_empty());
    }

    #[test]
    fn mpathds_own_joins_are_not_followed_nor_count_as_someone_elses() {
        let (_, addresses) = h0_failed();
        // h0 failed and h2 took over; then h2 failed too and h1 took both.
        let roles = vec![
            role("h0", Role::Unusable),
            role("h1", ACTIVE),
            role("h2", Role::Unusable),
        ];
        let addresses: Vec<DataAddress> = addresses
            .into_iter()
            .map(|mut a| {
                a.current = Some(slot("h1"));
                a
            })
            .collect();
        let kernel = kernel(&[("h0", "239.1.1.1", 1), ("h2", "239.1.1.1", 1)]);
        let held = [followed("h2", "239.1.1.1", "h0")].into();
        assert_eq!(
            wanted(&roles, &addresses, &kernel, &held),
            [followed("h1", "239.1.1.1", "h0")].into(),
            "h0's group moves on to h1; h2 has no group of its own to pass on"
        );
        // While mpathd holds it on h2 and h2 works, its own join keeps it wanted there.
        let (roles, addresses) = h0_failed();
        assert_eq!(
            wanted(&roles, &addresses, &kernel, &held),
            [followed("h2", "239.1.1.1", "h0")].into()
        );
    }

    #[test]
    fn a_group_someone_joined_on_the_taking_nic_needs_no_join() {
        let (roles, addresses) = h0_failed();
        let kernel = kernel(&[("h0", "239.1.1.1", 1), ("h2", "239.1.1.1", 1)]);
        assert!(wanted(&roles, &addresses, &kernel, &BTreeSet::new()).is_empty());
        // Two joins on h2, one of them mpathd's: someone else has it there too.
        let held = [followed("h2", "239.1.1.1", "h0")].into();
        let kernel = self::kernel(&[("h0", "239.1.1.1", 1), ("h2", "239.1.1.1", 2)]);
        assert!(wanted(&roles, &addresses, &kernel, &held).is_empty());
    }

    #[test]
    fn a_nic_without_data_addresses_is_followed_by_the_first_active_nic() {
        let roles = vec![
            role("h0", ACTIVE),
            role("h1", ACTIVE),
            role("h2", Role::Unusable),
        ];
        let kernel = kernel(&[("h2", "ff0e::db8:7", 1)]);
        assert_eq!(
            wanted(&roles, &[], &kernel, &BTreeSet::new()),
            [followed("h0", "ff0e::db8:7", "h2")].into()
        );
    }

    #[test]
    fn with_every_nic_failed_nothing_is_joined() {
        let roles = vec![role("h0", Role::Unusable), role("h1", Role::Unusable)];
        let addresses = vec![address("192.0.2.19/24", "h0", "h0")];
        let kernel = kernel(&[("h0", "239.1.1.1", 1)]);
        assert!(wanted(&roles, &addresses, &kernel, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn two_failed_nics_with_one_group_and_one_taker_make_one_join() {
        let roles = vec![
            role("h0", Role::Unusable),
            role("h1", Role::Unusable),
            role("h2", ACTIVE),
        ];
        let kernel = kernel(&[("h0", "239.1.1.1", 1), ("h1", "239.1.1.1", 3)]);
        assert_eq!(
            wanted(&roles, &[], &kernel, &BTreeSet::new()),
            [followed("h2", "239.1.1.1", "h0")].into()
        );
    }

    #[test]
    fn only_application_groups_follow() {
        for group in [
            "239.1.1.1",
            "224.0.0.251",
            "ff05::db8:1",
            "ff02::fb",
            "ff0e::1",
        ] {
            assert!(follows(group.parse().unwrap()), "{group}");
        }
        for group in [
            "224.0.0.1",
            "ff02::1",
            "ff01::1",
            "ff02::1:ff00:19",
            "ff02::1:ffab:cdef",
            "192.0.2.1",
        ] {
            assert!(!follows(group.parse().unwrap()), "{group}");
        }
    }

    #[test]
    fn joins_are_summarised_per_nic_pair_naming_a_few_groups() {
        let joined = |on: &str, group: &str, from: &str| Followed {
            on: on.into(),
            group: group.parse().unwrap(),
            from: from.into(),
        };
        let mut followed: Vec<Followed> = (1..=500)
            .map(|i| joined("h2", &format!("239.1.{}.{}", i / 256, i % 256), "h1"))
            .collect();
        followed.push(joined("h2", "ff05::1:3", "h0"));
        let lines = summaries(&followed, Change::Joined);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].0, "h2");
        assert_eq!(lines[0].1, "h0");
        assert!(
            lines[0]
                .2
                .starts_with("joined 1 multicast groups on h2 for h0")
        );
        assert!(lines[0].2.ends_with(": ff05::1:3"), "{}", lines[0].2);
        assert_eq!(lines[1].1, "h1");
        assert!(
            lines[1]
                .2
                .starts_with("joined 500 multicast groups on h2 for h1")
                && lines[1]
                    .2
                    .ends_with(": 239.1.0.1, 239.1.0.2, 239.1.0.3 and 497 more"),
            "{}",
            lines[1].2
        );
        let left = summaries(&followed[..2], Change::Left);
        assert_eq!(left.len(), 1);
        assert!(
            left[0]
                .2
                .starts_with("left 2 multicast groups on h2 that h1's")
        );
    }
}
