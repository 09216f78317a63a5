//! Probes: sending them on time, matching replies to probers, and what follows.

use super::*;

impl Daemon {
    pub(super) async fn probe_reply(&mut self, raw: RawReply) {
        let now = Instant::now();
        let from = if raw.family == 4 {
            IpAddr::from(Ipv4Addr::new(
                raw.target[0],
                raw.target[1],
                raw.target[2],
                raw.target[3],
            ))
        } else {
            IpAddr::from(raw.target)
        };
        let Some((gi, ni)) = self.groups.iter().enumerate().find_map(|(gi, g)| {
            g.nics
                .iter()
                .position(|n| n.ifindex == Some(raw.ifindex))
                .map(|ni| (gi, ni))
        }) else {
            return;
        };
        let family = AddressFamily::of(from);
        let local: Vec<IpAddr> = self.addresses.iter().map(|(_, c)| c.addr()).collect();
        let group = &mut self.groups[gi];
        let nic_name = group.nics[ni].name.clone();
        let Some(probing) = group.nics[ni]
            .probing
            .iter_mut()
            .find(|p| p.prober.family() == family)
        else {
            return;
        };
        if probing.discovery.contains(&raw.seq) {
            let added = probing.prober.add_discovered(&[from], &local);
            if added > 0 {
                tracing::info!("discovered probe target {from} on {nic_name}");
            }
            return;
        }
        let reply = ProbeReply {
            seq: raw.seq,
            from,
            // The egress program's stamp when it made one: a probe that waited for ARP/ND
            // left later than mpathd sent it.
            sent_ns: if raw.wire_ns != 0 {
                raw.wire_ns
            } else {
                raw.sent_ns
            },
            received_ns: raw.received_ns,
        };
        match probing.prober.on_reply(reply, now, &mut group.fdt) {
            ReplyVerdict::Accepted(events) => {
                let probers = group
                    .nics
                    .iter()
                    .flat_map(|n| &n.probing)
                    .map(|p| &p.prober);
                if let Some(change) = group.fdt.try_lower(now, probers) {
                    tracing::info!("{}", change.message);
                }
                self.probe_events(gi, ni, family, events, Some(reply)).await
            }
            ReplyVerdict::Rejected(reason) => {
                self.metrics
                    .reply_refused(&group.config.name, &nic_name, reason);
                tracing::debug!(
                    "{nic_name}: reply from {from} seq {} refused: {reason:?}",
                    raw.seq
                )
            }
        }
    }

    pub(super) async fn probe_events(
        &mut self,
        gi: usize,
        ni: usize,
        family: AddressFamily,
        events: Vec<ProbeEvent>,
        reply: Option<ProbeReply>,
    ) {
        let now = Instant::now();
        for event in events {
            match event {
                ProbeEvent::Outcome(outcome) => {
                    let nic = self.groups[gi].nics[ni].name.clone();
                    let (target, answer, seq) = match outcome {
                        ProbeOutcome::Answered { target, .. } => {
                            (target, reply, reply.map_or(0, |r| r.seq))
                        }
                        ProbeOutcome::Lost { target, seq } => (target, None, seq),
                    };
                    self.publish_probe(gi, ni, family, target, seq, answer);
                    self.metrics
                        .probe_outcome(&self.groups[gi].config.name, &nic, outcome);
                    self.handle(
                        gi,
                        Event::Probe {
                            nic,
                            family,
                            outcome,
                        },
                        now,
                    )
                    .await;
                }
                ProbeEvent::Target(e) => {
                    tracing::info!("{}: {e}", self.groups[gi].nics[ni].name)
                }
                ProbeEvent::FdtRaised(change) => tracing::warn!("{}", change.message),
            }
        }
    }

    pub(super) fn publish_probe(
        &self,
        gi: usize,
        ni: usize,
        family: AddressFamily,
        target: IpAddr,
        seq: u32,
        reply: Option<ProbeReply>,
    ) {
        if self.probe_rows.receiver_count() == 0 {
            return;
        }
        let nic = &self.groups[gi].nics[ni];
        let Some(probing) = nic.probing.iter().find(|p| p.prober.family() == family) else {
            return;
        };
        let view = probing.prober.view();
        let stats = view.targets.iter().find(|t| t.address == target);
        let _ = self.probe_rows.send(ProbeRow {
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_millis() as u64),
            interface: nic.name.clone(),
            seq,
            target,
            net_rtt_us: reply.map(|r| r.received_ns.saturating_sub(r.sent_ns) / 1000),
            rtt_us: reply.and(stats.and_then(|s| s.rtt_us)),
            rtt_avg_us: stats.and_then(|s| s.rtt_avg_us),
            rtt_dev_us: stats.and_then(|s| s.rtt_dev_us),
        });
    }

    /// Reads the routing table again, gives the probers their on-link routers and the
    /// groups their routes. mpathd's rule is put back if someone deleted it.
    pub(super) async fn refresh_routes(&mut self) -> anyhow::Result<()> {
        self.routes_due = None;
        let main = self.netlink.main_routes().await?;
        self.take_main_routes(main);
        let routes: Vec<RouteEntry> = self
            .main_routes
            .iter()
            .flat_map(MainRoute::entries)
            .collect();
        let local: Vec<IpAddr> = self.addresses.iter().map(|(_, c)| c.addr()).collect();
        for g in &mut self.groups {
            let group_nics: Vec<u32> = g.nics.iter().filter_map(|n| n.ifindex).collect();
            for p in g.nics.iter_mut().flat_map(|n| &mut n.probing) {
                p.prober.update_routes(&routes, &group_nics, &local);
            }
        }
        let daemon = &self.config.daemon;
        if let Err(e) = self
            .netlink
            .ensure_rules(daemon.route_table, daemon.route_rule_priority)
            .await
        {
            tracing::error!("{e}");
        }
        self.update_routes().await;
        Ok(())
    }

    /// Sends the probes that are due, declares lost the ones that timed out, and lets the
    /// state machines act on expired timers.
    pub(super) async fn tick(&mut self) {
        let now = Instant::now();
        if self.routes_due.is_some_and(|due| due <= now)
            && let Err(e) = self.refresh_routes().await
        {
            tracing::error!("reading the routing table: {e:#}");
        }
        for a in self.announcements.iter_mut().filter(|a| a.next <= now) {
            if let Err(e) = a.send() {
                tracing::debug!("announcing {}: {e}", a.addr);
            }
            a.remaining -= 1;
            a.next = now + announce::ANNOUNCE_INTERVAL;
        }
        self.announcements.retain(|a| a.remaining > 0);
        for gi in 0..self.groups.len() {
            for (ni, pi) in (0..self.groups[gi].nics.len())
                .flat_map(|ni| (0..self.groups[gi].nics[ni].probing.len()).map(move |pi| (ni, pi)))
                .collect::<Vec<_>>()
            {
                let group = &mut self.groups[gi];
                let nic = &mut group.nics[ni];
                let name = nic.name.clone();
                if nic.rx.due(now) {
                    match self.datapath.maps.counters(nic.slot) {
                        Ok(c) => nic.rx.observe(c.rx_packets, now),
                        Err(e) => tracing::debug!("receive counter of {name}: {e}"),
                    }
                }
                let Some(probing) = nic.probing.get_mut(pi) else {
                    continue;
                };
                if probing.prober.next_probe_at() <= now {
                    let transmit = probing.prober.send(now, &mut self.rng, &group.fdt);
                    if let Some(probe) = transmit.probe {
                        self.metrics
                            .probe_sent(&group.config.name, &name, probe.target);
                        if let Err(e) = probing.socket.send(
                            probe.target,
                            probe.seq,
                            self.probe_key,
                            monotonic_ns(),
                        ) {
                            tracing::debug!("{e}");
                        }
                    }
                    if transmit.discover {
                        let seq: u32 = self.rng.random();
                        let all_nodes = probing.prober.family().all_nodes();
                        if probing.discovery.len() == DISCOVERY_MEMORY {
                            probing.discovery.remove(0);
                        }
                        probing.discovery.push(seq);
                        if let Err(e) =
                            probing
                                .socket
                                .send(all_nodes, seq, self.probe_key, monotonic_ns())
                        {
                            tracing::debug!("{e}");
                        }
                    }
                }
                let events = probing.prober.poll(now, &group.fdt);
                let has_targets = !probing.prober.targets().is_empty();
                let targets_changed = has_targets != probing.had_targets;
                probing.had_targets = has_targets;
                let family = probing.prober.family();
                self.probe_events(gi, ni, family, events, None).await;
                if targets_changed {
                    let event = Event::Targets {
                        nic: name,
                        family,
                        available: has_targets,
                    };
                    self.handle(gi, event, now).await;
                }
            }
            if self.groups[gi].fsm.next_wakeup().is_some_and(|t| t <= now) {
                self.handle(gi, Event::Tick, now).await;
            }
        }
    }
}
