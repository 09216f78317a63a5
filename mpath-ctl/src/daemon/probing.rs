//! Probes: starting probers on NICs, sending probes on time, matching replies to probers,
//! and feeding what they conclude to the state machines.

use std::{net::IpAddr, time::Instant};

use mpath_common::{ProbeReply, Settings};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::sync::broadcast;

use crate::{
    api::views::ProbeRow,
    core::identity::{GroupId, NicSlot},
    core::probe::{ProbeEvent, ProbeOutcome, Prober, ReplyVerdict, TargetNotice},
    core::state::Event,
    core::target::{AddressFamily, TargetSet},
    daemon::{
        Daemon,
        group::{NicAt, Probing},
        host_io::HostIo,
    },
    net::address::IpCidr,
    net::probe_socket::monotonic_ns,
};

/// Replies to discovery echoes arrive from hosts that are not yet targets; the sequence
/// numbers of those echoes are remembered this long.
const DISCOVERY_MEMORY: usize = 8;

/// What every prober shares: the key of this run's probe tags, the randomness of probe
/// timing, and the stream of probe rows `mpathctl probes` follows.
pub(super) struct ProbeContext {
    /// The SipHash key of this run's probe tags (see [`mpath_common::probe_tag`]).
    key: [u64; 2],
    rng: StdRng,
    pub rows: broadcast::Sender<ProbeRow>,
}

impl ProbeContext {
    pub(super) fn new() -> ProbeContext {
        let mut rng = StdRng::from_os_rng();
        let key = rng.random();
        let (rows, _) = broadcast::channel(256);
        ProbeContext { key, rng, rows }
    }

    /// The datapath's settings for this run.
    pub(super) fn settings(&self) -> Settings {
        Settings {
            probe_key: self.key,
        }
    }
}

impl<H: HostIo> Daemon<H> {
    /// Opens the probe socket and the prober of a NIC for the family of `test` (its IPv4
    /// test address or its IPv6 link-local address); `None` (logged) when it cannot probe.
    pub(super) fn start_prober(
        &mut self,
        at: NicAt,
        test: IpCidr,
        now: Instant,
    ) -> Option<Probing> {
        let routes = self.probe_routes(at.group);
        let local = self.local_addresses();
        let group = &self.groups[at.group];
        let group_nics = group.ifindexes();
        let nic = group.nic(at.nic)?;
        let (name, ifindex) = (nic.name.as_str(), nic.ifindex?);
        let socket = match self.host.open_probe_socket(name, ifindex, test.addr()) {
            Ok(s) => s,
            // A link-local address in duplicate address detection cannot be bound yet;
            // `start_v6` starts the prober when the kernel reports the address done with it.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable && test.addr().is_ipv6() => {
                tracing::info!(
                    interface = name,
                    "{name}: IPv6 probing from {} starts once its duplicate address detection ends",
                    test.addr()
                );
                return None;
            }
            Err(e) => {
                tracing::error!(interface = name, "cannot probe from {name}: {e}");
                return None;
            }
        };
        let mut targets = match TargetSet::new(ifindex, test) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(interface = %name, "{name}: {e}");
                return None;
            }
        };
        let family = AddressFamily::of(test.addr());
        let configured: Vec<IpAddr> = group
            .config
            .targets
            .iter()
            .copied()
            .filter(|a| AddressFamily::of(*a) == family)
            .collect();
        for skipped in targets.set_configured(&configured) {
            tracing::warn!(interface = %name, "{name} skips a configured probe target: {skipped}");
        }
        targets.update_routes(&routes, &group_nics, &local);
        let prober = Prober::new(
            name.to_string(),
            targets,
            now,
            &mut self.probes.rng,
            &group.fdt,
        );
        Some(Probing {
            prober,
            socket,
            discovery: Vec::new(),
            had_targets: true,
        })
    }

    pub(super) fn probe_reply(&mut self, reply: ProbeReply) {
        let now = self.host.now();
        let from = reply.target();
        let Some(at) = self.groups.nic_at(reply.ifindex) else {
            return;
        };
        let family = AddressFamily::of(from);
        let local = self.local_addresses();
        let group = &mut self.groups[at.group];
        let Some(nic) = group.nics.iter_mut().find(|n| n.slot == at.nic) else {
            return;
        };
        let nic_name = nic.name.clone();
        let Some(probing) = nic.probing.iter_mut().find(|p| p.prober.family() == family) else {
            return;
        };
        if probing.discovery.contains(&reply.seq) {
            let added = probing.prober.add_discovered(&[from], &local, now);
            if added > 0 && probing.prober.targets().standing_in() {
                tracing::info!(
                    group = %group.config.name,
                    interface = %nic_name,
                    "probe target {from} on {nic_name} stands in for the silent configured \
                     targets or routers until one answers again"
                );
            } else if added > 0 {
                tracing::info!(
                    group = %group.config.name,
                    interface = %nic_name,
                    "discovered probe target {from} on {nic_name}"
                );
            }
            return;
        }
        match probing.prober.on_reply(reply, now, &mut group.fdt) {
            ReplyVerdict::Accepted(events) => {
                let probers = group
                    .nics
                    .iter()
                    .flat_map(|n| &n.probing)
                    .map(|p| &p.prober);
                if let Some(change) = group.fdt.try_lower(now, probers) {
                    tracing::info!(group = %group.config.name, "{}", change.message);
                }
                self.probe_events(at, family, events, Some(reply))
            }
            ReplyVerdict::Rejected(reason) => {
                self.metrics.reply_refused(group.name(), &nic_name, reason);
                tracing::debug!(
                    "{nic_name}: reply from {from} seq {} refused: {reason:?}",
                    reply.seq
                )
            }
        }
    }

    fn probe_events(
        &mut self,
        at: NicAt,
        family: AddressFamily,
        events: Vec<ProbeEvent>,
        reply: Option<ProbeReply>,
    ) {
        let now = self.host.now();
        for event in events {
            match event {
                ProbeEvent::Outcome(outcome) => {
                    let nic = self.groups.nic(at).name.clone();
                    let (target, answer, seq) = match outcome {
                        ProbeOutcome::Answered { target, .. } => {
                            (target, reply, reply.map_or(0, |r| r.seq))
                        }
                        ProbeOutcome::Lost { target, seq } => (target, None, seq),
                    };
                    self.publish_probe(at, family, target, seq, answer);
                    self.metrics
                        .probe_outcome(self.groups[at.group].name(), &nic, outcome);
                    let event = Event::Probe {
                        nic: at.nic,
                        family,
                        outcome,
                    };
                    self.handle(at.group, event, now);
                }
                ProbeEvent::Target(e) => {
                    let name = &self.groups.nic(at).name;
                    let group = self.groups[at.group].name();
                    tracing::info!(group, interface = %name, "{name}: {e}");
                }
                ProbeEvent::FdtRaised(change) => {
                    let group = self.groups[at.group].name();
                    tracing::warn!(group, "{}", change.message);
                }
            }
        }
    }

    fn publish_probe(
        &self,
        at: NicAt,
        family: AddressFamily,
        target: IpAddr,
        seq: u32,
        reply: Option<ProbeReply>,
    ) {
        if self.probes.rows.receiver_count() == 0 {
            return;
        }
        let nic = self.groups.nic(at);
        let Some(probing) = nic.probing.iter().find(|p| p.prober.family() == family) else {
            return;
        };
        let view = probing.prober.view();
        let stats = view.targets.iter().find(|t| t.address == target);
        let _: Result<_, _> = self.probes.rows.send(ProbeRow {
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_millis() as u64),
            interface: nic.name.clone(),
            seq,
            target,
            net_rtt_us: reply.map(|r| r.received_ns.saturating_sub(r.left_ns()) / 1000),
            rtt_us: reply.and(stats.and_then(|s| s.rtt_us)),
            rtt_avg_us: stats.and_then(|s| s.rtt_avg_us),
            rtt_dev_us: stats.and_then(|s| s.rtt_dev_us),
        });
    }

    /// Sends the probes of a group that are due, declares lost the ones that timed out, and
    /// tells the state machine when a prober's targets come or go.
    pub(super) fn probe_group(&mut self, id: GroupId, now: Instant) {
        let probers: Vec<(NicSlot, usize)> = self.groups[id]
            .nics
            .iter()
            .flat_map(|n| (0..n.probing.len()).map(move |pi| (n.slot, pi)))
            .collect();
        for (slot, pi) in probers {
            let at = NicAt {
                group: id,
                nic: slot,
            };
            let group = &mut self.groups[id];
            let Some(nic) = group.nics.iter_mut().find(|n| n.slot == slot) else {
                continue;
            };
            let name = nic.name.clone();
            if nic.rx.due(now) {
                match self.host.counters(nic.slot) {
                    Ok(c) => nic.rx.observe(c.rx_packets, now),
                    Err(e) => tracing::debug!("receive counter of {name}: {e}"),
                }
            }
            let Some(probing) = nic.probing.get_mut(pi) else {
                continue;
            };
            if probing.prober.next_probe_at() <= now {
                let key = self.probes.key;
                let transmit = probing.prober.send(now, &mut self.probes.rng, &group.fdt);
                if let Some(probe) = transmit.probe {
                    self.metrics
                        .probe_sent(&group.config.name, &name, probe.target);
                    if let Err(e) =
                        probing
                            .socket
                            .send(probe.target, probe.seq, key, monotonic_ns())
                    {
                        tracing::debug!("{e}");
                    }
                }
                if transmit.discover {
                    let seq: u32 = self.probes.rng.random();
                    let all_nodes = probing.prober.family().all_nodes();
                    if probing.discovery.len() == DISCOVERY_MEMORY {
                        probing.discovery.remove(0);
                    }
                    probing.discovery.push(seq);
                    if let Err(e) = probing.socket.send(all_nodes, seq, key, monotonic_ns()) {
                        tracing::debug!("{e}");
                    }
                }
            }
            let events = probing.prober.poll(now, &group.fdt);
            let family = probing.prober.family();
            let version = family.ip_version();
            match probing.prober.target_notice(now, nic.carrier) {
                Some(TargetNotice::Missing(without)) => tracing::warn!(
                    group = %group.config.name,
                    interface = %name,
                    "{name} has had no {version} probe target for {} s: no router on its link in the routing table or the group's routes, and no answer to an echo to {}; its {version} failures go unnoticed (name targets in the group's `targets`)",
                    without.as_secs(),
                    family.all_nodes()
                ),
                Some(TargetNotice::Back) => {
                    tracing::info!(
                        group = %group.config.name,
                        interface = %name,
                        "{name} has an {version} probe target again"
                    )
                }
                None => {}
            }
            let has_targets = !probing.prober.targets().is_empty();
            let targets_changed = has_targets != probing.had_targets;
            probing.had_targets = has_targets;
            self.probe_events(at, family, events, None);
            if targets_changed {
                let event = Event::Targets {
                    nic: slot,
                    family,
                    available: has_targets,
                };
                self.handle(id, event, now);
            }
        }
    }
}
