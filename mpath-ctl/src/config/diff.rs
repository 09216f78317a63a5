//! What a SIGHUP reload must change: the difference between the running and the new
//! configuration, matched by name so untouched groups and interfaces keep running.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Config, DaemonConfig, GroupConfig, InterfaceConfig, ProbeRx, RouteConfig, SourceSelection,
    SpreadMode, TcAttach,
};
use crate::net::address::{IpCidr, Ipv4Cidr};

impl Config {
    /// What a reload from `self` to `new` must change; groups and interfaces are matched by
    /// name, so a renamed one is a removal plus an addition.
    pub(crate) fn diff(&self, new: &Config) -> ConfigDiff {
        ConfigDiff {
            daemon: self.daemon.diff(&new.daemon),
            groups_added: new
                .groups
                .iter()
                .filter(|group| self.group(&group.name).is_none())
                .cloned()
                .collect(),
            groups_removed: self
                .groups
                .iter()
                .filter(|group| new.group(&group.name).is_none())
                .cloned()
                .collect(),
            groups_changed: new
                .groups
                .iter()
                .filter_map(|group| self.group(&group.name)?.diff(group))
                .collect(),
        }
    }
}

impl DaemonConfig {
    fn diff(&self, new: &DaemonConfig) -> Vec<DaemonChange> {
        let mut changes = Vec::new();
        if let Some(change) =
            Change::between(&self.failure_detection_time, &new.failure_detection_time)
        {
            changes.push(DaemonChange::FailureDetectionTime(change));
        }
        if let Some(change) = Change::between(&self.failback, &new.failback) {
            changes.push(DaemonChange::Failback(change));
        }
        if let Some(change) = Change::between(
            &self.track_interfaces_only_with_groups,
            &new.track_interfaces_only_with_groups,
        ) {
            changes.push(DaemonChange::TrackInterfacesOnlyWithGroups(change));
        }
        if let Some(change) = Change::between(&self.metrics_listen, &new.metrics_listen) {
            changes.push(DaemonChange::MetricsListen(change));
        }
        if let Some(change) = Change::between(&self.socket, &new.socket) {
            changes.push(DaemonChange::Socket(change));
        }
        if let Some(change) = Change::between(&self.bpf_pin_dir, &new.bpf_pin_dir) {
            changes.push(DaemonChange::BpfPinDir(change));
        }
        if let Some(change) = Change::between(&self.route_table, &new.route_table) {
            changes.push(DaemonChange::RouteTable(change));
        }
        if let Some(change) = Change::between(&self.route_rule_priority, &new.route_rule_priority) {
            changes.push(DaemonChange::RouteRulePriority(change));
        }
        if let Some(change) = Change::between(&self.tc_attach, &new.tc_attach) {
            changes.push(DaemonChange::TcAttach(change));
        }
        if let Some(change) = Change::between(&self.sources, &new.sources) {
            changes.push(DaemonChange::SourceSelection(change));
        }
        if let Some(change) = Change::between(&self.carrier_hook, &new.carrier_hook) {
            changes.push(DaemonChange::CarrierHook(change));
        }
        if let Some(change) = Change::between(&self.carrier_poll, &new.carrier_poll) {
            changes.push(DaemonChange::CarrierPoll(change));
        }
        if let Some(change) = Change::between(&self.isolate_arp, &new.isolate_arp) {
            changes.push(DaemonChange::IsolateArp(change));
        }
        changes
    }
}

impl GroupConfig {
    fn diff(&self, new: &GroupConfig) -> Option<GroupDiff> {
        let diff = GroupDiff {
            name: new.name.clone(),
            targets_added: missing_from(&new.targets, &self.targets),
            targets_removed: missing_from(&self.targets, &new.targets),
            interfaces_added: new
                .interfaces
                .iter()
                .filter(|interface| self.interface(&interface.name).is_none())
                .cloned()
                .collect(),
            interfaces_removed: self
                .interfaces
                .iter()
                .filter(|interface| new.interface(&interface.name).is_none())
                .cloned()
                .collect(),
            interfaces_changed: new
                .interfaces
                .iter()
                .filter_map(|interface| self.interface(&interface.name)?.diff(interface))
                .collect(),
            spread: Change::between(&self.spread, &new.spread),
            probe_rx: Change::between(&self.probe_rx, &new.probe_rx),
            routes_added: missing_from(&new.routes, &self.routes),
            routes_removed: missing_from(&self.routes, &new.routes),
        };
        let unchanged = diff.targets_added.is_empty()
            && diff.targets_removed.is_empty()
            && diff.interfaces_added.is_empty()
            && diff.interfaces_removed.is_empty()
            && diff.interfaces_changed.is_empty()
            && diff.spread.is_none()
            && diff.probe_rx.is_none()
            && diff.routes_added.is_empty()
            && diff.routes_removed.is_empty();
        (!unchanged).then_some(diff)
    }
}

impl InterfaceConfig {
    fn diff(&self, new: &InterfaceConfig) -> Option<InterfaceDiff> {
        let diff = InterfaceDiff {
            name: new.name.clone(),
            standby: Change::between(&self.standby, &new.standby),
            test_address: Change::between(&self.test_address, &new.test_address),
            data_addresses_added: missing_from(&new.data_addresses, &self.data_addresses),
            data_addresses_removed: missing_from(&self.data_addresses, &new.data_addresses),
        };
        let unchanged = diff.standby.is_none()
            && diff.test_address.is_none()
            && diff.data_addresses_added.is_empty()
            && diff.data_addresses_removed.is_empty();
        (!unchanged).then_some(diff)
    }
}

/// Items of `items` absent from `other`, in `items` order: order alone is not a change.
fn missing_from<T: PartialEq + Clone>(items: &[T], other: &[T]) -> Vec<T> {
    items
        .iter()
        .filter(|item| !other.contains(item))
        .cloned()
        .collect()
}

/// The changes a SIGHUP reload applies, so that untouched groups and interfaces keep running.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigDiff {
    pub daemon: Vec<DaemonChange>,
    pub groups_added: Vec<GroupConfig>,
    /// The old definitions: the daemon needs them to take the groups' addresses down.
    pub groups_removed: Vec<GroupConfig>,
    pub groups_changed: Vec<GroupDiff>,
}

impl ConfigDiff {
    pub(crate) fn is_empty(&self) -> bool {
        self.daemon.is_empty()
            && self.groups_added.is_empty()
            && self.groups_removed.is_empty()
            && self.groups_changed.is_empty()
    }
}

/// An old and a new value of a setting that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change<T> {
    pub old: T,
    pub new: T,
}

impl<T: PartialEq + Clone> Change<T> {
    fn between(old: &T, new: &T) -> Option<Change<T>> {
        (old != new).then(|| Change {
            old: old.clone(),
            new: new.clone(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DaemonChange {
    FailureDetectionTime(Change<Duration>),
    Failback(Change<bool>),
    TrackInterfacesOnlyWithGroups(Change<bool>),
    MetricsListen(Change<SocketAddr>),
    Socket(Change<PathBuf>),
    BpfPinDir(Change<PathBuf>),
    /// Takes effect at restart, like the socket and the pins: moving the table or the rule
    /// under running groups would leave their routes behind in the old one.
    RouteTable(Change<u32>),
    /// Takes effect at restart, as `RouteTable` does.
    RouteRulePriority(Change<u32>),
    /// Takes effect at restart, which moves every NIC's egress program to the new kind.
    TcAttach(Change<TcAttach>),
    /// Attaches or detaches the source hook at once.
    SourceSelection(Change<SourceSelection>),
    /// Takes effect at restart: the hook is loaded before the NICs are set up, and where it
    /// runs no NIC's carrier is read.
    CarrierHook(Change<bool>),
    CarrierPoll(Change<Option<Duration>>),
    /// Applies to the NICs outside the groups as the reload's resync sees them.
    IsolateArp(Change<bool>),
}

/// Changes inside a group present in both configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupDiff {
    pub name: String,
    pub targets_added: Vec<IpAddr>,
    pub targets_removed: Vec<IpAddr>,
    pub interfaces_added: Vec<InterfaceConfig>,
    /// The old definitions, whose addresses the daemon must remove.
    pub interfaces_removed: Vec<InterfaceConfig>,
    pub interfaces_changed: Vec<InterfaceDiff>,
    pub spread: Option<Change<SpreadMode>>,
    pub probe_rx: Option<Change<ProbeRx>>,
    /// A route whose `via` changed is removed and added: routes are compared whole.
    pub routes_added: Vec<RouteConfig>,
    /// The old definitions, which the daemon must take out of its table.
    pub routes_removed: Vec<RouteConfig>,
}

/// Changes to an interface that stays in its group. A data address whose prefix length
/// changed is removed and added, as the kernel needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InterfaceDiff {
    pub name: String,
    pub standby: Option<Change<bool>>,
    pub test_address: Option<Change<Option<Ipv4Cidr>>>,
    pub data_addresses_added: Vec<IpCidr>,
    pub data_addresses_removed: Vec<IpCidr>,
}

/// One line for the reload log, e.g. `failback true -> false; group g1 added`.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.daemon.iter().map(ToString::to_string).collect();
        parts.extend(
            self.groups_added
                .iter()
                .map(|g| format!("group {} added", g.name)),
        );
        parts.extend(
            self.groups_removed
                .iter()
                .map(|g| format!("group {} removed", g.name)),
        );
        parts.extend(self.groups_changed.iter().map(ToString::to_string));
        if parts.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

impl fmt::Display for DaemonChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonChange::FailureDetectionTime(c) => write!(
                f,
                "failure_detection_time_ms {} -> {}",
                c.old.as_millis(),
                c.new.as_millis()
            ),
            DaemonChange::Failback(c) => write!(f, "failback {} -> {}", c.old, c.new),
            DaemonChange::TrackInterfacesOnlyWithGroups(c) => write!(
                f,
                "track_interfaces_only_with_groups {} -> {}",
                c.old, c.new
            ),
            DaemonChange::MetricsListen(c) => write!(f, "metrics_listen {} -> {}", c.old, c.new),
            DaemonChange::Socket(c) => {
                write!(f, "socket {} -> {}", c.old.display(), c.new.display())
            }
            DaemonChange::BpfPinDir(c) => {
                write!(f, "bpf_pin_dir {} -> {}", c.old.display(), c.new.display())
            }
            DaemonChange::RouteTable(c) => write!(f, "route_table {} -> {}", c.old, c.new),
            DaemonChange::RouteRulePriority(c) => {
                write!(f, "route_rule_priority {} -> {}", c.old, c.new)
            }
            DaemonChange::TcAttach(c) => write!(f, "tc_attach {} -> {}", c.old, c.new),
            DaemonChange::SourceSelection(c) => write!(f, "sources {} -> {}", c.old, c.new),
            DaemonChange::CarrierHook(c) => write!(f, "carrier_hook {} -> {}", c.old, c.new),
            DaemonChange::CarrierPoll(c) => {
                let ms = |poll: Option<Duration>| poll.map_or(0, |p| p.as_millis());
                write!(f, "carrier_poll_ms {} -> {}", ms(c.old), ms(c.new))
            }
            DaemonChange::IsolateArp(c) => write!(f, "isolate_arp {} -> {}", c.old, c.new),
        }
    }
}

impl fmt::Display for GroupDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.targets_added.is_empty() || !self.targets_removed.is_empty() {
            parts.push(format!(
                "targets {}",
                signed_list(&self.targets_added, &self.targets_removed)
            ));
        }
        parts.extend(
            self.interfaces_added
                .iter()
                .map(|i| format!("interface {} added", i.name)),
        );
        parts.extend(
            self.interfaces_removed
                .iter()
                .map(|i| format!("interface {} removed", i.name)),
        );
        parts.extend(self.interfaces_changed.iter().map(ToString::to_string));
        if let Some(c) = &self.spread {
            parts.push(format!("spread {} -> {}", c.old, c.new));
        }
        if let Some(c) = &self.probe_rx {
            parts.push(format!("probe_rx {} -> {}", c.old, c.new));
        }
        // One part per route: a route's own text has spaces, so a +/- list would be ambiguous.
        parts.extend(self.routes_added.iter().map(|r| format!("route {r} added")));
        parts.extend(
            self.routes_removed
                .iter()
                .map(|r| format!("route {r} removed")),
        );
        write!(f, "group {}: {}", self.name, parts.join(", "))
    }
}

impl fmt::Display for InterfaceDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = &self.standby {
            parts.push(format!("standby {} -> {}", c.old, c.new));
        }
        if let Some(c) = &self.test_address {
            let show = |a: &Option<Ipv4Cidr>| a.map_or("none".to_string(), |a| a.to_string());
            parts.push(format!("test address {} -> {}", show(&c.old), show(&c.new)));
        }
        if !self.data_addresses_added.is_empty() || !self.data_addresses_removed.is_empty() {
            parts.push(format!(
                "data addresses {}",
                signed_list(&self.data_addresses_added, &self.data_addresses_removed)
            ));
        }
        write!(f, "interface {} {}", self.name, parts.join(", "))
    }
}

/// `+added -removed`, as a reload log shows set changes.
fn signed_list<T: fmt::Display>(added: &[T], removed: &[T]) -> String {
    let added = added.iter().map(|item| format!("+{item}"));
    let removed = removed.iter().map(|item| format!("-{item}"));
    added.chain(removed).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::testing::*;

    fn base() -> Config {
        parse(
            "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"192.0.2.2\"]\n\
             [[group.interface]]\nname = \"h0\"\ntest_address = \"192.0.2.21/24\"\n\
             data_addresses = [\"192.0.2.19/24\", \"2001:db8::19/64\"]\n\
             [[group.interface]]\nname = \"h1\"\ndata_addresses = [\"192.0.2.20/24\"]\n\
             [[group.interface]]\nname = \"h2\"\nstandby = true\ntest_address = \"192.0.2.23/24\"\n\
             [[group]]\nname = \"g1\"\n[[group.interface]]\nname = \"h5\"\n\
             data_addresses = [\"198.51.100.5/24\"]\n",
        )
        .unwrap()
    }

    fn group_mut<'c>(config: &'c mut Config, name: &str) -> &'c mut GroupConfig {
        config.groups.iter_mut().find(|g| g.name == name).unwrap()
    }

    fn interface_mut<'c>(
        config: &'c mut Config,
        group: &str,
        name: &str,
    ) -> &'c mut InterfaceConfig {
        group_mut(config, group)
            .interfaces
            .iter_mut()
            .find(|i| i.name == name)
            .unwrap()
    }

    #[test]
    fn identical_configs_have_an_empty_diff() {
        let diff = base().diff(&base());
        assert!(diff.is_empty());
        assert_eq!(diff, ConfigDiff::default());
        assert_eq!(diff.to_string(), "no changes");
    }

    #[test]
    fn reordering_is_not_a_change() {
        let mut new = base();
        new.groups.reverse();
        group_mut(&mut new, "g0").interfaces.reverse();
        group_mut(&mut new, "g0").targets.reverse();
        interface_mut(&mut new, "g0", "h0").data_addresses.reverse();
        assert!(base().diff(&new).is_empty());
    }

    #[test]
    fn daemon_tunables_diff() {
        let mut new = base();
        new.daemon.failure_detection_time = Duration::from_millis(500);
        new.daemon.failback = false;
        new.daemon.bpf_pin_dir = "/sys/fs/bpf/other".into();
        let diff = base().diff(&new);
        assert_eq!(
            diff.daemon,
            vec![
                DaemonChange::FailureDetectionTime(Change {
                    old: Duration::from_secs(10),
                    new: Duration::from_millis(500)
                }),
                DaemonChange::Failback(Change {
                    old: true,
                    new: false
                }),
                DaemonChange::BpfPinDir(Change {
                    old: "/sys/fs/bpf/mpath".into(),
                    new: "/sys/fs/bpf/other".into()
                }),
            ]
        );
        assert!(diff.groups_added.is_empty() && diff.groups_removed.is_empty());
        assert!(diff.groups_changed.is_empty());
        assert_eq!(
            diff.to_string(),
            "failure_detection_time_ms 10000 -> 500; failback true -> false; \
             bpf_pin_dir /sys/fs/bpf/mpath -> /sys/fs/bpf/other"
        );

        let mut new = base();
        new.daemon.track_interfaces_only_with_groups = false;
        new.daemon.metrics_listen = "[::1]:9100".parse().unwrap();
        new.daemon.socket = "/tmp/s".into();
        assert_eq!(base().diff(&new).daemon.len(), 3);
    }

    #[test]
    fn groups_added_and_removed() {
        let old = base();
        let mut new = base();
        let g1 = new.groups.remove(1);
        let g2 = GroupConfig {
            name: "g2".into(),
            targets: vec![],
            interfaces: vec![InterfaceConfig {
                name: "h9".into(),
                test_address: None,
                data_addresses: vec![cidr("203.0.113.9/24")],
                standby: false,
            }],
            spread: SpreadMode::Routes,
            routes: vec![],
            probe_rx: ProbeRx::Tc,
        };
        new.groups.push(g2.clone());
        let diff = old.diff(&new);
        assert_eq!(diff.groups_added, vec![g2]);
        assert_eq!(diff.groups_removed, vec![g1]);
        assert!(diff.groups_changed.is_empty() && diff.daemon.is_empty());
        assert_eq!(diff.to_string(), "group g2 added; group g1 removed");
    }

    #[test]
    fn targets_diff() {
        let mut new = base();
        group_mut(&mut new, "g0").targets = vec![ip("192.0.2.2"), ip("2001:db8::1")];
        let diff = base().diff(&new);
        assert_eq!(
            diff.groups_changed,
            vec![GroupDiff {
                name: "g0".into(),
                targets_added: vec![ip("2001:db8::1")],
                targets_removed: vec![ip("192.0.2.1")],
                interfaces_added: vec![],
                interfaces_removed: vec![],
                interfaces_changed: vec![],
                spread: None,
                probe_rx: None,
                routes_added: vec![],
                routes_removed: vec![],
            }]
        );
        assert_eq!(
            diff.to_string(),
            "group g0: targets +2001:db8::1 -192.0.2.1"
        );
    }

    #[test]
    fn interfaces_added_removed_and_moved_between_groups() {
        let old = base();
        let mut new = base();
        let h1 = group_mut(&mut new, "g0").interfaces.remove(1);
        group_mut(&mut new, "g1").interfaces.push(h1.clone());
        let h3 = InterfaceConfig {
            name: "h3".into(),
            test_address: Some(v4cidr("192.0.2.24/24")),
            data_addresses: vec![],
            standby: false,
        };
        group_mut(&mut new, "g0").interfaces.push(h3.clone());
        let diff = old.diff(&new);
        assert_eq!(diff.groups_changed.len(), 2);
        let g0 = &diff.groups_changed[0];
        assert_eq!(g0.name, "g0");
        assert_eq!(g0.interfaces_added, vec![h3]);
        assert_eq!(g0.interfaces_removed, vec![h1.clone()]);
        assert!(g0.interfaces_changed.is_empty());
        let g1 = &diff.groups_changed[1];
        assert_eq!(g1.name, "g1");
        assert_eq!(g1.interfaces_added, vec![h1]);
        assert!(g1.interfaces_removed.is_empty() && g1.targets_added.is_empty());
        assert_eq!(
            diff.to_string(),
            "group g0: interface h3 added, interface h1 removed; group g1: interface h1 added"
        );
    }

    #[test]
    fn interface_changes_are_precise() {
        let mut new = base();
        let h0 = interface_mut(&mut new, "g0", "h0");
        h0.test_address = Some(v4cidr("192.0.2.31/24"));
        // 2001:db8::19 kept; 192.0.2.19/24 becomes /25: the kernel needs delete + add.
        h0.data_addresses = vec![
            cidr("2001:db8::19/64"),
            cidr("192.0.2.19/25"),
            cidr("192.0.2.29/24"),
        ];
        let h2 = interface_mut(&mut new, "g0", "h2");
        h2.standby = false;
        h2.test_address = None;
        let diff = base().diff(&new);
        assert_eq!(diff.groups_changed.len(), 1);
        assert_eq!(
            diff.groups_changed[0].interfaces_changed,
            vec![
                InterfaceDiff {
                    name: "h0".into(),
                    standby: None,
                    test_address: Some(Change {
                        old: Some(v4cidr("192.0.2.21/24")),
                        new: Some(v4cidr("192.0.2.31/24"))
                    }),
                    data_addresses_added: vec![cidr("192.0.2.19/25"), cidr("192.0.2.29/24")],
                    data_addresses_removed: vec![cidr("192.0.2.19/24")],
                },
                InterfaceDiff {
                    name: "h2".into(),
                    standby: Some(Change {
                        old: true,
                        new: false
                    }),
                    test_address: Some(Change {
                        old: Some(v4cidr("192.0.2.23/24")),
                        new: None
                    }),
                    data_addresses_added: vec![],
                    data_addresses_removed: vec![],
                },
            ]
        );
        assert_eq!(
            diff.to_string(),
            "group g0: interface h0 test address 192.0.2.21/24 -> 192.0.2.31/24, \
             data addresses +192.0.2.19/25 +192.0.2.29/24 -192.0.2.19/24, \
             interface h2 standby true -> false, test address 192.0.2.23/24 -> none"
        );
    }

    #[test]
    fn data_address_moving_between_interfaces() {
        let mut new = base();
        interface_mut(&mut new, "g0", "h1").data_addresses.clear();
        interface_mut(&mut new, "g0", "h0")
            .data_addresses
            .push(cidr("192.0.2.20/24"));
        let diff = base().diff(&new);
        let changed = &diff.groups_changed[0].interfaces_changed;
        assert_eq!(changed.len(), 2);
        assert_eq!(changed[0].name, "h0");
        assert_eq!(changed[0].data_addresses_added, vec![cidr("192.0.2.20/24")]);
        assert!(changed[0].data_addresses_removed.is_empty());
        assert_eq!(changed[1].name, "h1");
        assert_eq!(
            changed[1].data_addresses_removed,
            vec![cidr("192.0.2.20/24")]
        );
        assert!(changed[1].data_addresses_added.is_empty());
        assert!(
            changed
                .iter()
                .all(|c| c.standby.is_none() && c.test_address.is_none())
        );
    }

    fn route(to: &str, via: Option<&str>, metric: u32) -> RouteConfig {
        RouteConfig {
            to: cidr(to),
            via: via.map(ip),
            metric,
        }
    }

    #[test]
    fn route_table_and_rule_priority_changes_are_daemon_changes() {
        let mut new = base();
        new.daemon.route_table = 100;
        new.daemon.route_rule_priority = 1000;
        let diff = base().diff(&new);
        assert_eq!(
            diff.daemon,
            vec![
                DaemonChange::RouteTable(Change {
                    old: 28016,
                    new: 100
                }),
                DaemonChange::RouteRulePriority(Change {
                    old: 32765,
                    new: 1000
                }),
            ]
        );
        assert!(diff.groups_changed.is_empty());
        assert_eq!(
            diff.to_string(),
            "route_table 28016 -> 100; route_rule_priority 32765 -> 1000"
        );
    }

    #[test]
    fn carrier_hook_and_poll_changes_are_daemon_changes() {
        let mut new = base();
        new.daemon.carrier_hook = false;
        new.daemon.carrier_poll = None;
        let diff = base().diff(&new);
        assert_eq!(
            diff.daemon,
            vec![
                DaemonChange::CarrierHook(Change {
                    old: true,
                    new: false
                }),
                DaemonChange::CarrierPoll(Change {
                    old: Some(Duration::from_millis(10)),
                    new: None
                }),
            ]
        );
        assert_eq!(
            diff.to_string(),
            "carrier_hook true -> false; carrier_poll_ms 10 -> 0"
        );
    }

    #[test]
    fn spread_and_routes_diff() {
        let mut old = base();
        group_mut(&mut old, "g0").routes = vec![
            route("0.0.0.0/0", Some("192.0.2.1"), 0),
            route("198.51.100.0/24", None, 0),
        ];
        let mut new = old.clone();
        let g0 = group_mut(&mut new, "g0");
        g0.spread = SpreadMode::Datapath;
        // A new via is a new route: the kernel replaces the old one.
        g0.routes = vec![
            route("198.51.100.0/24", None, 0),
            route("0.0.0.0/0", Some("192.0.2.2"), 0),
            route("203.0.113.0/24", Some("192.0.2.1"), 5),
        ];
        let diff = old.diff(&new);
        assert_eq!(
            diff.groups_changed,
            vec![GroupDiff {
                name: "g0".into(),
                targets_added: vec![],
                targets_removed: vec![],
                interfaces_added: vec![],
                interfaces_removed: vec![],
                interfaces_changed: vec![],
                spread: Some(Change {
                    old: SpreadMode::Routes,
                    new: SpreadMode::Datapath
                }),
                probe_rx: None,
                routes_added: vec![
                    route("0.0.0.0/0", Some("192.0.2.2"), 0),
                    route("203.0.113.0/24", Some("192.0.2.1"), 5),
                ],
                routes_removed: vec![route("0.0.0.0/0", Some("192.0.2.1"), 0)],
            }]
        );
        assert_eq!(
            diff.to_string(),
            "group g0: spread routes -> datapath, route default via 192.0.2.2 added, \
             route 203.0.113.0/24 via 192.0.2.1 metric 5 added, \
             route default via 192.0.2.1 removed"
        );
    }

    #[test]
    fn routes_reordered_are_unchanged_and_moved_routes_leave_one_group_for_another() {
        let mut old = base();
        group_mut(&mut old, "g0").routes = vec![
            route("0.0.0.0/0", Some("192.0.2.1"), 0),
            route("2001:db8:1::/48", None, 0),
        ];
        let mut new = old.clone();
        group_mut(&mut new, "g0").routes.reverse();
        assert!(old.diff(&new).is_empty());

        let moved = group_mut(&mut new, "g0").routes.remove(0);
        group_mut(&mut new, "g1").routes.push(moved);
        let diff = old.diff(&new);
        assert_eq!(diff.groups_changed.len(), 2);
        assert_eq!(diff.groups_changed[0].routes_removed, vec![moved]);
        assert_eq!(diff.groups_changed[1].routes_added, vec![moved]);
        assert_eq!(
            diff.to_string(),
            "group g0: route 2001:db8:1::/48 removed; group g1: route 2001:db8:1::/48 added"
        );
    }
}
