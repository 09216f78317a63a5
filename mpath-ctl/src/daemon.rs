//! mpathd's event loop: it feeds link events, probe replies, timers and operator commands to
//! the per-group state machines (`state`), and carries out what they decide: bucket tables
//! (`spread`, `maps`), address moves (`failover`, `netlink`, `announce`), probes (`probe`,
//! `probe_socket`).

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
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc},
};

use crate::{
    announce,
    config::{Config, DaemonChange, GroupConfig, IpCidr},
    control::{self, Command, Reply, Request},
    datapath::{self, Datapath},
    failover::{self, DataAddress},
    metrics::{self, Metrics},
    netconf::{InterfaceNetconf, Netconf},
    netlink::{AddressOptions, LinkState, Monitor, NetEvent, Netlink},
    probe::{FailureDetectionTime, ProbeEvent, ProbeOutcome, ProbeReply, Prober, ReplyVerdict},
    probe_socket::{ProbeSocket, monotonic_ns},
    spread,
    state::{self, Action, Event, FailureCause, IfState, Policy, ProbeFamilies},
    target::{AddressFamily, RouteEntry, TargetSet},
    views::{AddressRow, GroupRow, InterfaceRow, ProbeRow, Status, TargetRow},
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
    /// Whether the NIC probes over IPv6 too (from its link-local address): when it probes
    /// at all and its group carries IPv6 data addresses.
    probe_v6: bool,
    /// One prober per address family that is running.
    probing: Vec<Probing>,
}

struct Group {
    id: u32,
    config: GroupConfig,
    fsm: state::Group,
    fdt: FailureDetectionTime,
    nics: Vec<Nic>,
    addresses: Vec<DataAddress>,
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
    nonce: u64,
    rng: StdRng,
    started: Instant,
    probe_rows: broadcast::Sender<ProbeRow>,
    routes: Vec<RouteEntry>,
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

/// Label of an enum as the views print it: its serde name.
fn label(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "unknown".into(),
    }
}

impl Daemon {
    /// Loads (or adopts) the datapath and takes stock of the host: links, addresses, routes.
    pub async fn start(config: Config, paths: ConfigPaths) -> anyhow::Result<Daemon> {
        // First of all: a second mpathd must stop here, before it touches the running one's
        // datapath (its nonce alone would make every probe reply look forged).
        let control = control::bind(&config.daemon.socket)?;
        let mut datapath = Datapath::open(&config.daemon.bpf_pin_dir)?;
        let mut rng = StdRng::from_os_rng();
        let nonce: u64 = rng.random();
        datapath.maps.set_settings(Settings { nonce })?;
        // Subscribed before the first dump, so that nothing changing meanwhile is missed.
        let monitor = Monitor::open().context("subscribing to rtnetlink events")?;
        let netlink = Netlink::connect().context("opening rtnetlink")?;
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
            nonce,
            rng,
            started: Instant::now(),
            probe_rows,
            routes: Vec::new(),
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
        Ok(daemon)
    }

    /// Detaches the datapath from NICs an earlier mpathd served that are no group's NIC now
    /// (removed while no daemon ran, or taken out of the configuration).
    fn prune_stale_pins(&mut self) {
        let current: BTreeSet<u32> = self
            .groups
            .iter()
            .flat_map(|g| g.nics.iter().filter_map(|n| n.ifindex))
            .collect();
        match self.datapath.pinned_nics() {
            Ok(pinned) => {
                for ifindex in pinned.into_iter().filter(|i| !current.contains(i)) {
                    tracing::info!(
                        "detaching the datapath from ifindex {ifindex}: in no group now"
                    );
                    let _ = self.datapath.detach(ifindex);
                    let _ = self.datapath.maps.remove_nic(ifindex);
                }
            }
            Err(e) => tracing::warn!("listing pinned links: {e}"),
        }
    }

    /// Builds the runtime of a configured group with the lowest free group id and NIC slots;
    /// the kernel side is set up by the next resync.
    fn add_group(&mut self, g: &GroupConfig) -> anyhow::Result<()> {
        // A group keeps its id (its bucket table) across reloads; a new one takes the lowest
        // free id.
        let id = match self.group_ids.get(&g.name) {
            Some(id) => *id,
            None => (0..MAX_GROUPS)
                .find(|id| self.group_ids.values().all(|used| used != id))
                .context("too many groups")?,
        };
        self.group_ids.insert(g.name.clone(), id);

        let policy = Policy {
            failback: self.config.daemon.failback,
            ..Policy::default()
        };
        let v6_data = g
            .interfaces
            .iter()
            .flat_map(|i| &i.data_addresses)
            .any(|a| a.addr().is_ipv6());
        let interfaces = g
            .interfaces
            .iter()
            .map(|i| state::InterfaceConfig {
                name: i.name.clone(),
                standby: i.standby,
                probe: match (i.test_address.is_some(), v6_data) {
                    (false, _) => ProbeFamilies::NONE,
                    (true, false) => ProbeFamilies::IPV4,
                    (true, true) => ProbeFamilies::BOTH,
                },
            })
            .collect();
        let mut nics = Vec::new();
        for i in &g.interfaces {
            let probe_v6 = i.test_address.is_some() && v6_data;
            // A NIC keeps its counter slot across reloads; a new one takes the lowest free.
            let slot = match self.slots.get(&i.name) {
                Some(slot) => *slot,
                None => (0..MAX_NICS)
                    .find(|s| self.slots.values().all(|used| used != s))
                    .context("too many NICs")?,
            };
            self.slots.insert(i.name.clone(), slot);
            nics.push(Nic {
                name: i.name.clone(),
                test_address: i.test_address.map(Into::into),
                slot,
                ifindex: None,
                mac: [0; 6],
                probe_v6,
                probing: Vec::new(),
            });
        }
        let addresses = g
            .interfaces
            .iter()
            .flat_map(|i| {
                i.data_addresses.iter().map(|cidr| DataAddress {
                    cidr: *cidr,
                    home: i.name.clone(),
                    current: None,
                })
            })
            .collect();
        self.groups.push(Group {
            id,
            config: g.clone(),
            fsm: state::Group::new(g.name.clone(), policy, interfaces)?,
            fdt: FailureDetectionTime::new(
                g.name.clone(),
                self.config.daemon.failure_detection_time,
            )?,
            nics,
            addresses,
        });
        Ok(())
    }

    /// Reads links, addresses and routes from the kernel and brings every group up to date:
    /// at start, on reload, and after the kernel dropped netlink events. The groups named in
    /// `adopt` are new to this daemon: what the host shows of an earlier one's decisions is
    /// adopted (see [`adopt_failures`]).
    async fn resync(
        &mut self,
        adopt: &BTreeSet<String>,
        carry: &BTreeMap<String, Vec<(String, IfState)>>,
    ) -> anyhow::Result<()> {
        let links = self.netlink.links().await?;
        for link in &links {
            if self.locate(&link.name).is_none() {
                self.track_ungrouped(link);
            }
        }
        let addresses = self.netlink.addresses().await?;
        self.routes = self.netlink.routes().await?;
        self.addresses = addresses.clone();
        let now = Instant::now();
        for gi in 0..self.groups.len() {
            let mut present = Vec::new();
            for ni in 0..self.groups[gi].nics.len() {
                let name = self.groups[gi].nics[ni].name.clone();
                match links.iter().find(|l| l.name == name) {
                    Some(link) => {
                        self.set_up_nic(gi, ni, link, now).await;
                        present.push((name, link.usable()));
                    }
                    None => self.forget_nic(gi, ni),
                }
            }
            let group = &mut self.groups[gi];
            for address in &mut group.addresses {
                address.current = group
                    .nics
                    .iter()
                    .filter_map(|n| n.ifindex.map(|i| (i, &n.name)))
                    .find(|(ifindex, _)| addresses.contains(&(*ifindex, address.cidr)))
                    .map(|(_, name)| name.clone());
            }
            let mut actions = group.fsm.handle(Event::Snapshot { present }, now)?;
            if let Some(states) = carry.get(&group.config.name) {
                actions.extend(carry_states(group, states, now));
            } else if adopt.contains(&group.config.name) && self.config.daemon.failback {
                actions.extend(adopt_failures(group, now));
            }
            self.apply(gi, actions, true).await;
            self.remove_extra_copies(gi, &addresses).await;
        }
        Ok(())
    }

    /// Deletes copies of the group's data addresses found on NICs other than the one they are
    /// placed on (left by a daemon killed in the middle of a move, or on a NIC that left the
    /// group): two NICs answering for one address confuse the peers.
    async fn remove_extra_copies(&mut self, gi: usize, found: &[(u32, IpCidr)]) {
        let group = &self.groups[gi];
        let mut extra = Vec::new();
        for a in &group.addresses {
            let placed = a
                .current
                .as_deref()
                .and_then(|n| group.nic(n))
                .and_then(|n| n.ifindex);
            if placed.is_none() {
                continue;
            }
            extra.extend(
                found
                    .iter()
                    .filter(|(ifindex, cidr)| *cidr == a.cidr && Some(*ifindex) != placed)
                    .copied(),
            );
        }
        for (ifindex, cidr) in extra {
            tracing::warn!("removing a second copy of data address {cidr} (ifindex {ifindex})");
            if let Err(e) = self.netlink.del_address(ifindex, cidr).await {
                tracing::error!("{e}");
            }
        }
    }

    /// Attaches the datapath to a NIC that is present and starts probing on it.
    async fn set_up_nic(&mut self, gi: usize, ni: usize, link: &LinkState, now: Instant) {
        let group = &mut self.groups[gi];
        let nic = &mut group.nics[ni];
        if nic.ifindex == Some(link.ifindex) {
            return;
        }
        // A late event about an older NIC of this name: the current one is set up by its own.
        if datapath::ifindex_of(&nic.name).ok() != Some(link.ifindex) {
            return;
        }
        if let Some(old) = nic.ifindex.take() {
            // The NIC was re-created under the same name.
            let _ = self.datapath.detach(old);
            let _ = self.datapath.maps.remove_nic(old);
        }
        nic.mac = link.mac.unwrap_or_default();
        if let Err(e) = self.datapath.attach(&nic.name) {
            tracing::error!("cannot attach the datapath to {}: {e}", nic.name);
            return;
        }
        if let Err(e) = Netconf::system().write(&nic.name, InterfaceNetconf::GROUP_MEMBER) {
            tracing::warn!("{}: {e}", nic.name);
        }
        let mut info = NicInfo {
            slot: nic.slot,
            group: group.id,
            mac: nic.mac,
            ..Default::default()
        };
        let link_local = nic
            .probe_v6
            .then(|| link_local_of(&self.addresses, link.ifindex))
            .flatten();
        if let Some(IpAddr::V6(ll)) = link_local.map(|c| c.addr()) {
            info.flags |= NIC_F_TEST_V6;
            info.test_v6 = ll.octets();
        }
        if let Some(test) = nic.test_address {
            if let IpAddr::V4(v4) = test.addr() {
                info.flags |= NIC_F_TEST_V4;
                info.test_v4 = v4.octets();
            }
            // A test address must never steer routing nor be chosen as a source: it goes on
            // as a host address (/32) without a prefix route. Otherwise it would be the
            // primary address of its subnet and the data addresses secondaries, which get no
            // route of their own.
            let host = IpCidr::new(test.addr(), 32).expect("/32 is valid for IPv4");
            let options = AddressOptions {
                noprefixroute: true,
                ..Default::default()
            };
            if let Err(e) = self.netlink.add_address(link.ifindex, host, options).await {
                tracing::error!("cannot add test address {host} to {}: {e}", nic.name);
            }
        }
        if let Err(e) = self.datapath.maps.set_nic(link.ifindex, info) {
            tracing::error!("{}: {e}", nic.name);
        }
        // After set_nic: the test address list is per group, found through the NIC.
        if let Some(IpAddr::V4(v4)) = nic.test_address.map(|t| t.addr())
            && let Err(e) = self.datapath.maps.set_test_address(v4, link.ifindex)
        {
            tracing::error!("{}: {e}", nic.name);
        }
        nic.ifindex = Some(link.ifindex);
        let local: Vec<IpAddr> = self.addresses.iter().map(|(_, c)| c.addr()).collect();
        nic.probing = nic
            .test_address
            .into_iter()
            .chain(link_local)
            .filter_map(|test| {
                start_probing(
                    &nic.name,
                    test,
                    link.ifindex,
                    &group.config.targets,
                    &self.routes,
                    &local,
                    &group.fdt,
                    &mut self.rng,
                    now,
                )
            })
            .collect();
    }

    /// Starts IPv6 probing on a NIC whose link-local address showed up (or finished DAD)
    /// after the NIC was set up.
    fn start_v6(&mut self, ifindex: u32, link_local: IpCidr) {
        let now = Instant::now();
        let local: Vec<IpAddr> = self.addresses.iter().map(|(_, c)| c.addr()).collect();
        let Some(group) = self
            .groups
            .iter_mut()
            .find(|g| g.nics.iter().any(|n| n.ifindex == Some(ifindex)))
        else {
            return;
        };
        let Some(nic) = group.nics.iter_mut().find(|n| n.ifindex == Some(ifindex)) else {
            return;
        };
        let running = nic
            .probing
            .iter()
            .any(|p| p.prober.family() == AddressFamily::Inet6);
        let IpAddr::V6(ll) = link_local.addr() else {
            return;
        };
        if !nic.probe_v6 || running {
            return;
        }
        let Some(probing) = start_probing(
            &nic.name,
            link_local,
            ifindex,
            &group.config.targets,
            &self.routes,
            &local,
            &group.fdt,
            &mut self.rng,
            now,
        ) else {
            return;
        };
        match self.datapath.maps.nics.get(&ifindex, 0) {
            Ok(mut info) => {
                info.flags |= NIC_F_TEST_V6;
                info.test_v6 = ll.octets();
                if let Err(e) = self.datapath.maps.set_nic(ifindex, info) {
                    tracing::error!("{}: {e}", nic.name);
                }
            }
            Err(e) => tracing::error!("{}: {e}", nic.name),
        }
        tracing::info!("{} probes over IPv6 from {ll}", nic.name);
        nic.probing.push(probing);
    }

    /// Forgets the kernel side of a NIC that is gone; its links went with it.
    fn forget_nic(&mut self, gi: usize, ni: usize) {
        let nic = &mut self.groups[gi].nics[ni];
        nic.probing.clear();
        if let Some(ifindex) = nic.ifindex.take() {
            let _ = self.datapath.detach(ifindex);
            let _ = self.datapath.maps.remove_nic(ifindex);
        }
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
        loop {
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
        tracing::info!("mpathd stopping; the datapath stays in place");
        Ok(())
    }

    /// SIGHUP: reads the configuration again and applies the difference. Groups that did not
    /// change are not touched; a changed group is rebuilt on top of what the kernel holds
    /// (addresses stay where they are, a NIC failed by probes stays failed until repaired);
    /// a removed group or NIC loses the datapath, its test address and its data addresses.
    /// A bad file is refused with its reason and nothing changes.
    async fn reload(&mut self) -> anyhow::Result<()> {
        let mut new = match Config::load(&self.paths.config, Some(&self.paths.defaults)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, the running configuration stays: {e}");
                return Ok(());
            }
        };
        let diff = self.config.diff(&new);
        if diff.is_empty() {
            tracing::info!("reload: the configuration is unchanged");
            return Ok(());
        }
        tracing::info!("reload: {diff}");
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
                | DaemonChange::BpfPinDir(_) => {
                    tracing::warn!("reload: {change} takes effect when mpathd restarts");
                }
            }
        }
        // Settings that only a restart can change keep their running values.
        new.daemon.metrics_listen = self.config.daemon.metrics_listen;
        new.daemon.socket = self.config.daemon.socket.clone();
        new.daemon.bpf_pin_dir = self.config.daemon.bpf_pin_dir.clone();

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
            let Some(gi) = self.groups.iter().position(|g| g.config.name == name) else {
                continue;
            };
            let old = self.groups.remove(gi);
            let states = old
                .nics
                .iter()
                .filter_map(|n| {
                    old.fsm
                        .interface_state(&n.name)
                        .map(|s| (n.name.clone(), s))
                })
                .collect();
            carry.insert(name.clone(), states);
            let kept = new.group(&name);
            self.retire_group(old, kept).await;
        }
        self.config = new.clone();
        self.metrics.declare_groups(&new.groups);
        for g in &new.groups {
            if self.groups.iter().all(|r| r.config.name != g.name) {
                self.add_group(g)?;
                rebuild.insert(g.name.clone());
            }
        }
        self.resync(&rebuild, &carry).await
    }

    /// Takes down what an old group runtime set up that the new configuration (`kept`, the
    /// group's new definition if it still exists) no longer has: the datapath and test
    /// address of NICs that leave, the data addresses that are gone, the bucket table.
    async fn retire_group(&mut self, old: Group, kept: Option<&GroupConfig>) {
        let stays = |nic: &str| kept.is_some_and(|g| g.interface(nic).is_some());
        for nic in &old.nics {
            let Some(ifindex) = nic.ifindex else { continue };
            let test_kept = kept
                .and_then(|g| g.interface(&nic.name))
                .is_some_and(|i| i.test_address.map(IpCidr::from) == nic.test_address);
            if let Some(test) = nic.test_address.filter(|_| !test_kept) {
                let host = IpCidr::new(test.addr(), 32).expect("/32 is valid for IPv4");
                if let Err(e) = self.netlink.del_address(ifindex, host).await {
                    tracing::warn!("{e}");
                }
                if let IpAddr::V4(v4) = test.addr() {
                    let _ = self.datapath.maps.remove_test_address(v4);
                }
            }
            if !stays(&nic.name) {
                let _ = self.datapath.detach(ifindex);
                let _ = self.datapath.maps.remove_nic(ifindex);
                let _ = self.datapath.maps.clear_counters(nic.slot);
                self.slots.remove(&nic.name);
                tracing::info!("{} left group {}", nic.name, old.config.name);
            }
        }
        let still_configured = |cidr: &IpCidr| {
            kept.is_some_and(|g| g.interfaces.iter().any(|i| i.data_addresses.contains(cidr)))
        };
        for a in old.addresses.iter().filter(|a| !still_configured(&a.cidr)) {
            let Some(ifindex) = a
                .current
                .as_deref()
                .and_then(|n| old.nic(n))
                .and_then(|n| n.ifindex)
            else {
                continue;
            };
            match self.netlink.del_address(ifindex, a.cidr).await {
                Ok(()) => tracing::info!("removed data address {} (no longer configured)", a.cidr),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if kept.is_none() {
            self.group_ids.remove(&old.config.name);
            let empty = [0u32; mpath_common::BUCKETS_PER_GROUP as usize];
            if let Err(e) = self.datapath.maps.write_table(old.id, &empty, |_| [0; 6]) {
                tracing::warn!("group {}: {e}", old.config.name);
            }
        }
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

    /// Follows the link of a NIC outside every group (TRACK_INTERFACES_ONLY_WITH_GROUPS=no),
    /// logging its failures and repairs as in.mpathd does.
    fn track_ungrouped(&mut self, link: &LinkState) {
        if self.config.daemon.track_interfaces_only_with_groups || link.name == "lo" {
            return;
        }
        let up = link.usable();
        match self.ungrouped.insert(link.name.clone(), up) {
            Some(was) if was == up => {}
            Some(_) if up => tracing::info!("The link has come up on {}", link.name),
            Some(_) => tracing::warn!("The link has gone down on {}", link.name),
            None => tracing::debug!("tracking {} (in no group)", link.name),
        }
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
            }
            NetEvent::LinkRemoved { name, ifindex } => {
                if self.ungrouped.remove(&name).is_some() {
                    tracing::info!("NIC {name} has been removed from the system");
                }
                // By ifindex too: a late removal of an older NIC of that name is no news.
                if let Some((gi, ni)) = self.locate(&name)
                    && self.groups[gi].nics[ni].ifindex == Some(ifindex)
                {
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

    /// Stops IPv6 probing from a link-local address that went away (it starts again when the
    /// NIC gets one back); returns the NIC's group and name when a prober stopped.
    fn stop_v6(&mut self, ifindex: u32, link_local: IpCidr) -> Option<(usize, String)> {
        let (gi, nic) = self.groups.iter_mut().enumerate().find_map(|(gi, g)| {
            g.nics
                .iter_mut()
                .find(|n| n.ifindex == Some(ifindex))
                .map(|n| (gi, n))
        })?;
        let before = nic.probing.len();
        nic.probing
            .retain(|p| p.prober.targets().test_address() != link_local);
        if nic.probing.len() == before {
            return None;
        }
        tracing::info!("{} stops probing over IPv6: {link_local} is gone", nic.name);
        if let Ok(mut info) = self.datapath.maps.nics.get(&ifindex, 0) {
            info.flags &= !NIC_F_TEST_V6;
            info.test_v6 = [0; 16];
            if let Err(e) = self.datapath.maps.set_nic(ifindex, info) {
                tracing::error!("{}: {e}", nic.name);
            }
        }
        Some((gi, nic.name.clone()))
    }

    /// A data address vanished from the NIC mpathd had put it on (someone deleted it): put it
    /// back where the placement wants it. mpathd's own moves never trigger this: they point
    /// the address at its new NIC before deleting the old copy.
    async fn restore_lost_address(&mut self, ifindex: u32, cidr: IpCidr) {
        let Some(gi) = self.groups.iter().position(|g| {
            g.addresses.iter().any(|a| {
                a.cidr == cidr
                    && a.current
                        .as_deref()
                        .and_then(|n| g.nic(n))
                        .is_some_and(|n| n.ifindex == Some(ifindex))
            })
        }) else {
            return;
        };
        let group = &mut self.groups[gi];
        if let Some(a) = group.addresses.iter_mut().find(|a| a.cidr == cidr) {
            tracing::warn!(
                "data address {cidr} was removed from {} behind mpathd's back; restoring it",
                a.current.as_deref().unwrap_or("--")
            );
            a.current = None;
        }
        self.move_addresses(gi).await;
    }

    /// Feeds one event to a group's state machine and carries out its decisions.
    async fn handle(&mut self, gi: usize, event: Event, now: Instant) {
        match self.groups[gi].fsm.handle(event, now) {
            Ok(actions) => self.apply(gi, actions, false).await,
            Err(e) => tracing::debug!("group {}: {e}", self.groups[gi].config.name),
        }
    }

    async fn probe_reply(&mut self, raw: RawReply) {
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
            sent_ns: raw.sent_ns,
            received_ns: raw.received_ns,
        };
        match probing.prober.on_reply(reply, now, &mut group.fdt) {
            ReplyVerdict::Accepted(events) => {
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

    async fn probe_events(
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
                    let (target, answered) = match outcome {
                        ProbeOutcome::Answered { target, .. } => (target, true),
                        ProbeOutcome::Lost { target } => (target, false),
                    };
                    self.publish_probe(gi, ni, family, target, reply.filter(|_| answered), now);
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
                    tracing::info!("{}: {e:?}", self.groups[gi].nics[ni].name)
                }
                ProbeEvent::FdtRaised(change) => tracing::warn!("{}", change.message),
            }
        }
    }

    fn publish_probe(
        &self,
        gi: usize,
        ni: usize,
        family: AddressFamily,
        target: IpAddr,
        reply: Option<ProbeReply>,
        now: Instant,
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
            time_ms: now.duration_since(self.started).as_millis() as u64,
            interface: nic.name.clone(),
            seq: reply.map_or(0, |r| r.seq),
            target,
            net_rtt_us: reply.map(|r| r.received_ns.saturating_sub(r.sent_ns) / 1000),
            rtt_avg_us: stats.and_then(|s| s.rtt_avg_us),
            rtt_dev_us: stats.and_then(|s| s.rtt_dev_us),
        });
    }

    /// Reads the routing table again and gives the probers their on-link routers.
    async fn refresh_routes(&mut self) -> anyhow::Result<()> {
        self.routes_due = None;
        self.routes = self.netlink.routes().await?;
        let local: Vec<IpAddr> = self.addresses.iter().map(|(_, c)| c.addr()).collect();
        for g in &mut self.groups {
            for p in g.nics.iter_mut().flat_map(|n| &mut n.probing) {
                p.prober.update_routes(&self.routes, &local);
            }
        }
        Ok(())
    }

    /// Sends the probes that are due, declares lost the ones that timed out, and lets the
    /// state machines act on expired timers.
    async fn tick(&mut self) {
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
                let Some(probing) = nic.probing.get_mut(pi) else {
                    continue;
                };
                if probing.prober.next_probe_at() <= now {
                    let transmit = probing.prober.send(now, &mut self.rng, &group.fdt);
                    if let Some(probe) = transmit.probe {
                        self.metrics
                            .probe_sent(&group.config.name, &name, probe.target);
                        if let Err(e) =
                            probing
                                .socket
                                .send(probe.target, probe.seq, self.nonce, monotonic_ns())
                        {
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
                                .send(all_nodes, seq, self.nonce, monotonic_ns())
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
                match action {
                    Action::Failed { .. } | Action::GroupFailed | Action::LinkDown { .. } => {
                        tracing::warn!("{line}")
                    }
                    _ => tracing::info!("{line}"),
                }
            }
            match action {
                Action::UsableSetChanged => usable_changed = true,
                Action::FlushTargets { nics } => {
                    for name in nics {
                        for p in group.nic_mut(name).into_iter().flat_map(|n| &mut n.probing) {
                            p.prober.flush_discovered();
                        }
                    }
                }
                Action::Failed { nic, .. } | Action::Repaired { nic } => {
                    let failed = matches!(action, Action::Failed { .. });
                    for p in group.nic_mut(nic).into_iter().flat_map(|n| &mut n.probing) {
                        p.prober.set_nic_failed(failed);
                    }
                }
                _ => {}
            }
        }
        if usable_changed {
            // Addresses first: all inbound traffic to a moved address waits for it, while
            // only the outbound flows hashed to the failed NIC wait for the table.
            self.move_addresses(gi).await;
            self.write_table(gi);
        }
    }

    /// Rewrites the group's bucket table for its usable NICs, moving as few buckets as
    /// possible.
    fn write_table(&mut self, gi: usize) {
        let group = &self.groups[gi];
        let usable: Vec<u32> = group
            .fsm
            .usable_interfaces()
            .into_iter()
            .filter_map(|name| group.nic(name).and_then(|n| n.ifindex))
            .collect();
        let macs: BTreeMap<u32, [u8; 6]> = group
            .nics
            .iter()
            .filter_map(|n| n.ifindex.map(|i| (i, n.mac)))
            .collect();
        let result = self.datapath.maps.table(group.id).and_then(|current| {
            let table = spread::rebalance(&current, &usable);
            self.datapath.maps.write_table(group.id, &table, |i| {
                macs.get(&i).copied().unwrap_or_default()
            })
        });
        match result {
            Ok(moved) => tracing::debug!(
                "group {}: {moved} buckets moved, {} usable NICs",
                group.config.name,
                usable.len()
            ),
            Err(e) => tracing::error!("group {}: bucket table: {e}", group.config.name),
        }
    }

    /// Puts every data address where the placement plan wants it: adds it on the new NIC
    /// first and only then removes it from the old one, so it is never on no NIC; tells the
    /// peers at once.
    async fn move_addresses(&mut self, gi: usize) {
        let group = &self.groups[gi];
        let plan = match failover::plan(&group.fsm.nic_roles(), &group.addresses) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("group {}: {e}", group.config.name);
                return;
            }
        };
        let mut done = BTreeSet::new();
        for m in &plan.moves {
            let group = &self.groups[gi];
            let Some(to) = group.nic(&m.to).and_then(|n| n.ifindex.map(|i| (i, n.mac))) else {
                continue;
            };
            let options = AddressOptions {
                nodad: true,
                ..Default::default()
            };
            if let Err(e) = self.netlink.add_address(to.0, m.addr, options).await {
                tracing::error!("cannot move {} to {}: {e}", m.addr, m.to);
                continue;
            }
            if let Some(from) = m
                .from
                .as_deref()
                .and_then(|f| group.nic(f))
                .and_then(|n| n.ifindex)
                && let Err(e) = self.netlink.del_address(from, m.addr).await
            {
                tracing::error!("cannot remove {} from its old NIC: {e}", m.addr);
            }
            let announcement = Announcement {
                ifindex: to.0,
                mac: to.1,
                addr: m.addr.addr(),
                remaining: match m.addr.addr() {
                    IpAddr::V4(_) => announce::ARP_ANNOUNCEMENTS,
                    IpAddr::V6(_) => announce::NA_ANNOUNCEMENTS,
                } - 1,
                next: Instant::now() + announce::ANNOUNCE_INTERVAL,
            };
            if let Err(e) = announcement.send() {
                tracing::warn!("announcing {} on {}: {e}", m.addr, m.to);
            }
            self.announcements.retain(|a| a.addr != announcement.addr);
            if announcement.remaining > 0 {
                self.announcements.push(announcement);
            }
            done.insert(m.addr);
            let group = &mut self.groups[gi];
            if let Some(a) = group.addresses.iter_mut().find(|a| a.cidr == m.addr) {
                a.current = Some(m.to.clone());
            }
        }
        for transfer in plan.transfers() {
            if transfer.addresses.iter().all(|a| done.contains(a)) {
                tracing::info!("{transfer}");
                self.metrics
                    .transfer(&self.groups[gi].config.name, &transfer);
            }
        }
    }

    /// What a scrape shows of the groups and the datapath's counters, as they are now.
    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let mut snapshot = metrics::Snapshot::default();
        for g in &self.groups {
            snapshot.groups.push(metrics::GroupSnapshot {
                view: g.fsm.view(),
                fdt: g.fdt.view(),
                interfaces: g.fsm.interface_views(),
            });
            for n in &g.nics {
                match self.datapath.maps.counters(n.slot) {
                    Ok(counters) => snapshot.datapath.push(metrics::DatapathSnapshot {
                        group: g.config.name.clone(),
                        interface: n.name.clone(),
                        counters,
                    }),
                    Err(e) => tracing::debug!("metrics: counters of {}: {e}", n.name),
                }
            }
        }
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

    fn status(&self) -> Status {
        let mut status = Status::default();
        for g in &self.groups {
            let view = g.fsm.view();
            status.groups.push(GroupRow {
                group: view.group.clone(),
                state: label(view.state),
                fdt_ms: g.fdt.effective().as_millis() as u64,
                active: view.active.clone(),
                inactive: view.inactive.clone(),
                unusable: view.unusable.clone(),
            });
            status
                .interfaces
                .extend(g.fsm.interface_views().into_iter().map(|i| InterfaceRow {
                    interface: i.interface,
                    group: i.group,
                    active: i.active,
                    flags: i.flags.into_iter().map(label).collect(),
                    link: label(i.link),
                    probe: label(i.probe),
                    state: label(i.state),
                }));
            let outbound: Vec<String> = g
                .fsm
                .usable_interfaces()
                .into_iter()
                .map(str::to_string)
                .collect();
            status
                .addresses
                .extend(g.addresses.iter().map(|a| AddressRow {
                    address: a.cidr.to_string(),
                    state: if a.current.is_some() { "up" } else { "down" }.into(),
                    group: g.config.name.clone(),
                    inbound: a.current.clone(),
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
                        mode: "disabled".into(),
                        test_address: None,
                        targets: Vec::new(),
                    });
                }
                status.targets.extend(n.probing.iter().map(|p| {
                    let view = p.prober.view();
                    let multicast = view.targets.iter().any(|t| label(t.source) == "discovered");
                    TargetRow {
                        interface: n.name.clone(),
                        mode: if multicast { "multicast" } else { "routes" }.into(),
                        test_address: Some(view.test_address),
                        targets: p.prober.targets().active().collect(),
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
                link: if *up { "up" } else { "down" }.into(),
                probe: "disabled".into(),
                state: if *up { "ok" } else { "failed" }.into(),
            }));
        status
    }
}

/// Replays members' states from before a reload rebuilt their group's state machine.
fn carry_states(group: &mut Group, states: &[(String, IfState)], now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for (nic, state) in states {
        let event = match state {
            IfState::Offline { .. } => Event::Offline { nic: nic.clone() },
            IfState::Failed {
                cause: FailureCause::ProbesLost | FailureCause::TargetsUnreachable,
            } => Event::Adopt { nic: nic.clone() },
            _ => continue,
        };
        match group.fsm.handle(event, now) {
            Ok(more) => actions.extend(more),
            Err(e) => tracing::debug!("carrying {nic}'s state over the reload: {e}"),
        }
    }
    actions
}

/// Adopts what an earlier mpathd left: a probing NIC whose data addresses sit on another NIC
/// of the group had been failed by its probes (a link failure shows in the link state). It
/// stays failed until its probes repair it, so a restart neither fails back nor loses
/// traffic. Only with FAILBACK on: with it off, addresses away from home are normal.
fn adopt_failures(group: &mut Group, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for nic in &group.nics {
        if nic.probing.is_empty() {
            continue;
        }
        let Some(away) = group
            .addresses
            .iter()
            .find(|a| a.home == nic.name && a.current.as_ref().is_some_and(|c| *c != nic.name))
        else {
            continue;
        };
        let Ok(adopted) = group.fsm.handle(
            Event::Adopt {
                nic: nic.name.clone(),
            },
            now,
        ) else {
            continue;
        };
        if adopted.iter().any(|a| matches!(a, Action::Failed { .. })) {
            tracing::info!(
                "{} of {} is on {}: {} stays failed until its probes answer again",
                away.cidr,
                nic.name,
                away.current.as_deref().unwrap_or("--"),
                nic.name
            );
        }
        actions.extend(adopted);
    }
    actions
}

/// The NIC's IPv6 link-local address (its IPv6 test address), if it has one.
fn link_local_of(addresses: &[(u32, IpCidr)], ifindex: u32) -> Option<IpCidr> {
    addresses
        .iter()
        .find(|(i, c)| *i == ifindex && is_link_local(c.addr()))
        .map(|(_, c)| *c)
}

fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// Opens the probe socket and the prober of a NIC for the family of `test` (its IPv4 test
/// address or its IPv6 link-local address).
#[expect(
    clippy::too_many_arguments,
    reason = "all of it is needed to start a prober"
)]
fn start_probing(
    nic: &str,
    test: IpCidr,
    ifindex: u32,
    configured: &[IpAddr],
    routes: &[RouteEntry],
    local: &[IpAddr],
    fdt: &FailureDetectionTime,
    rng: &mut StdRng,
    now: Instant,
) -> Option<Probing> {
    let socket = match test.addr() {
        IpAddr::V4(addr) => ProbeSocket::v4(nic, ifindex, addr),
        IpAddr::V6(addr) => ProbeSocket::v6(nic, ifindex, addr),
    };
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot probe from {nic}: {e}");
            return None;
        }
    };
    let mut targets = match TargetSet::new(ifindex, test) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{nic}: {e}");
            return None;
        }
    };
    let family = AddressFamily::of(test.addr());
    let same_family: Vec<IpAddr> = configured
        .iter()
        .copied()
        .filter(|a| AddressFamily::of(*a) == family)
        .collect();
    if let Err(e) = targets.set_configured(&same_family) {
        tracing::error!("{nic}: {e}");
    }
    targets.update_routes(routes, local);
    let prober = Prober::new(nic.to_string(), targets, now, rng, fdt);
    Some(Probing {
        prober,
        socket,
        discovery: Vec::new(),
        had_targets: true,
    })
}
