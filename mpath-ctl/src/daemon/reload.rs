//! SIGHUP: applying the difference between the running and the new configuration.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use crate::{
    api::{control::Reply, metrics::ReloadResult},
    config::{Config, GroupConfig, diff::DaemonChange},
    core::reconcile,
    core::state::{Action, Event, FailureCause, IfState, OfflineReason},
    daemon::{Daemon, group::GroupRuntime, host::check_on, host_io::HostIo},
};

impl<H: HostIo> Daemon<H> {
    /// SIGHUP: reads the configuration again and applies the difference. Groups that did not
    /// change are not touched; a changed group is rebuilt on top of what the kernel holds
    /// (addresses stay where they are, a NIC failed by probes stays failed until repaired);
    /// a removed group or NIC loses the datapath, its test address and its data addresses.
    /// A bad file is refused with its reason and nothing changes. The result is logged,
    /// counted in the metrics and returned as the reply to `mpathctl reload`: `Refused` when
    /// the file was refused or applying it failed, so that `systemctl reload` fails too.
    pub(super) async fn reload(&mut self) -> Reply {
        let (result, message) = match self.apply_new_config().await {
            Ok(ended) => ended,
            Err(e) => {
                let e = super::logging::with_causes(e.as_ref());
                tracing::error!("reload: {e}");
                let message = format!("reload failed part way (what could be applied was): {e}");
                (ReloadResult::Failed, message)
            }
        };
        self.metrics.reload(result);
        match result {
            ReloadResult::Applied | ReloadResult::Unchanged => Reply::Done { message },
            ReloadResult::Refused | ReloadResult::Failed => Reply::Refused { message },
        }
    }

    /// How the reload ended, with a line for `mpathctl reload`.
    async fn apply_new_config(&mut self) -> anyhow::Result<(ReloadResult, String)> {
        const REFUSED: &str = "reload refused, the running configuration stays";
        let mut new = match Config::load(&self.paths.config, Some(&self.paths.defaults)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{REFUSED}: {e}");
                return Ok((ReloadResult::Refused, format!("{REFUSED}: {e}")));
            }
        };
        for warning in &new.warnings {
            tracing::warn!("reload: {warning}");
        }
        // The running groups' NICs count as the groups': a NIC leaving them loses its
        // addresses by mpathd's own hand.
        let running: Vec<String> = self
            .groups
            .iter()
            .flat_map(|g| g.nics.iter().map(|n| n.name.clone()))
            .collect();
        let check = check_on(&self.host, &new, &running).await?;
        if !check.refusals.is_empty() {
            for refusal in &check.refusals {
                tracing::error!("{REFUSED}: {refusal}");
            }
            let reasons: Vec<String> = check.refusals.iter().map(ToString::to_string).collect();
            return Ok((
                ReloadResult::Refused,
                format!("{REFUSED}: {}", reasons.join("; ")),
            ));
        }
        for warning in &check.warnings {
            tracing::warn!("reload: {warning}");
        }
        let diff = self.config.diff(&new);
        if diff.is_empty() {
            tracing::info!("reload: the configuration is unchanged");
            return Ok((
                ReloadResult::Unchanged,
                "the configuration is unchanged".into(),
            ));
        }
        tracing::info!("reload: {diff}");
        let applied = format!("reloaded: {diff}");
        let mut hook_changed = false;
        let mut rebuild: BTreeSet<String> =
            diff.groups_changed.iter().map(|g| g.name.clone()).collect();
        for change in &diff.daemon {
            match change {
                DaemonChange::FailureDetectionTime(_) | DaemonChange::Failback(_) => {
                    rebuild.extend(self.groups.iter().map(|g| g.config.name.clone()));
                }
                DaemonChange::TrackInterfacesOnlyWithGroups(_) => self.ungrouped.clear(),
                DaemonChange::MetricsListen(_)
                | DaemonChange::Socket(_)
                | DaemonChange::BpfPinDir(_)
                | DaemonChange::RouteTable(_)
                | DaemonChange::RouteRulePriority(_)
                | DaemonChange::TcAttach(_)
                | DaemonChange::CarrierHook(_) => {
                    tracing::warn!("reload: {change} takes effect when mpathd restarts");
                }
                DaemonChange::SourceSelection(_) => hook_changed = true,
                // The carrier hook, where it runs, needs no reading.
                DaemonChange::CarrierPoll(c) if !self.carrier_hook => {
                    self.host.set_carrier_period(c.new);
                }
                DaemonChange::CarrierPoll(_) => {}
                // The resync below goes over every NIC outside the groups.
                DaemonChange::IsolateArp(_) => {}
            }
        }
        // Settings that only a restart can change keep their running values.
        new.daemon.metrics_listen = self.config.daemon.metrics_listen;
        new.daemon.socket = self.config.daemon.socket.clone();
        new.daemon.bpf_pin_dir = self.config.daemon.bpf_pin_dir.clone();
        new.daemon.route_table = self.config.daemon.route_table;
        new.daemon.route_rule_priority = self.config.daemon.route_rule_priority;
        new.daemon.tc_attach = self.config.daemon.tc_attach;
        new.daemon.carrier_hook = self.config.daemon.carrier_hook;

        let removed: Vec<String> = diff
            .groups_removed
            .iter()
            .map(|g| g.name.clone())
            .chain(rebuild.iter().cloned())
            .collect();
        // What the rebuilt groups' members were going through carries over: an offline NIC
        // stays offline, a NIC failed by its probes stays failed until they repair it.
        let mut carry = BTreeMap::new();
        for name in removed {
            let Some(old) = self.groups.remove(&name) else {
                continue;
            };
            let states = old
                .nics
                .iter()
                .filter_map(|n| old.fsm.interface_state(n.slot).map(|s| (n.name.clone(), s)))
                .collect();
            carry.insert(name.clone(), states);
            let kept = new.group(&name);
            self.retire_group(old, kept).await;
        }
        self.config = new.clone();
        if hook_changed {
            self.set_up_source_hook();
        }
        self.metrics.declare_groups(&new.groups);
        for g in &new.groups {
            if self.groups.by_name(&g.name).is_none() {
                self.add_group(g)?;
                rebuild.insert(g.name.clone());
            }
        }
        self.forget_retired_sources();
        self.resync(&rebuild, &carry).await?;
        Ok((ReloadResult::Applied, applied))
    }

    /// Takes down what an old group runtime set up that the new configuration (`kept`, the
    /// group's new definition if it still exists) no longer has (see
    /// [`reconcile::retire`]).
    async fn retire_group(&mut self, old: GroupRuntime, kept: Option<&GroupConfig>) {
        self.leave_followed(&old);
        let retirement = reconcile::retire(&old.holdings(), kept);
        for (ifindex, test) in retirement.test_addresses {
            if let Err(e) = self.host.del_address(ifindex, test.host()).await {
                tracing::warn!("{e}");
            }
            if let std::net::IpAddr::V4(v4) = test.addr()
                && let Err(e) = self.host.remove_test_address(v4)
            {
                tracing::warn!("{e}");
            }
        }
        for (nic, ifindex) in retirement.leaving {
            self.host.forget(ifindex);
            if let Some(n) = old.nic_named(&nic)
                && let Err(e) = self.host.clear_counters(n.slot)
            {
                tracing::warn!(interface = %nic, "{nic}: {e}");
            }
            self.groups.release_slot(&nic);
            tracing::info!(group = old.name(), interface = %nic, "{nic} left group {}", old.name());
        }
        for (ifindex, cidr) in retirement.data_addresses {
            match self.host.del_address(ifindex, cidr).await {
                Ok(()) => tracing::info!("removed data address {cidr} (no longer configured)"),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if retirement.group_goes {
            self.groups.release_id(old.name());
            let empty = [0u32; mpath_common::BUCKETS_PER_GROUP as usize];
            if let Err(e) = self.host.write_table(old.id, &empty, |_| [0; 6]) {
                tracing::warn!(group = old.name(), "group {}: {e}", old.name());
            }
        }
    }
}

/// Replays members' states from before a reload rebuilt their group's state machine.
pub(super) fn carry_states(
    group: &mut GroupRuntime,
    states: &[(String, IfState)],
    now: Instant,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (nic, state) in states {
        let Some(slot) = group.nic_named(nic).map(|n| n.slot) else {
            continue;
        };
        let event = match state {
            // A duplicate hardware address is found again from the NICs' MACs, and missing
            // programs by attaching them.
            IfState::Offline {
                reason: OfflineReason::Admin,
                ..
            } => Event::Offline { nic: slot },
            IfState::Failed {
                cause: FailureCause::ProbesLost | FailureCause::TargetsUnreachable,
            } => Event::Adopt { nic: slot },
            _ => continue,
        };
        match group.fsm.handle(event, now) {
            Ok(more) => actions.extend(more),
            Err(e) => tracing::debug!("carrying {nic}'s state over the reload: {e}"),
        }
    }
    actions
}
