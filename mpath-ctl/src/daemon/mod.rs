//! mpathd's event loop: it feeds link events, probe replies, timers and operator commands to
//! the per-group state machines (`core::state`), and carries out what they decide: bucket
//! tables (`core::spread`, `datapath`), address moves (`core::failover`, `core::reconcile`,
//! `net::netlink`, announcements), probes (`core::probe`, `net::probe_socket`) and group
//! routes (`core::routes`).
//!
//! The parts: `turn` (the loop and its turns: each input's handler marks what it left out of
//! date, and one `reconcile` pass brings it in line), `group` (each group's runtime and the
//! lookups), `nics` (NICs coming and going, resync), `actions` (the one interpreter of the
//! state machines' decisions), `addresses`,
//! `announcer`, `host` (a configuration checked against the host), `multicast` (memberships
//! that follow a failover), `probing`, `routes`, `sources` (the IPv6 source hook), `reload`,
//! `status`; `service` and `logging` face systemd. Everything the daemon does to the host
//! goes through `host_io`, so that scenario tests drive it with an in-memory host.

mod actions;
mod addresses;
mod announcer;
#[cfg(test)]
mod fake_host;
mod group;
mod host;
mod host_io;
pub mod logging;
mod multicast;
mod nics;
mod probing;
mod reconcile;
mod reload;
mod repeats;
mod routes;
#[cfg(test)]
mod scenarios;
mod service;
mod sources;
mod status;
mod teardown;
mod turn;

pub use host::check_against_host;
pub use teardown::{remove_routes, remove_test_addresses};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    api::control,
    api::metrics::{self, Metrics},
    config::Config,
    core::reconcile::prefix_route_lost,
    core::state::Event,
    daemon::{
        announcer::Announcer,
        group::Groups,
        host_io::{HostIo, LiveHost, LiveRtnetlink},
        multicast::Following,
        probing::ProbeContext,
        routes::Routing,
        service::Notifier,
        sources::SourceHook,
        turn::{Inbox, Signal},
    },
    datapath::Datapath,
    net::address::IpCidr,
    net::announce,
    net::carrier::CarrierWatch,
    net::netconf::Netconf,
    net::netlink::{Monitor, NetEvent},
};

/// How often mpathd looks whether its programs are still on every NIC and tries again where
/// they could not be attached, and whether its routing settings still hold: a detached
/// program or a reset setting is back within this, at the cost of a link query per NIC and
/// three small file reads.
const DATAPATH_CHECK: Duration = Duration::from_secs(2);

/// How soon a resynchronisation that failed (a dump interrupted by changes, say) is tried
/// again.
const RESYNC_RETRY: Duration = Duration::from_secs(1);

/// Where the configuration is read from, again on SIGHUP.
pub struct ConfigPaths {
    pub config: PathBuf,
    pub defaults: PathBuf,
}

/// mpathd: the daemon on the host itself.
pub struct Mpathd(Daemon<LiveHost>);

impl Mpathd {
    /// Loads (or adopts) the datapath and takes stock of the host: links, addresses, routes.
    /// `netlink_receive_buffer` sizes the event socket's buffer (see `Monitor`).
    pub async fn start(
        config: Config,
        paths: ConfigPaths,
        netlink_receive_buffer: usize,
    ) -> anyhow::Result<Mpathd> {
        Daemon::start(config, paths, netlink_receive_buffer)
            .await
            .map(Mpathd)
    }

    /// Runs until SIGTERM or SIGINT. The datapath stays pinned and the addresses stay where
    /// they are, so a restarted mpathd carries on without disturbing traffic.
    pub async fn run(self) -> anyhow::Result<()> {
        self.0.run().await
    }
}

/// The event loop's state, over the host `H` it acts on ([`LiveHost`] but in tests).
pub(crate) struct Daemon<H = LiveHost> {
    config: Config,
    paths: ConfigPaths,
    /// The bound control socket, until `run` serves it.
    control: Option<tokio::net::UnixListener>,
    host: H,
    groups: Groups,
    probes: ProbeContext,
    routing: Routing,
    /// The kernel's addresses by ifindex, kept current from netlink.
    addresses: Vec<(u32, IpCidr)>,
    /// Link state (usable or not) of NICs outside any group, tracked and reported when
    /// TRACK_INTERFACES_ONLY_WITH_GROUPS is off.
    ungrouped: BTreeMap<String, bool>,
    /// NICs outside the groups with carrier, by name: ifindex, and whether they answer ARP
    /// only for their own addresses (see `DaemonConfig::isolate_arp`).
    strays: BTreeMap<String, (u32, bool)>,
    /// Group NICs (by ifindex) that refused an IPv6 address because IPv6 is disabled on them,
    /// as NetworkManager does for a moment whenever it activates a profile: their IPv6
    /// addresses go back when an IPv6 address shows up on them again (IPv6 is back then).
    ipv6_off: BTreeSet<u32>,
    /// When mpathd last warned of IPv6 disabled on each NIC: NetworkManager disables it twice
    /// within milliseconds at one activation, which is one warning.
    ipv6_off_warned: BTreeMap<u32, Instant>,
    announcer: Announcer,
    /// Multicast memberships of unusable NICs that mpathd holds on the NICs that took over.
    following: Following,
    source_hook: SourceHook,
    /// This mpathd took over a running datapath (a restart): the groups it starts with skip
    /// the startup quiet period, which is for a cold start.
    restarted: bool,
    /// When to look again whether every NIC has its programs ([`Daemon::check_datapath`]).
    datapath_due: Instant,
    /// The carrier hook runs.
    carrier_hook: bool,
    /// Why the routing settings could not be set, as last reported.
    sysctl_errors: Vec<String>,
    /// When to try again a resynchronisation that failed after lost notifications.
    resync_due: Option<Instant>,
    metrics: Metrics,
}

impl Daemon<LiveHost> {
    /// Loads (or adopts) the datapath and takes stock of the host: links, addresses, routes.
    async fn start(
        config: Config,
        paths: ConfigPaths,
        netlink_receive_buffer: usize,
    ) -> anyhow::Result<Daemon> {
        // First of all: a second mpathd must stop here, before it touches the running one's
        // datapath (its probe key alone would make every probe reply look forged), whether it
        // names the same pin directory (locked while the datapath is open) or the same socket.
        let datapath = Datapath::open_with(&config.daemon.bpf_pin_dir, config.daemon.tc_attach)?;
        let control = control::bind(&config.daemon.socket)?;
        control::leave_hint(&config.daemon.socket, &config.daemon.bpf_pin_dir);
        // Subscribed before the first dump, so that nothing changing meanwhile is missed.
        let monitor = Monitor::open_with_receive_buffer(netlink_receive_buffer)
            .context("subscribing to rtnetlink events")?;
        let rtnetlink = LiveRtnetlink::connect()?;
        announce::open_socket()?;
        rtnetlink.nexthops.check_kernel().await?;
        let carrier_watch = CarrierWatch::start(config.daemon.carrier_poll)
            .context("starting the carrier watch")?;
        let host = LiveHost::new(datapath, rtnetlink, monitor, carrier_watch);
        Daemon::take_over(config, paths, host, ProbeContext::new(), Some(control)).await
    }

    /// Runs until SIGTERM or SIGINT.
    async fn run(mut self) -> anyhow::Result<()> {
        self.host.listen()?;
        let (commands_tx, commands) = mpsc::channel(16);
        let listener = self
            .control
            .take()
            .context("control socket already served")?;
        tokio::spawn(control::serve(
            listener,
            commands_tx,
            self.probes.rows.clone(),
        ));
        let (scrapes_tx, scrapes) = mpsc::channel(4);
        // Keeping hosts reachable matters more than being observed: without its metrics
        // port mpathd still runs, and says so.
        match metrics::bind(self.config.daemon.metrics_listen).await {
            Ok(listener) => {
                tokio::spawn(metrics::serve(listener, scrapes_tx));
            }
            Err(e) => tracing::error!("{e}; running without metrics"),
        }
        let mut inbox = Inbox {
            commands,
            scrapes,
            signals: forward_signals()?,
        };
        tracing::info!(
            "mpathd running: {} group(s), control socket {}",
            self.groups.len(),
            self.config.daemon.socket.display()
        );
        // `start` attached the datapath and placed the addresses and routes.
        let mut service = Notifier::from_env();
        service.ready(self.hash_states(), &self.status());
        self.serve(&mut inbox, &mut service).await?;
        service.stopping();
        control::remove_hint(&self.config.daemon.socket);
        tracing::info!("mpathd stopping; the datapath stays in place");
        Ok(())
    }
}

impl<H: HostIo> Daemon<H> {
    /// Takes over the host it was handed: the routing settings and mpathd's rule, the carrier
    /// hook, then the groups' NICs, addresses and routes. A host whose NICs carry the
    /// programs already is a restart.
    async fn take_over(
        config: Config,
        paths: ConfigPaths,
        mut host: H,
        probes: ProbeContext,
        control: Option<tokio::net::UnixListener>,
    ) -> anyhow::Result<Daemon<H>> {
        host.set_settings(probes.settings())?;
        // Whether the hook runs this time or not.
        if let Err(e) = host.clear_carrier_marks() {
            tracing::warn!("clearing the last carrier hook's marks: {e}");
        }
        // A datapath already running on NICs: mpathd restarts, the switch has long learnt
        // the NICs' MACs, and no startup quiet period holds a failure back.
        let restarted = host.pinned_nics().is_ok_and(|nics| !nics.is_empty());
        let sysctl_errors = set_routing_sysctls(&host.netconf(), false);
        for e in &sysctl_errors {
            tracing::warn!("{e}");
        }
        host.ensure_rules(config.daemon.route_table, config.daemon.route_rule_priority)
            .await
            .context("adding the rule that consults mpathd's routing table")?;
        let mut daemon = Daemon::new(config, paths, host, probes, restarted)?;
        daemon.control = control;
        daemon.sysctl_errors = sysctl_errors;
        // Before the NICs are set up: with the hook running, their carrier needs no reading.
        daemon.start_carrier_hook();
        daemon.take_stock().await?;
        Ok(daemon)
    }

    /// Attaches the carrier hook where the kernel takes it and the configuration allows it
    /// (the carrier watch then stays off), and says at start which way carrier loss reaches
    /// mpathd.
    fn start_carrier_hook(&mut self) {
        let attached = if self.config.daemon.carrier_hook {
            self.host.attach_carrier_hook()
        } else {
            Err("the carrier hook is off: carrier_hook = false".to_string())
        };
        match attached {
            Ok(()) => {
                self.carrier_hook = true;
                self.host.set_carrier_period(None);
                tracing::info!(
                    "carrier loss is reported by a tracing hook on netif_carrier_off (fentry), \
                     ahead of the kernel's link events; the NIC's outbound flows move in the \
                     kernel at once"
                );
            }
            Err(e) => match self.config.daemon.carrier_poll {
                Some(period) => tracing::info!(
                    "carrier loss is read from the drivers every {} ms (sysfs), ahead of \
                     the kernel's link events ({e})",
                    period.as_millis()
                ),
                None => tracing::info!(
                    "carrier loss is seen through the kernel's link events only \
                     (carrier_poll_ms = 0; {e}): up to a second late on a physical NIC"
                ),
            },
        }
    }

    /// The daemon before it has looked at the host: `restarted` when it takes over a running
    /// datapath.
    fn new(
        config: Config,
        paths: ConfigPaths,
        host: H,
        probes: ProbeContext,
        restarted: bool,
    ) -> anyhow::Result<Daemon<H>> {
        let metrics = Metrics::new(&config.groups)?;
        let now = host.now();
        Ok(Daemon {
            config,
            paths,
            control: None,
            host,
            groups: Groups::default(),
            probes,
            routing: Routing::default(),
            addresses: Vec::new(),
            ungrouped: BTreeMap::new(),
            strays: BTreeMap::new(),
            ipv6_off: BTreeSet::new(),
            ipv6_off_warned: BTreeMap::new(),
            announcer: Announcer::default(),
            following: Following::new(now),
            source_hook: SourceHook::default(),
            restarted,
            datapath_due: now + DATAPATH_CHECK,
            carrier_hook: false,
            sysctl_errors: Vec::new(),
            resync_due: None,
            metrics,
        })
    }

    /// Builds the configured groups and sets them up on the host: the source hook, the
    /// NICs, their addresses and the routes.
    async fn take_stock(&mut self) -> anyhow::Result<()> {
        for g in self.config.groups.clone() {
            self.add_group(&g)?;
        }
        self.set_up_source_hook();
        self.forget_retired_sources();
        let all = self.config.groups.iter().map(|g| g.name.clone()).collect();
        self.resync(&all, &BTreeMap::new()).await?;
        self.prune_stale_pins();
        // Groups a reload adds later start cold.
        self.restarted = false;
        Ok(())
    }

    fn next_wakeup(&self) -> Instant {
        let mut wake = self.host.now() + Duration::from_secs(1);
        let timers = [
            Some(self.datapath_due),
            self.resync_due,
            self.routing.due,
            self.routing.release_at,
            self.announcer.next_due(),
            Some(self.following.due),
        ];
        for t in timers.into_iter().flatten() {
            wake = wake.min(t);
        }
        for g in &self.groups {
            if let Some(t) = g.fsm.next_wakeup() {
                wake = wake.min(t);
            }
            for p in g.probers() {
                wake = wake.min(p.next_wakeup(&g.fdt));
            }
        }
        wake
    }

    /// What is due: planning the routes again, repeating announcements, looking at
    /// multicast memberships again, probes, and the state machines' timers.
    async fn tick(&mut self) {
        let now = self.host.now();
        if self.resync_due.is_some_and(|due| due <= now) {
            self.resync_after_overrun(now).await;
        }
        if self.routing.due.is_some_and(|due| due <= now) {
            self.replan().await;
        }
        if self.routing.release_at.is_some_and(|at| at <= now) {
            self.routing.release_at = None;
            routes::release_memory(&mut self.routing.free_after_trim);
        }
        for announcement in self.announcer.due(now) {
            if let Err(e) = self.host.announce(&announcement) {
                tracing::debug!("announcing {}: {e}", announcement.addr);
            }
        }
        self.recheck_memberships(now);
        if self.datapath_due <= now {
            self.check_datapath(now).await;
            let errors = set_routing_sysctls(&self.host.netconf(), true);
            if errors != self.sysctl_errors {
                errors.iter().for_each(|e| tracing::warn!("{e}"));
                self.sysctl_errors = errors;
            }
            self.datapath_due = now + DATAPATH_CHECK;
        }
        for id in self.groups.ids() {
            self.probe_group(id, now);
            if self.groups[id].fsm.next_wakeup().is_some_and(|t| t <= now) {
                self.handle(id, Event::Tick, now);
            }
        }
    }

    async fn net_event(&mut self, event: NetEvent) {
        let now = self.host.now();
        match event {
            NetEvent::Link(link) => {
                // The kernel deletes nexthops through a NIC without link, and IPv4 deletes
                // the routes through one taken down, without notifications.
                if !link.running && !link.lower_up || !link.up {
                    self.routing.nexthops_flushed(link.ifindex, now);
                }
                if !link.up {
                    self.routing.routes_flushed(link.ifindex, now);
                }
                if let Some(at) = self.groups.nic_at(link.ifindex)
                    && self.groups.nic(at).name != link.name
                {
                    self.link_renamed(at, &link, now).await;
                }
                match self.groups.nic_named(&link.name) {
                    Some(at) => self.link_changed(at, &link, now).await,
                    None => {
                        self.guard_stray(&link);
                        self.track_ungrouped(&link);
                    }
                }
            }
            NetEvent::LinkRemoved { name, ifindex } => {
                self.link_removed(&name, ifindex, now);
                self.routing.nexthops_flushed(ifindex, now);
                self.routing.main.remove_through(ifindex);
                self.routing.changed(now);
            }
            NetEvent::AddressAdded { ifindex, cidr } => self.address_added(ifindex, cidr).await,
            NetEvent::AddressRemoved { ifindex, cidr } => {
                self.address_removed(ifindex, cidr, now).await
            }
            NetEvent::RouteAdded(notice) => self.route_notice(true, notice, now),
            NetEvent::RouteRemoved(notice) => {
                let lost =
                    prefix_route_lost(&self.groups.holdings(), &notice.route, notice.protocol);
                let route = notice.route.clone();
                self.route_notice(false, notice, now);
                if let Some((oif, address)) = lost {
                    self.restore_prefix_route(oif, address, &route).await;
                }
            }
            NetEvent::RulesChanged => self.routing.rules_changed(now),
            NetEvent::NexthopDeleted { id } => self.routing.nexthop_deleted(id, now),
            NetEvent::Overrun => {
                tracing::warn!("the kernel dropped netlink events; resynchronising");
                self.resync_after_overrun(now).await;
            }
        }
    }

    /// Reads the host again after lost notifications; a read that fails is tried again
    /// shortly, since no event may come to trigger it.
    async fn resync_after_overrun(&mut self, now: Instant) {
        match self.resync(&BTreeSet::new(), &BTreeMap::new()).await {
            Ok(()) => self.resync_due = None,
            Err(e) => {
                tracing::error!(
                    "resynchronising after lost netlink events: {}; trying again in {} s",
                    logging::with_causes(e.as_ref()),
                    RESYNC_RETRY.as_secs()
                );
                self.resync_due = Some(now + RESYNC_RETRY);
            }
        }
    }

    /// Every address the kernel has, wherever it is: probe targets are never local.
    fn local_addresses(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|(_, c)| c.addr()).collect()
    }
}

/// Forwards SIGHUP, SIGTERM and SIGINT to the event loop.
fn forward_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let (signals, inbox) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                _ = sighup.recv() => Signal::Reload,
                _ = sigterm.recv() => Signal::Stop,
                _ = sigint.recv() => Signal::Stop,
            };
            if signals.send(received).await.is_err() {
                return;
            }
        }
    });
    Ok(inbox)
}

/// Sets the kernel's routing settings mpathd's routes depend on: the multipath hash on ports
/// (else routed flows do not spread) and no route announcements for nexthop group changes
/// (else a failover floods every routing monitor). At start, and every few seconds since
/// someone else (a configuration tool, an administrator) may set them back: `again` says so
/// in the log. Returns the errors, for the caller to report once.
fn set_routing_sysctls(netconf: &Netconf, again: bool) -> Vec<String> {
    let by_someone = if again {
        " again: someone else had set it back"
    } else {
        ""
    };
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    match netconf.hash_multipath_on_ports() {
        Ok(changed) => lines.extend(changed.into_iter().map(|path| {
            format!(
                "{} set to 1{by_someone}; flows spread by their ports too",
                path.display()
            )
        })),
        Err(e) => errors.push(format!("routed flows may not spread over the NICs: {e}")),
    }
    match netconf.nexthop_compat_off() {
        Ok(true) => lines.push(format!(
            "net.ipv4.nexthop_compat_mode set to 0{by_someone}; a failover replaces each \
             nexthop group without announcing every route through it again"
        )),
        Ok(false) => {}
        Err(e) => errors.push(format!(
            "each failover may announce every group route again, flooding routing monitors: {e}"
        )),
    }
    for line in lines {
        if again {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
    errors
}

/// The NIC's IPv6 link-local address (its IPv6 test address), if it has one.
fn link_local_of(addresses: &[(u32, IpCidr)], ifindex: u32) -> Option<IpCidr> {
    addresses
        .iter()
        .find(|(i, c)| *i == ifindex && is_link_local(c.addr()))
        .map(|(_, c)| *c)
}

fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.is_unicast_link_local())
}
