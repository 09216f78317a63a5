//! The one interpreter of the state machines' decisions: each [`Action`] is logged, counted
//! and carried out here, in one place.

use std::time::Instant;

use tracing::Level;

use crate::{
    core::state::{Action, Event, FailureCause, IfState},
    daemon::{Daemon, group::GroupRuntime, host_io::HostIo},
};

impl<H: HostIo> Daemon<H> {
    /// Feeds one event to a group's state machine and carries out its decisions.
    pub(super) async fn handle(&mut self, gi: usize, event: Event, now: Instant) {
        match self.groups[gi].fsm.handle(event, now) {
            Ok(actions) => self.apply(gi, actions, false).await,
            Err(e) => tracing::debug!("group {}: {e}", self.groups[gi].name()),
        }
    }

    /// Carries out a state machine's decisions: logs, metrics, target flushes, and when the
    /// usable set changed, the bucket table, the data addresses, the multicast memberships
    /// that follow them and the routes. `replan`
    /// forces the latter (at start and after a resync, where the kernel may disagree with
    /// us).
    pub(super) async fn apply(&mut self, gi: usize, actions: Vec<Action>, replan: bool) {
        let mut usable_changed = replan;
        let name = self.groups[gi].config.name.clone();
        let name = name.as_str();
        for action in &actions {
            let group = &mut self.groups[gi];
            let line = action.log_line(name);
            match action {
                Action::Failed { nic, cause } => {
                    self.metrics.failure(name, nic, *cause);
                    log(Level::WARN, name, action, line);
                    if *cause == FailureCause::ProbesLost
                        && let Some(n) = group.nics.iter_mut().find(|n| n.name == *nic)
                    {
                        match self.host.counters(n.slot) {
                            Ok(c) => n.rx.observe(c.rx_packets, self.host.now()),
                            Err(e) => tracing::debug!("receive counter of {nic}: {e}"),
                        }
                        tracing::warn!("{}", n.rx.explain_failure(nic));
                    }
                }
                Action::GroupFailed => {
                    self.metrics.group_failure(name);
                    log(Level::WARN, name, action, line);
                }
                Action::LinkDown { .. }
                | Action::FamilyFailed { .. }
                | Action::DuplicateMac { .. }
                | Action::DatapathLost { .. } => log(Level::WARN, name, action, line),
                Action::StillFailed { .. } => log(Level::INFO, name, action, line),
                Action::Repaired { nic } => {
                    self.metrics.repair(name, nic);
                    log(Level::INFO, name, action, line);
                    self.report_memberships(gi, nic);
                }
                Action::FlushTargets { nics } => {
                    log(Level::INFO, name, action, line);
                    for nic in nics {
                        for p in group.nic_mut(nic).into_iter().flat_map(|n| &mut n.probing) {
                            p.prober.all_targets_silent();
                        }
                    }
                }
                Action::Offlined { nic } | Action::Onlined { nic } => {
                    log(Level::INFO, name, action, line);
                    let offline = matches!(action, Action::Offlined { .. });
                    if let Some(ifindex) = group.ifindex_of(nic)
                        && let Err(e) = self
                            .host
                            .update_nic(ifindex, |info| info.set_offline(offline))
                    {
                        tracing::warn!("{nic}: keeping its offline state in the datapath: {e}");
                    }
                }
                Action::UsableSetChanged => usable_changed = true,
                Action::Appeared { .. }
                | Action::Disappeared { .. }
                | Action::LinkUp { .. }
                | Action::RepairDeferred { .. }
                | Action::Activate { .. }
                | Action::Deactivate { .. }
                | Action::MacUnique { .. }
                | Action::DatapathAttached { .. }
                | Action::GroupRepaired { .. }
                | Action::FamilyRepaired { .. } => log(Level::INFO, name, action, line),
            }
        }
        // Probers trust RTTs only while their NIC works (not failed, not offline).
        let now = self.host.now();
        let group = &mut self.groups[gi];
        for nic in &mut group.nics {
            let working = matches!(group.fsm.interface_state(&nic.name), Some(IfState::Ok));
            for p in &mut nic.probing {
                p.prober.set_nic_failed(!working, now);
            }
        }
        if usable_changed {
            let placed = |group: &GroupRuntime| -> Vec<Option<String>> {
                group.addresses.iter().map(|a| a.current.clone()).collect()
            };
            let before = placed(&self.groups[gi]);
            let group = &mut self.groups[gi];
            let usable: Vec<String> = group
                .fsm
                .usable_interfaces()
                .into_iter()
                .map(String::from)
                .collect();
            let leaving = group.serving.iter().any(|n| !usable.contains(n));
            // NICs leave the routes before their data addresses leave them: through a NIC
            // holding only its test address (a /32) the kernel gives new flows that address
            // as their source, which the egress program keeps on that NIC, failed or not.
            // NICs join them only after their addresses came, for the same reason.
            let serving_changed = group.serving != usable;
            group.joining = usable
                .iter()
                .filter(|n| !group.serving.contains(n))
                .cloned()
                .collect();
            // A resync (`replan`) updates the routes once, after every group's NICs are set
            // up: before that, a later group's NICs look absent and its routes unserved.
            if !replan && leaving {
                self.reform_groups(now).await;
            }
            // Then addresses: all inbound traffic to a moved address waits for them, while
            // only the outbound flows of NICs joining the routes wait for the rest.
            self.move_addresses(gi).await;
            self.write_table(gi);
            self.follow_memberships(gi);
            let group = &mut self.groups[gi];
            group.joining.clear();
            group.serving = usable;
            // A role change that moved nothing and left the usable NICs alone (a NIC
            // answering again after a group failure) changes no route.
            if !replan && (serving_changed || placed(&self.groups[gi]) != before) {
                self.reform_groups(now).await;
            }
        }
    }
}

/// Logs an action's line, with its group and NIC as fields for the journal.
fn log(level: Level, group: &str, action: &Action, line: Option<String>) {
    let Some(line) = line else { return };
    let interface = action.nic();
    if level == Level::WARN {
        tracing::warn!(group, interface, "{line}");
    } else {
        tracing::info!(group, interface, "{line}");
    }
}
