//! mpathd's event loop: it feeds link events, probe replies, timers and operator commands to
//! the per-group state machines (`state`), and carries out what they decide: bucket tables
//! (`spread`, `maps`), address moves (`failover`, `netlink`, `announce`), probes (`probe`,
//! `probe_socket`).

mod addresses;
pub mod logging;
mod nics;
mod probing;
mod reload;
mod routes;
mod service;
mod status;

pub use routes::remove_routes;

use nics::is_link_local;
use reload::carry_states;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mpath_common::{
    MAX_GROUPS, MAX_NICS, NIC_F_TEST_V4, NIC_F_TEST_V6, NicInfo, ProbeReply as RawReply, Settings,
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc},
};

use crate::{
    api::control::{self, Command, Reply, Request},
    api::metrics::{self, Metrics},
    api::views::{AddressRow, GroupRow, InterfaceRow, ProbeRow, Status, TargetHealth, TargetRow},
    config::diff::DaemonChange,
    config::{Config, GroupConfig, RouteConfig, SpreadMode},
    core::evidence::RxEvidence,
    core::failover::{self, DataAddress},
    core::probe::{
        FailureDetectionTime, ProbeEvent, ProbeOutcome, ProbeReply, Prober, ReplyVerdict,
    },
    core::routes::{IdBook, MainRoute},
    core::spread,
    core::state::{self, Action, Event, FailureCause, IfState, Policy, ProbeFamilies},
    core::target::{AddressFamily, RouteEntry, TargetSet},
    daemon::service::Notifier,
    datapath::{self, Datapath},
    net::address::IpCidr,
    net::announce,
    net::netconf::{InterfaceNetconf, Netconf},
    net::netlink::{
        AddressOptions, LinkState, MPATHD_PROTOCOL, Monitor, NetEvent, Netlink, Origin,
    },
    net::nexthop::Nexthops,
    net::probe_socket::{ProbeSocket, monotonic_ns},
};

/// How long route changes are gathered before the table is read again.
const ROUTE_DUMP_DELAY: Duration = Duration::from_millis(100);

/// Replies to discovery echoes arrive from hosts that are not yet targets; the sequence
/// numbers of those echoes are remembered this long.
const DISCOVERY_MEMORY: usize = 8;

/// One NIC's probing in one address family.
struct Probing {
    prober: Prober,
    socket: ProbeSocket,
    /// Sequence numbers of recent discovery echoes.
    discovery: Vec<u32>,
    /// Whether targets were available at the last look, to report changes once.
    had_targets: bool,
}

/// Repeats of a moved address's announcement still to send (the first goes out at once).
struct Announcement {
    ifindex: u32,
    mac: [u8; 6],
    addr: IpAddr,
    remaining: u32,
    next: Instant,
}

impl Announcement {
    fn send(&self) -> std::io::Result<()> {
        match self.addr {
            IpAddr::V4(a) => announce::gratuitous_arp(self.ifindex, self.mac, a),
            IpAddr::V6(a) => announce::unsolicited_na(self.ifindex, self.mac, a),
        }
    }
}

struct Nic {
    name: String,
    test_address: Option<IpCidr>,
    slot: u32,
    /// Kernel identity while the NIC exists.
    ifindex: Option<u32>,
    mac: [u8; 6],
    /// Whether the NIC probes over IPv6 (from its link-local address): when its group carries
    /// IPv6 data addresses.
    probe_v6: bool,
    /// One prober per address family that is running.
    probing: Vec<Probing>,
    /// Readings of the datapath's receive counter, to explain a probe-based failure.
    rx: RxEvidence,
    /// Up with carrier: only then does the kernel take nexthops through it.
    carrier: bool,
}

struct Group {
    id: u32,
    config: GroupConfig,
    fsm: state::Group,
    fdt: FailureDetectionTime,
    nics: Vec<Nic>,
    addresses: Vec<DataAddress>,
    /// Routes the kernel deleted with their NIC that the group keeps serving until their
    /// owner adds them again (see [`crate::core::routes::orphaned`]).
    held_routes: Vec<RouteConfig>,
    /// Which of `addresses` the group adopted from a NIC rather than from the configuration.
    adopted: BTreeSet<IpCidr>,
}

impl Group {
    fn nic(&self, name: &str) -> Option<&Nic> {
        self.nics.iter().find(|n| n.name == name)
    }

    fn nic_mut(&mut self, name: &str) -> Option<&mut Nic> {
        self.nics.iter_mut().find(|n| n.name == name)
    }
}

/// Where the configuration is read from, again on SIGHUP.
pub struct ConfigPaths {
    pub config: PathBuf,
    pub defaults: PathBuf,
}

pub struct Daemon {
    config: Config,
    paths: ConfigPaths,
    /// The bound control socket, until `run` serves it.
    control: Option<tokio::net::UnixListener>,
    datapath: Datapath,
    netlink: Netlink,
    monitor: Monitor,
    groups: Vec<Group>,
    /// The SipHash key of this run's probe tags (see [`mpath_common::probe_tag`]).
    probe_key: [u64; 2],
    rng: StdRng,
    probe_rows: broadcast::Sender<ProbeRow>,
    /// The main table, kept current from netlink: where probe targets and group routes come
    /// from.
    main_routes: Vec<MainRoute>,
    nexthops: Nexthops,
    /// Ids of mpathd's nexthop objects.
    nexthop_ids: IdBook,
    /// Group NICs removed since the routing table was last read, by ifindex and group: their
    /// routes went with them.
    departed: Vec<(u32, String)>,
    /// This mpathd took over a running datapath (a restart): the groups it starts with skip
    /// the startup quiet period, which is for a cold start.
    restarted: bool,
    /// The kernel's addresses by ifindex, kept current from netlink.
    addresses: Vec<(u32, IpCidr)>,
    announcements: Vec<Announcement>,
    /// Link state (usable or not) of NICs outside any group, tracked and reported when
    /// TRACK_INTERFACES_ONLY_WITH_GROUPS is off.
    ungrouped: BTreeMap<String, bool>,
    /// Counter slot of every group NIC, by name.
    slots: BTreeMap<String, u32>,
    /// Bucket table id of every group, by name.
    group_ids: BTreeMap<String, u32>,
    /// When the routing table is to be read again after it changed.
    routes_due: Option<Instant>,
    metrics: Metrics,
}

impl Daemon {
    /// Loads (or adopts) the datapath and takes stock of the host: links, addresses, routes.
    pub async fn start(config: Config, paths: ConfigPaths) -> anyhow::Result<Daemon> {
        // First of all: a second mpathd must stop here, before it touches the running one's
        // datapath (its probe key alone would make every probe reply look forged), whether it
        // names the same pin directory (locked while the datapath is open) or the same socket.
        let mut datapath = Datapath::open(&config.daemon.bpf_pin_dir)?;
        let control = control::bind(&config.daemon.socket)?;
        // A datapath already running on NICs: mpathd restarts, the switch has long learnt
        // the NICs' MACs, and no startup quiet period holds a failure back.
        let restarted = datapath.pinned_nics().is_ok_and(|nics| !nics.is_empty());
        let mut rng = StdRng::from_os_rng();
        let probe_key: [u64; 2] = rng.random();
        datapath.maps.set_settings(Settings { probe_key })?;
        // Subscribed before the first dump, so that nothing changing meanwhile is missed.
        // MPATHD_NETLINK_RCVBUF shrinks the event socket's buffer, so that tests can make the
        // kernel drop events and check the resync that follows.
        let receive_buffer = std::env::var("MPATHD_NETLINK_RCVBUF")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Monitor::DEFAULT_RECEIVE_BUFFER);
        let monitor = Monitor::open_with_receive_buffer(receive_buffer)
            .context("subscribing to rtnetlink events")?;
        let netlink = Netlink::connect().context("opening rtnetlink")?;
        announce::open_socket()?;
        let nexthops = Nexthops::connect().context("opening rtnetlink for nexthops")?;
        match Netconf::system().hash_multipath_on_ports() {
            Ok(changed) => {
                for path in changed {
                    tracing::info!(
                        "{} set to 1: flows spread by their ports too",
                        path.display()
                    );
                }
            }
            Err(e) => tracing::warn!("routed flows may not spread over the NICs: {e}"),
        }
        netlink
            .ensure_rules(config.daemon.route_table, config.daemon.route_rule_priority)
            .await
            .context("adding the rule that consults mpathd's routing table")?;
        let (probe_rows, _) = broadcast::channel(256);
        let metrics = Metrics::new(&config.groups)?;
        let mut daemon = Daemon {
            config: config.clone(),
            paths,
            control: Some(control),
            datapath,
            netlink,
            monitor,
            groups: Vec::new(),
            probe_key,
            rng,
            probe_rows,
            main_routes: Vec::new(),
            nexthops,
            nexthop_ids: IdBook::default(),
            departed: Vec::new(),
            restarted,
            addresses: Vec::new(),
            announcements: Vec::new(),
            ungrouped: BTreeMap::new(),
            slots: BTreeMap::new(),
            group_ids: BTreeMap::new(),
            routes_due: None,
            metrics,
        };
        for g in &config.groups {
            daemon.add_group(g)?;
        }
        let all = config.groups.iter().map(|g| g.name.clone()).collect();
        daemon.resync(&all, &BTreeMap::new()).await?;
        daemon.prune_stale_pins();
        // Groups a reload adds later start cold.
        daemon.restarted = false;
        Ok(daemon)
    }

    /// Runs until SIGTERM or SIGINT. The datapath stays pinned and the addresses stay where
    /// they are, so a restarted mpathd carries on without disturbing traffic.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let ring = self
            .datapath
            .maps
            .probe_replies
            .take()
            .context("probe reply ring buffer already taken")?;
        // SAFETY: the ring buffer owns its descriptor, which stays open and the same for as
        // long as the AsyncFd owns the ring buffer.
        let mut replies = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        let (commands_tx, mut commands) = mpsc::channel(16);
        let listener = self
            .control
            .take()
            .context("control socket already served")?;
        tokio::spawn(control::serve(
            listener,
            commands_tx,
            self.probe_rows.clone(),
        ));
        let (scrapes_tx, mut scrapes) = mpsc::channel(4);
        // Keeping hosts reachable matters more than being observed: without its metrics
        // port mpathd still runs, and says so.
        match metrics::bind(self.config.daemon.metrics_listen).await {
            Ok(listener) => {
                tokio::spawn(metrics::serve(listener, scrapes_tx));
            }
            Err(e) => tracing::error!("{e}; running without metrics"),
        }
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        tracing::info!(
            "mpathd running: {} group(s), control socket {}",
            self.groups.len(),
            self.config.daemon.socket.display()
        );
        // `start` attached the datapath and placed the addresses and routes.
        let mut service = Notifier::from_env();
        service.ready(&self.status());
        loop {
            service.turn(Instant::now(), || self.status());
            let wake = self.next_wakeup();
            tokio::select! {
                event = self.monitor.next() => {
                    // A failed dump (interrupted by changes, say) is retried by a resync at the
                    // next event; the daemon keeps running.
                    if let Err(e) = async { self.net_event(event?).await }.await {
                        tracing::error!("handling a netlink event: {e:#}");
                    }
                }
                ready = replies.readable_mut() => {
                    let mut guard = ready?;
                    let mut batch = Vec::new();
                    while let Some(item) = guard.get_inner_mut().next() {
                        if item.len() == size_of::<RawReply>() {
                            // SAFETY: the XDP program writes whole ProbeReply records.
                            batch.push(unsafe { item.as_ptr().cast::<RawReply>().read_unaligned() });
                        }
                    }
                    guard.clear_ready();
                    for reply in batch {
                        self.probe_reply(reply).await;
                    }
                },
                Some(command) = commands.recv() => self.command(command).await,
                Some(scrape) = scrapes.recv() => {
                    self.metrics.retain(&self.live_series());
                    scrape.answer(self.metrics.render(&self.metrics_snapshot()))
                }
                _ = tokio::time::sleep_until(wake.into()) => self.tick().await,
                _ = sighup.recv() => {
                    if let Err(e) = self.reload().await {
                        tracing::error!("reload: {e:#}");
                    }
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        service.stopping();
        tracing::info!("mpathd stopping; the datapath stays in place");
        Ok(())
    }

    fn next_wakeup(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        if let Some(due) = self.routes_due {
            wake = wake.min(due);
        }
        for a in &self.announcements {
            wake = wake.min(a.next);
        }
        for g in &self.groups {
            if let Some(t) = g.fsm.next_wakeup() {
                wake = wake.min(t);
            }
            for p in g.nics.iter().flat_map(|n| &n.probing) {
                wake = wake.min(p.prober.next_wakeup(&g.fdt));
            }
        }
        wake
    }

    fn locate(&self, name: &str) -> Option<(usize, usize)> {
        self.groups.iter().enumerate().find_map(|(gi, g)| {
            g.nics
                .iter()
                .position(|n| n.name == name)
                .map(|ni| (gi, ni))
        })
    }

    async fn net_event(&mut self, event: NetEvent) -> anyhow::Result<()> {
        let now = Instant::now();
        match event {
            NetEvent::Link(link) => {
                let Some((gi, ni)) = self.locate(&link.name) else {
                    self.track_ungrouped(&link);
                    return Ok(());
                };
                let known = self.groups[gi].nics[ni].ifindex == Some(link.ifindex);
                if known && let Some(mac) = link.mac {
                    self.change_mac(gi, ni, mac);
                }
                let carrier =
                    std::mem::replace(&mut self.groups[gi].nics[ni].carrier, link.usable());
                self.set_up_nic(gi, ni, &link, now).await;
                let nic = link.name.clone();
                let event = if known {
                    Event::Link {
                        nic,
                        up: link.usable(),
                    }
                } else {
                    Event::Appeared {
                        nic,
                        link_up: link.usable(),
                    }
                };
                self.handle(gi, event, now).await;
                // With carrier back, nexthops through the NIC can be made again (the kernel
                // deleted them when it went).
                if carrier != link.usable() {
                    self.update_routes().await;
                }
            }
            NetEvent::LinkRemoved { name, ifindex } => {
                if self.ungrouped.remove(&name).is_some() {
                    tracing::info!("NIC {name} has been removed from the system");
                }
                // By ifindex too: a late removal of an older NIC of that name is no news.
                if let Some((gi, ni)) = self.locate(&name)
                    && self.groups[gi].nics[ni].ifindex == Some(ifindex)
                {
                    let group = self.groups[gi].config.name.clone();
                    self.departed.push((ifindex, group));
                    self.forget_nic(gi, ni);
                    for a in &mut self.groups[gi].addresses {
                        if a.current.as_deref() == Some(name.as_str()) {
                            a.current = None;
                        }
                    }
                    self.handle(gi, Event::Disappeared { nic: name }, now).await;
                }
            }
            NetEvent::AddressAdded { ifindex, cidr } => {
                if !self.addresses.contains(&(ifindex, cidr)) {
                    self.addresses.push((ifindex, cidr));
                }
                if is_link_local(cidr.addr()) {
                    self.start_v6(ifindex, cidr);
                }
                self.reconcile_added_address(ifindex, cidr).await;
            }
            NetEvent::AddressRemoved { ifindex, cidr } => {
                self.addresses.retain(|a| *a != (ifindex, cidr));
                if is_link_local(cidr.addr())
                    && let Some((gi, nic)) = self.stop_v6(ifindex, cidr)
                {
                    // Without a prober the family has no targets: it no longer holds the NIC up.
                    let event = Event::Targets {
                        nic,
                        family: AddressFamily::Inet6,
                        available: false,
                    };
                    self.handle(gi, event, now).await;
                }
                self.restore_lost_address(ifindex, cidr).await;
                self.restore_test_address(ifindex, cidr).await;
            }
            // A burst of route changes (a routing daemon filling the table) costs one dump.
            NetEvent::RoutesChanged => {
                self.routes_due.get_or_insert(now + ROUTE_DUMP_DELAY);
            }
            NetEvent::Overrun => {
                tracing::warn!("the kernel dropped netlink events; resynchronising");
                self.resync(&BTreeSet::new(), &BTreeMap::new()).await?;
            }
        }
        Ok(())
    }

    /// Feeds one event to a group's state machine and carries out its decisions.
    async fn handle(&mut self, gi: usize, event: Event, now: Instant) {
        match self.groups[gi].fsm.handle(event, now) {
            Ok(actions) => self.apply(gi, actions, false).await,
            Err(e) => tracing::debug!("group {}: {e}", self.groups[gi].config.name),
        }
    }

    async fn command(&mut self, command: Command) {
        let now = Instant::now();
        let reply = match command.request {
            Request::Status {} => Reply::Status(self.status()),
            Request::Offline { interface } | Request::Online { interface }
                if self.locate(&interface).is_none() =>
            {
                Reply::Refused {
                    message: format!("{interface} is not in any group"),
                }
            }
            Request::Offline { interface } => {
                self.admin(
                    &interface,
                    Event::Offline {
                        nic: interface.clone(),
                    },
                    "offline",
                    now,
                )
                .await
            }
            Request::Online { interface } => {
                self.admin(
                    &interface,
                    Event::Online {
                        nic: interface.clone(),
                    },
                    "online",
                    now,
                )
                .await
            }
            Request::Probes {} => Reply::Refused {
                message: "probes are streamed by the control server".into(),
            },
        };
        let _ = command.reply.send(reply);
    }

    async fn admin(&mut self, interface: &str, event: Event, what: &str, now: Instant) -> Reply {
        let Some((gi, _)) = self.locate(interface) else {
            unreachable!("checked by the caller");
        };
        match self.groups[gi].fsm.handle(event, now) {
            Ok(actions) => {
                self.apply(gi, actions, false).await;
                Reply::Done {
                    message: format!("{interface} is {what}"),
                }
            }
            Err(e) => Reply::Refused {
                message: e.to_string(),
            },
        }
    }

    /// Carries out a state machine's decisions: logs, target flushes, and when the usable
    /// set changed, the bucket table and the data addresses. `replan` forces the latter (at
    /// start and after a resync, where the kernel may disagree with us).
    async fn apply(&mut self, gi: usize, actions: Vec<Action>, replan: bool) {
        let group = &mut self.groups[gi];
        self.metrics.actions(&group.config.name, &actions);
        let mut usable_changed = replan;
        for action in &actions {
            if let Some(line) = action.log_line(&group.config.name) {
                let (g, nic) = (group.config.name.as_str(), action.nic());
                match action {
                    Action::Failed { .. } | Action::GroupFailed | Action::LinkDown { .. } => {
                        tracing::warn!(group = g, interface = nic, "{line}")
                    }
                    _ => tracing::info!(group = g, interface = nic, "{line}"),
                }
            }
            match action {
                Action::Failed {
                    nic,
                    cause: FailureCause::ProbesLost,
                } => {
                    if let Some(n) = group.nic_mut(nic) {
                        let now = Instant::now();
                        match self.datapath.maps.counters(n.slot) {
                            Ok(c) => n.rx.observe(c.rx_packets, now),
                            Err(e) => tracing::debug!("receive counter of {nic}: {e}"),
                        }
                        tracing::warn!("{}", n.rx.explain_failure(nic));
                    }
                }
                Action::UsableSetChanged => usable_changed = true,
                Action::FlushTargets { nics } => {
                    for name in nics {
                        for p in group.nic_mut(name).into_iter().flat_map(|n| &mut n.probing) {
                            p.prober.flush_discovered();
                        }
                    }
                }
                _ => {}
            }
        }
        // Probers trust RTTs only while their NIC works (not failed, not offline).
        let now = Instant::now();
        for nic in &mut group.nics {
            let working = matches!(group.fsm.interface_state(&nic.name), Some(IfState::Ok));
            for p in &mut nic.probing {
                p.prober.set_nic_failed(!working, now);
            }
        }
        if usable_changed {
            // Addresses first: all inbound traffic to a moved address waits for it, while
            // only the outbound flows hashed to the failed NIC wait for the table.
            self.move_addresses(gi).await;
            self.write_table(gi);
            // A resync (`replan`) updates the routes once, after every group's NICs are set
            // up: before that, a later group's NICs look absent and its routes unserved.
            if !replan {
                self.update_routes().await;
            }
        }
    }
}
