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
            let mut line = action.log_line(name);
            match action {
                Action::Failed { nic, cause } => {
                    self.metrics.failure(name, nic, *cause);
                    if *cause == FailureCause::ProbesLost
                        && let Some(n) = group.nic(nic)
                    {
                        let losses: Vec<String> =
                            n.probing.iter().map(|p| p.prober.loss_report()).collect();
                        line = line.map(|l| format!("{l}: probes {}", losses.join("; ")));
                    }
                    log(Level::WARN, name, action, line);
                    if *cause == FailureCause::ProbesLost
                        && let Some(n) = group.nics.iter_mut().find(|n| n.name == *nic)
                    {
                        match self.host.counters(n.slot) {
                            Ok(c) => n.rx.observe(c.rx_packets, self.host.now()),
                            Err(e) => tracing::debug!("receive counter of {nic}: {e}"),
                        }
                        let line = n.rx.explain_failure(nic);
                        tracing::warn!(group = name, interface = nic.as_str(), "{line}");
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
                    self.report_memberships(id, nic);
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
                        tracing::warn!(
                            group = name,
                            interface = nic.as_str(),
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
                | Action::FamilyRepaired { .. } => log(Level::INFO, name, action, line),
            }
        }
        // Probers trust RTTs only while their NIC works (not failed, not offline).
        let now = self.host.now();
        let group = &mut self.groups[id];
        for nic in &mut group.nics {
            let working = matches!(group.fsm.interface_state(&nic.name), Some(IfState::Ok));
            for p in &mut nic.probing {
                p.prober.set_nic_failed(!working, now);
            }
        }
    }
}

/// Logs an action's line, with its group and NIC as fields for the journal; a failure's
/// is never held back as a repeat ([`FAILURES_TARGET`]).
fn log(level: Level, group: &str, action: &Action, line: Option<String>) {
    let Some(line) = line else { return };
    let interface = action.nic();
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
