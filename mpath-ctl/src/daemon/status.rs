//! The status views and the metrics snapshot.

use std::net::IpAddr;

use crate::{
    api::metrics,
    api::views::{
        AddressRow, GroupRow, InterfaceRow, MembershipRow, Status, TargetHealth, TargetRow,
    },
    core::failover::AddressState,
    core::state::{InterfaceStatus, LinkState, ProbeStatus, UnusableReason},
    core::target::{TargetMode, TargetSource},
    daemon::{Daemon, host_io::HostIo},
};

impl<H: HostIo> Daemon<H> {
    /// What a scrape shows of the groups and the datapath's counters, as they are now.
    pub(super) fn metrics_snapshot(&self) -> metrics::Snapshot {
        let mut snapshot = metrics::Snapshot::default();
        for g in &self.groups {
            snapshot.groups.push(metrics::GroupSnapshot {
                view: g.fsm.view(),
                fdt: g.fdt.view(),
                interfaces: g.fsm.interface_views(),
                addresses: g
                    .addresses
                    .iter()
                    .map(|a| (a.cidr.to_string(), g.current_name(a)))
                    .collect(),
            });
            for n in &g.nics {
                let read = self
                    .host
                    .counters(n.slot)
                    .and_then(|c| Ok((c, self.host.replies_over_budget(n.slot)?)));
                match read {
                    Ok((counters, replies_over_budget)) => {
                        snapshot.datapath.push(metrics::DatapathSnapshot {
                            group: g.config.name.clone(),
                            interface: n.name.clone(),
                            counters,
                            replies_over_budget,
                        })
                    }
                    Err(e) => tracing::debug!("metrics: counters of {}: {e}", n.name),
                }
            }
        }
        snapshot.source_hook_attached = self.source_hook.attached;
        let (main, table) = self.routing.sizes();
        snapshot.routes = metrics::RouteSizes {
            main,
            table,
            source_prefixes: self.source_hook.prefixes.clone(),
        };
        for g in &self.groups {
            match self.host.source_counters(g.id) {
                Ok(c) => snapshot.sources.push((g.config.name.clone(), c)),
                Err(e) => tracing::debug!("metrics: source counters of {}: {e}", g.name()),
            }
        }
        snapshot.strays = self
            .strays
            .iter()
            .map(|(name, (_, isolated))| (name.clone(), *isolated))
            .collect();
        snapshot.ungrouped = self
            .ungrouped
            .iter()
            .map(|(name, up)| metrics::UngroupedSnapshot {
                interface: name.clone(),
                link_up: *up,
            })
            .collect();
        snapshot
    }

    /// The groups, NICs and probe targets whose metric series are current.
    pub(super) fn live_series(&self) -> metrics::LiveSeries {
        let mut live = metrics::LiveSeries::default();
        for g in &self.groups {
            let group = g.config.name.clone();
            for n in &g.nics {
                for p in &n.probing {
                    live.targets.extend(
                        p.prober
                            .targets()
                            .view()
                            .into_iter()
                            .map(|t| (group.clone(), n.name.clone(), t.address)),
                    );
                }
                live.nics.insert((group.clone(), n.name.clone()));
            }
            live.groups.insert(group);
        }
        live
    }

    /// The hash of the groups' and NICs' states, which the STATUS= line summarises: the
    /// line is made again only when this changes.
    pub(super) fn hash_states(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        for g in &self.groups {
            g.fsm.hash_states(&mut hasher);
        }
        std::hash::Hasher::finish(&hasher)
    }

    pub(super) fn status(&self) -> Status {
        let mut status = Status::default();
        for g in &self.groups {
            let view = g.fsm.view();
            status.groups.push(GroupRow {
                group: view.group.clone(),
                state: view.state,
                fdt_ms: g.fdt.effective().as_millis() as u64,
                active: view.active.clone(),
                inactive: view.inactive.clone(),
                unusable: view.unusable.clone(),
                held_routes: g.held_routes.iter().map(ToString::to_string).collect(),
            });
            status
                .interfaces
                .extend(g.fsm.interface_views().into_iter().map(|i| {
                    InterfaceRow {
                        datapath_error: g
                            .nic_named(&i.interface)
                            .and_then(|n| n.datapath_error.clone()),
                        interface: i.interface,
                        group: i.group,
                        active: i.active,
                        flags: i.flags,
                        link: i.link,
                        probe: i.probe,
                        probe_ipv4: i.probe_ipv4,
                        probe_ipv6: i.probe_ipv6,
                        state: i.state,
                        unusable: i.unusable,
                    }
                }));
            let outbound: Vec<String> = g
                .fsm
                .usable_interfaces()
                .into_iter()
                .map(str::to_string)
                .collect();
            status
                .memberships
                .extend(g.followed.iter().map(|f| MembershipRow {
                    address: f.group,
                    group: g.config.name.clone(),
                    from: f.from.clone(),
                    on: f.on.clone(),
                }));
            status
                .addresses
                .extend(g.addresses.iter().map(|a| AddressRow {
                    address: a.cidr.to_string(),
                    state: if a.current.is_some() {
                        AddressState::Up
                    } else {
                        AddressState::Down
                    },
                    group: g.config.name.clone(),
                    inbound: g.current_name(a),
                    outbound: if a.current.is_some() {
                        outbound.clone()
                    } else {
                        Vec::new()
                    },
                }));
            for n in &g.nics {
                if n.probing.is_empty() {
                    status.targets.push(TargetRow {
                        interface: n.name.clone(),
                        mode: TargetMode::Disabled,
                        test_address: None,
                        targets: Vec::new(),
                        health: Vec::new(),
                        unknown_replies: 0,
                    });
                }
                status.targets.extend(n.probing.iter().map(|p| {
                    let view = p.prober.view();
                    let targets: Vec<IpAddr> = p.prober.targets().active().collect();
                    // With no target known mpathd is discovering by multicast echo; hosts
                    // found so are probed, alone or standing in for silent routers.
                    let multicast = targets.is_empty()
                        || view.targets.iter().any(|t| {
                            matches!(t.source, TargetSource::Discovered | TargetSource::StandIn)
                        });
                    TargetRow {
                        interface: n.name.clone(),
                        mode: if multicast {
                            TargetMode::Multicast
                        } else {
                            TargetMode::Routes
                        },
                        test_address: Some(view.test_address),
                        targets,
                        health: view
                            .targets
                            .iter()
                            .map(|t| TargetHealth {
                                address: t.address,
                                source: t.source,
                                state: t.state,
                                rtt_avg_us: t.rtt_avg_us,
                                rtt_dev_us: t.rtt_dev_us,
                                rtt_bound_us: t.rtt_bound_us,
                                sent: t.probes.sent,
                                answered: t.probes.answered,
                                lost: t.probes.lost,
                            })
                            .collect(),
                        unknown_replies: view.unknown,
                    }
                }));
            }
        }
        status
            .interfaces
            .extend(self.ungrouped.iter().map(|(name, up)| InterfaceRow {
                interface: name.clone(),
                group: String::new(),
                active: false,
                flags: Vec::new(),
                link: if *up { LinkState::Up } else { LinkState::Down },
                probe: ProbeStatus::Disabled,
                probe_ipv4: None,
                probe_ipv6: None,
                state: if *up {
                    InterfaceStatus::Ok
                } else {
                    InterfaceStatus::Failed
                },
                unusable: (!*up).then_some(UnusableReason::LinkDown),
                datapath_error: None,
            }));
        status
    }
}
