//! The runtime of each group: its state machine, its NICs with their probers and kernel
//! identity, its data addresses; and the lookups that find a group or NIC by name or ifindex.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::{Index, IndexMut},
    time::Duration,
};

use anyhow::Context as _;
use mpath_common::{MAX_GROUPS, MAX_NICS};

use crate::{
    config::{GroupConfig, RouteConfig},
    core::{
        evidence::RxEvidence,
        failover::DataAddress,
        identity::{GroupId, NicSlot},
        multicast::Followed,
        probe::{FailureDetectionTime, Prober},
        reconcile::{Holdings, Member},
        state::{self, Policy, ProbeFamilies},
    },
    daemon::{host_io::ProbeSender, reconcile::Dirty},
    net::address::IpCidr,
};

/// One NIC's probing in one address family.
pub(super) struct Probing {
    pub prober: Prober,
    pub socket: Box<dyn ProbeSender>,
    /// Sequence numbers of recent discovery echoes.
    pub discovery: Vec<u32>,
    /// Whether targets were available at the last look, to report changes once.
    pub had_targets: bool,
}

pub(super) struct Nic {
    pub name: String,
    pub test_address: Option<IpCidr>,
    pub slot: NicSlot,
    /// Kernel identity while the NIC exists.
    pub ifindex: Option<u32>,
    pub mac: [u8; 6],
    /// Whether the NIC probes over IPv6 (from its link-local address): when its group carries
    /// IPv6 data addresses.
    pub probe_v6: bool,
    /// One prober per address family that is running.
    pub probing: Vec<Probing>,
    /// Readings of the datapath's receive counter, to explain a probe-based failure.
    pub rx: RxEvidence,
    /// Up with carrier: only then does the kernel take nexthops through it.
    pub carrier: bool,
    /// Administratively up: the kernel takes routes through it (marked linkdown without
    /// carrier).
    pub admin_up: bool,
    /// Why mpathd's programs are not on the NIC, while they are not: it is offline then.
    pub datapath_error: Option<String>,
}

impl Nic {
    /// The NIC is present and carries mpathd's programs: only then is it in the maps and
    /// does it probe.
    pub(super) fn attached(&self) -> bool {
        self.ifindex.is_some() && self.datapath_error.is_none()
    }
}

pub(super) struct GroupRuntime {
    pub id: GroupId,
    pub config: GroupConfig,
    pub fsm: state::Group,
    pub fdt: FailureDetectionTime,
    pub nics: Vec<Nic>,
    pub addresses: Vec<DataAddress>,
    /// Routes the kernel deleted with their NIC that the group keeps serving until their
    /// owner adds them again (see [`crate::core::routes::orphaned`]).
    pub held_routes: Vec<RouteConfig>,
    /// Which of `addresses` the group adopted from a NIC rather than from the configuration.
    pub adopted: BTreeSet<IpCidr>,
    /// Which of `addresses` have been on a NIC since the group started: putting one of the
    /// others on its NIC is its first placement, not the restore of a missing address.
    pub placed: BTreeSet<IpCidr>,
    /// The multicast memberships of unusable NICs mpathd holds on the NICs that took over.
    pub followed: BTreeSet<Followed>,
    /// The usable NICs the routes were last re-formed over.
    pub serving: Vec<String>,
    /// Usable NICs kept out of the routes while their data addresses are on the way (see
    /// `Daemon::reconcile`); empty otherwise.
    pub joining: Vec<String>,
    /// What this turn's events left out of date, for `Daemon::reconcile`.
    pub dirty: Dirty,
    /// Data addresses to take off NICs that left the group (renamed), once they are on
    /// their new NIC: `(ifindex, address)`.
    pub left_behind: Vec<(u32, IpCidr)>,
}

impl GroupRuntime {
    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    /// The member named `name`: for what comes by name (configuration, requests, views).
    pub(super) fn nic_named(&self, name: &str) -> Option<&Nic> {
        self.nics.iter().find(|n| n.name == name)
    }

    pub(super) fn nic(&self, slot: NicSlot) -> Option<&Nic> {
        self.nics.iter().find(|n| n.slot == slot)
    }

    pub(crate) fn nic_mut(&mut self, slot: NicSlot) -> Option<&mut Nic> {
        self.nics.iter_mut().find(|n| n.slot == slot)
    }

    /// The ifindex of a member, while it exists.
    pub(crate) fn ifindex_in(&self, slot: NicSlot) -> Option<u32> {
        self.nic(slot)?.ifindex
    }

    /// The ifindex of the member named `name`, while it exists.
    pub(crate) fn ifindex_of(&self, name: &str) -> Option<u32> {
        self.nic_named(name)?.ifindex
    }

    /// The ifindexes of the members that exist.
    pub(super) fn ifindexes(&self) -> Vec<u32> {
        self.nics.iter().filter_map(|n| n.ifindex).collect()
    }

    /// The names of the members that may carry traffic now.
    pub(super) fn usable_names(&self) -> Vec<String> {
        self.fsm
            .usable_interfaces()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// The ifindexes of the members that may carry traffic now.
    pub(crate) fn usable_ifindexes(&self) -> Vec<u32> {
        self.fsm
            .usable_slots()
            .filter_map(|slot| self.ifindex_in(slot))
            .collect()
    }

    /// Every prober of the group.
    pub(super) fn probers(&self) -> impl Iterator<Item = &Prober> {
        self.nics.iter().flat_map(|n| &n.probing).map(|p| &p.prober)
    }

    /// What the group holds, for [`crate::core::reconcile`].
    pub(crate) fn holdings(&self) -> Holdings {
        Holdings {
            id: self.id,
            group: self.config.name.clone(),
            members: self
                .nics
                .iter()
                .map(|n| Member {
                    slot: n.slot,
                    name: n.name.clone(),
                    ifindex: n.ifindex,
                    test_address: n.test_address,
                    probes: !n.probing.is_empty(),
                })
                .collect(),
            addresses: self.addresses.clone(),
            adopted: self.adopted.clone(),
        }
    }

    /// The name of the NIC `address` is on, for views.
    pub(super) fn current_name(&self, address: &DataAddress) -> Option<String> {
        Some(self.fsm.nic_name(address.current?).to_owned())
    }

    /// The data address `cidr`, exactly.
    pub(crate) fn address_mut(&mut self, cidr: IpCidr) -> Option<&mut DataAddress> {
        self.addresses.iter_mut().find(|a| a.cidr == cidr)
    }
}

/// Where a NIC is: its group, and its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NicAt {
    pub group: GroupId,
    pub nic: NicSlot,
}

/// The running groups, and the numbers they and their NICs keep across reloads.
#[derive(Default)]
pub(super) struct Groups {
    list: Vec<GroupRuntime>,
    /// Counter slot of every group NIC, by name.
    slots: BTreeMap<String, u32>,
    /// Bucket table id of every group, by name.
    ids: BTreeMap<String, u32>,
}

impl Groups {
    pub(super) fn iter(&self) -> std::slice::Iter<'_, GroupRuntime> {
        self.list.iter()
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, GroupRuntime> {
        self.list.iter_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The running groups, in configuration order.
    pub(super) fn ids(&self) -> Vec<GroupId> {
        self.list.iter().map(|g| g.id).collect()
    }

    pub(crate) fn by_name(&self, group: &str) -> Option<GroupId> {
        self.list
            .iter()
            .find(|g| g.config.name == group)
            .map(|g| g.id)
    }

    fn position(&self, id: GroupId) -> usize {
        self.list
            .iter()
            .position(|g| g.id == id)
            .unwrap_or_else(|| panic!("no running group has id {}", id.0))
    }

    /// The configured NIC `name`, present or not.
    pub(crate) fn nic_named(&self, name: &str) -> Option<NicAt> {
        self.find(|n| n.name == name)
    }

    /// The group NIC that has `ifindex` now.
    pub(crate) fn nic_at(&self, ifindex: u32) -> Option<NicAt> {
        self.find(|n| n.ifindex == Some(ifindex))
    }

    fn find(&self, matches: impl Fn(&Nic) -> bool) -> Option<NicAt> {
        self.list.iter().find_map(|g| {
            let nic = g.nics.iter().find(|n| matches(n))?;
            Some(NicAt {
                group: g.id,
                nic: nic.slot,
            })
        })
    }

    pub(super) fn nic(&self, at: NicAt) -> &Nic {
        self[at.group]
            .nic(at.nic)
            .unwrap_or_else(|| panic!("no NIC of group {} has slot {}", at.group.0, at.nic.0))
    }

    /// Where every configured NIC is, in group and configuration order.
    pub(crate) fn nics(&self) -> Vec<NicAt> {
        self.list
            .iter()
            .flat_map(|g| {
                g.nics.iter().map(|n| NicAt {
                    group: g.id,
                    nic: n.slot,
                })
            })
            .collect()
    }

    pub(crate) fn nic_mut(&mut self, at: NicAt) -> &mut Nic {
        self[at.group]
            .nic_mut(at.nic)
            .unwrap_or_else(|| panic!("no NIC of group {} has slot {}", at.group.0, at.nic.0))
    }

    /// The ifindexes of every group's NICs that exist.
    pub(super) fn ifindexes(&self) -> BTreeSet<u32> {
        self.list.iter().flat_map(|g| g.ifindexes()).collect()
    }

    /// What every group holds, in group order.
    pub(crate) fn holdings(&self) -> Vec<Holdings> {
        self.list.iter().map(GroupRuntime::holdings).collect()
    }

    /// Builds the runtime of a configured group with its id and its NICs' counter slots: the
    /// ones they had (a group or NIC keeps them across reloads), else the lowest free ones.
    /// A group that ran before keeps no startup quiet period, nor does any group when
    /// `restarted` (a restart taking over a running datapath): only a cold start has one.
    pub(super) fn add(
        &mut self,
        g: &GroupConfig,
        failback: bool,
        failure_detection_time: Duration,
        restarted: bool,
    ) -> anyhow::Result<()> {
        let was_running = self.ids.contains_key(&g.name);
        let id = keep_or_assign(&mut self.ids, &g.name, MAX_GROUPS).context("too many groups")?;
        let id = GroupId(id);
        let policy = Policy {
            failback,
            startup_quiet: if restarted || was_running {
                Duration::ZERO
            } else {
                Policy::default().startup_quiet
            },
        };
        let v6_data = g
            .interfaces
            .iter()
            .flat_map(|i| &i.data_addresses)
            .any(|a| a.addr().is_ipv6());
        let mut slots = Vec::new();
        for i in &g.interfaces {
            let slot =
                keep_or_assign(&mut self.slots, &i.name, MAX_NICS).context("too many NICs")?;
            slots.push(NicSlot(slot));
        }
        let interfaces = g
            .interfaces
            .iter()
            .zip(&slots)
            .map(|(i, slot)| state::InterfaceConfig {
                slot: *slot,
                name: i.name.clone(),
                standby: i.standby,
                // As on Solaris, where the link-local address is every NIC's IPv6 test
                // address: a group with IPv6 data addresses probes over IPv6 on every NIC,
                // with or without an IPv4 test address.
                probe: match (i.test_address.is_some(), v6_data) {
                    (false, false) => ProbeFamilies::NONE,
                    (true, false) => ProbeFamilies::IPV4,
                    (false, true) => ProbeFamilies::IPV6,
                    (true, true) => ProbeFamilies::BOTH,
                },
            })
            .collect();
        let mut nics = Vec::new();
        for (i, slot) in g.interfaces.iter().zip(slots) {
            nics.push(Nic {
                name: i.name.clone(),
                test_address: i.test_address.map(Into::into),
                slot,
                ifindex: None,
                mac: [0; 6],
                probe_v6: v6_data,
                probing: Vec::new(),
                rx: RxEvidence::default(),
                carrier: false,
                admin_up: false,
                datapath_error: None,
            });
        }
        let addresses = nics
            .iter()
            .zip(&g.interfaces)
            .flat_map(|(nic, i)| {
                i.data_addresses.iter().map(|cidr| DataAddress {
                    cidr: *cidr,
                    home: nic.slot,
                    current: None,
                })
            })
            .collect();
        self.list.push(GroupRuntime {
            id,
            config: g.clone(),
            fsm: state::Group::new(g.name.clone(), policy, interfaces)?,
            fdt: FailureDetectionTime::new(g.name.clone(), failure_detection_time)?,
            nics,
            addresses,
            held_routes: Vec::new(),
            adopted: BTreeSet::new(),
            placed: BTreeSet::new(),
            followed: BTreeSet::new(),
            serving: Vec::new(),
            joining: Vec::new(),
            dirty: Dirty::default(),
            left_behind: Vec::new(),
        });
        Ok(())
    }

    /// Takes a group's runtime out; its id and its NICs' slots stay taken until
    /// [`Groups::release_id`] and [`Groups::release_slot`].
    pub(super) fn remove(&mut self, group: &str) -> Option<GroupRuntime> {
        let id = self.by_name(group)?;
        Some(self.list.remove(self.position(id)))
    }

    pub(crate) fn release_id(&mut self, group: &str) {
        self.ids.remove(group);
    }

    pub(crate) fn release_slot(&mut self, nic: &str) {
        self.slots.remove(nic);
    }
}

impl Index<GroupId> for Groups {
    type Output = GroupRuntime;

    fn index(&self, id: GroupId) -> &GroupRuntime {
        &self.list[self.position(id)]
    }
}

impl IndexMut<GroupId> for Groups {
    fn index_mut(&mut self, id: GroupId) -> &mut GroupRuntime {
        let at = self.position(id);
        &mut self.list[at]
    }
}

impl<'a> IntoIterator for &'a Groups {
    type Item = &'a GroupRuntime;
    type IntoIter = std::slice::Iter<'a, GroupRuntime>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// The number `name` holds in `assigned`, or the lowest one below `limit` that nobody holds
/// (then recorded); `None` when all are taken.
fn keep_or_assign(assigned: &mut BTreeMap<String, u32>, name: &str, limit: u32) -> Option<u32> {
    let number = match assigned.get(name) {
        Some(number) => *number,
        None => (0..limit).find(|n| assigned.values().all(|used| used != n))?,
    };
    assigned.insert(name.to_string(), number);
    Some(number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn numbers_are_kept_by_name_and_freed_ones_reused() {
        let mut assigned = BTreeMap::new();
        assert_eq!(keep_or_assign(&mut assigned, "a", 3), Some(0));
        assert_eq!(keep_or_assign(&mut assigned, "b", 3), Some(1));
        assert_eq!(keep_or_assign(&mut assigned, "a", 3), Some(0), "kept");
        assigned.remove("a");
        assert_eq!(
            keep_or_assign(&mut assigned, "c", 3),
            Some(0),
            "lowest free"
        );
        assert_eq!(keep_or_assign(&mut assigned, "d", 3), Some(2));
        assert_eq!(keep_or_assign(&mut assigned, "e", 3), None, "all taken");
    }

    fn two_groups() -> Groups {
        let config = Config::parse(
            r#"
            [[group]]
            name = "a"
            [[group.interface]]
            name = "h0"
            test_address = "192.0.2.10/24"
            data_addresses = ["192.0.2.20/24"]
            [[group.interface]]
            name = "h1"
            [[group]]
            name = "b"
            [[group.interface]]
            name = "g0"
            data_addresses = ["2001:db8::20/64"]
            "#,
            "mpathd.toml",
            None,
        )
        .unwrap();
        let mut groups = Groups::default();
        for g in &config.groups {
            groups.add(g, true, Duration::from_secs(10), false).unwrap();
        }
        groups
    }

    #[test]
    fn nics_are_found_by_name_and_by_ifindex_once_present() {
        let mut groups = two_groups();
        let g0 = groups.nic_named("g0").unwrap();
        assert_eq!(
            g0,
            NicAt {
                group: GroupId(1),
                nic: NicSlot(2)
            },
            "the third NIC configured, first of its group"
        );
        assert_eq!(groups.nic_at(7), None, "not present yet");
        groups.nic_mut(g0).ifindex = Some(7);
        assert_eq!(groups.nic_at(7), Some(g0));
        assert_eq!(groups.nic_named("h2"), None);
        assert_eq!(groups.by_name("b"), Some(GroupId(1)));
        assert_eq!(groups.ifindexes(), BTreeSet::from([7]));
    }

    #[test]
    fn a_group_and_its_nics_are_reached_by_its_id_after_a_group_before_it_left() {
        let mut groups = two_groups();
        let b = groups.by_name("b").unwrap();
        let g0 = groups.nic_named("g0").unwrap();
        groups.remove("a").unwrap();
        assert_eq!(groups[b].name(), "b");
        assert_eq!(groups.nic(g0).name, "g0");
        assert_eq!(groups.ids(), [b]);
    }

    #[test]
    fn a_group_with_ipv6_data_probes_over_ipv6_on_every_nic() {
        let groups = two_groups();
        assert!(groups[GroupId(1)].nics.iter().all(|n| n.probe_v6));
        assert!(groups[GroupId(0)].nics.iter().all(|n| !n.probe_v6));
    }

    #[test]
    fn a_re_added_group_keeps_its_id_and_slots_until_released() {
        let mut groups = two_groups();
        let a = groups.by_name("a").unwrap();
        let config = groups[a].config.clone();
        let (id, slot) = (groups[a].id, groups[a].nics[1].slot);
        groups.remove("a").unwrap();
        groups
            .add(&config, true, Duration::from_secs(10), false)
            .unwrap();
        let a = groups.by_name("a").unwrap();
        assert_eq!((groups[a].id, groups[a].nics[1].slot), (id, slot));

        groups.remove("a").unwrap();
        groups.release_id("a");
        groups.release_slot("h1");
        let mut other = config.clone();
        other.name = "c".into();
        other.interfaces.truncate(1);
        other.interfaces[0].name = "h9".into();
        groups
            .add(&other, true, Duration::from_secs(10), false)
            .unwrap();
        let c = groups.by_name("c").unwrap();
        assert_eq!(groups[c].id, id, "the freed id is the lowest free one");
        assert_ne!(
            groups[c].nics[0].slot,
            groups[groups.by_name("b").unwrap()].nics[0].slot
        );
    }
}
