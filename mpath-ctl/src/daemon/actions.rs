//! The one interpreter of the state machines' decisions: each [`Action`] is logged, counted
//! and carried out here, in one place.

use std::time::Instant;

use tracing::Level;

use crate::{
    core::identity::GroupId,
    core::state::{Action, Event, FailureCause, IfState},
    daemon::logging::FAILURES_TARGET,
    daemon::{Daemon, host_io::HostIo, reconcile::Dirty},
};

impl<H: HostIo> Daemon<H> {
    /// Feeds one event to a group's state machine and carries out its decisions.
    pub(super) fn handle(&mut self, id: GroupId, event: Event, now: Instant) {
        match self.groups[id].fsm.handle(event, now) {
            Ok(actions) => self.apply(id, actions),
            Err(e) => tracing::debug!("group {}: {e}", self.groups[id].name()),
        }
    }

    /// Carries out a state machine's decisions: logs, metrics, target flushes and offline
    /// marks at once; a change of the usable set marks the group's addresses, bucket table,
    /// memberships, routes and sources out of date, for [`Daemon::reconcile`] to bring in
    /// line at the end of the turn.
    pub(super) fn apply(&mut self, id: GroupId, actions: Vec<Action>) {
        let name = self.groups[id].config.name.clone();
        let name = name.as_str();
        for action in &actions {
            let group = &mut self.groups[id];
            let mut line = action.log_line(&group.fsm);
            let nic_name = action.nic().map(|slot| group.fsm.nic_name(slot).to_owned());
            let nic_name = nic_name.as_deref();
            let log = |level, line| log(level, name, action, nic_name, line);
            match action {
                Action::Failed { nic, cause } => {
                    self.metrics
                        .failure(name, nic_name.unwrap_or_default(), *cause);
                    if *cause == FailureCause::ProbesLost
                        && let Some(n) = group.nic(*nic)
                    {
                        let losses: Vec<String> =
                            n.probing.iter().map(|p| p.prober.loss_report()).collect();
                        line = line.map(|l| format!("{l}: probes {}", losses.join("; ")));
                    }
                    log(Level::WARN, line);
                    if *cause == FailureCause::ProbesLost
                        && let Some(n) = group.nics.iter_mut().find(|n| n.slot == *nic)
                    {
                        match self.host.counters(n.slot) {
                            Ok(c) => n.rx.observe(c.rx_packets, self.host.now()),
                            Err(e) => tracing::debug!("receive counter of {}: {e}", n.name),
                        }
                        let line = n.rx.explain_failure(&n.name);
                        tracing::warn!(group = name, interface = n.name.as_str(), "{line}");
                    }
                }
                Action::GroupFailed => {
                    self.metrics.group_failure(name);
                    log(Level::WARN, line);
                }
                Action::LinkDown { .. }
                | Action::FamilyFailed { .. }
                | Action::DuplicateMac { .. }
                | Action::DatapathLost { .. } => log(Level::WARN, line),
                Action::StillFailed { .. } => log(Level::INFO, line),
                Action::Repaired { nic } => {
                    self.metrics.repair(name, nic_name.unwrap_or_default());
                    log(Level::INFO, line);
                    self.report_memberships(id, *nic);
                }
                Action::FlushTargets { nics } => {
                    log(Level::INFO, line);
                    for nic in nics {
                        for p in group.nic_mut(*nic).into_iter().flat_map(|n| &mut n.probing) {
                            p.prober.all_targets_silent();
                        }
                    }
                }
                Action::Offlined { nic } | Action::Onlined { nic } => {
                    log(Level::INFO, line);
                    let offline = matches!(action, Action::Offlined { .. });
                    if let Some(ifindex) = group.ifindex_in(*nic)
                        && let Err(e) = self
                            .host
                            .update_nic(ifindex, |info| info.set_offline(offline))
                    {
                        let nic = nic_name.unwrap_or_default();
                        tracing::warn!(
                            group = name,
                            interface = nic,
                            "{nic}: keeping its offline state in the datapath: {e}"
                        );
                    }
                }
                Action::UsableSetChanged => group.dirty.mark(Dirty::ALL),
                Action::Appeared { .. }
                | Action::Disappeared { .. }
                | Action::LinkUp { .. }
                | Action::RepairDeferred { .. }
                | Action::Activate { .. }
                | Action::Deactivate { .. }
                | Action::MacUnique { .. }
                | Action::DatapathAttached { .. }
                | Action::GroupRepaired { .. }
                | Action::FamilyRepaired { .. } => log(Level::INFO, line),
            }
        }
        // Probers trust RTTs only while their NIC works (not failed, not offline).
        let now = self.host.now();
        let group = &mut self.groups[id];
        for nic in &mut group.nics {
            let working = matches!(group.fsm.interface_state(nic.slot), Some(IfState::Ok));
            for p in &mut nic.probing {
                p.prober.set_nic_failed(!working, now);
            }
        }
    }
}

/// Logs an action's line, with its group and NIC as fields for the journal; a failure's
/// is never held back as a repeat ([`FAILURES_TARGET`]).
fn log(level: Level, group: &str, action: &Action, interface: Option<&str>, line: Option<String>) {
    let Some(line) = line else { return };
    let failure = matches!(
        action,
        Action::Failed { .. } | Action::GroupFailed | Action::FlushTargets { .. }
    );
    match (level == Level::WARN, failure) {
        (true, true) => tracing::warn!(target: FAILURES_TARGET, group, interface, "{line}"),
        (true, false) => tracing::warn!(group, interface, "{line}"),
        (false, _) => tracing::info!(group, interface, "{line}"),
    }
}
