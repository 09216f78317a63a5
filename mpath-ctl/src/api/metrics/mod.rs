//! mpathd's Prometheus metrics, served as text exposition format 0.0.4 on `metrics_listen`.
//!
//! Two kinds of numbers end up in a scrape:
//! - events the event loop reports as they happen (probes sent, answered, lost, with their
//!   RTT; failures, repairs, failovers, failbacks, group failures): counters and histograms
//!   kept in [`Metrics`];
//! - state that already lives elsewhere (interface and group states from the state machines,
//!   the effective FDT, the datapath's per-NIC counters in the BPF maps): read only when
//!   scraped, from a [`Snapshot`] the event loop takes at that moment, so nothing is copied
//!   between scrapes.
//!
//! The HTTP server ([`serve`], in its own module) never touches the daemon's state. For each
//! scrape it sends a [`Scrape`](server::Scrape) to the event loop over a channel, as the
//! control socket does with its commands, and the loop answers with [`Metrics::render`]. The
//! loop stays the single owner of everything: no locks, and every scrape sees one consistent
//! instant.

mod server;

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use mpath_common::{NicCounters, RejectReason as DatapathRejectReason, sources::SourceCounters};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, MetricVec, MetricVecBuilder},
    process_collector::ProcessCollector,
};

pub use server::bind;
pub(crate) use server::{Scrape, serve};

use crate::{
    config::GroupConfig,
    core::failover::{MoveKind, Transfer},
    core::probe::{FdtView, ProbeOutcome, RejectReason as ReplyRejectReason},
    core::state::{
        FailureCause, GroupState, GroupView, InterfaceFlag, InterfaceStatus, InterfaceView,
        LinkState, ProbeStatus, UnusableReason,
    },
};

/// Bucket bounds (probes) of loss-burst histograms: single losses apart from a failure's
/// worth (NUM_PROBE_FAILS) and from outages.
pub(crate) const LOSS_BURST_BUCKETS: [f64; 9] = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// RTT histogram buckets (seconds), 1-2.5-5 per decade from 10 µs (kernel-timestamped
/// probes on a quiet LAN) to 10 s (far beyond any usable failure detection time).
pub(crate) const RTT_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    // The causes are part of the message and not error sources, so that a printed chain
    // does not repeat them.
    #[error("cannot listen for metrics on {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error("cannot define metric {name}: {error}")]
    Define {
        name: &'static str,
        error: prometheus::Error,
    },
    #[error("cannot encode the metrics: {0}")]
    Encode(prometheus::Error),
}

/// What the event loop knows at scrape time.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub groups: Vec<GroupSnapshot>,
    /// Datapath counters of the NICs whose counters could be read.
    pub datapath: Vec<DatapathSnapshot>,
    /// NICs outside any group, tracked when TRACK_INTERFACES_ONLY_WITH_GROUPS is off.
    pub ungrouped: Vec<UngroupedSnapshot>,
    /// NICs outside any group with carrier, and whether they answer ARP only for their own
    /// addresses.
    pub strays: Vec<(String, bool)>,
    /// Whether the source hook is attached (`sources = "spread"` took effect).
    pub source_hook_attached: bool,
    /// The source hook's counters of the groups whose counters could be read.
    pub sources: Vec<(String, SourceCounters)>,
    pub routes: RouteSizes,
}

/// How many routes mpathd follows and serves, and how many prefixes its source hook holds.
#[derive(Debug, Default)]
pub(crate) struct RouteSizes {
    /// Routes of `main` mpathd keeps from netlink.
    pub main: usize,
    /// Routes in mpathd's table; `None` until it was read.
    pub table: Option<usize>,
    /// Per family: the source hook's map size, the prefixes it should hold and those it holds.
    pub source_prefixes: Vec<SourcePrefixes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourcePrefixes {
    pub family: &'static str,
    pub limit: u32,
    pub wanted: usize,
    pub served: usize,
}

/// The groups, NICs and probe targets that exist now; see [`Metrics::retain`].
#[derive(Debug, Default)]
pub(crate) struct LiveSeries {
    pub groups: BTreeSet<String>,
    /// (group, NIC)
    pub nics: BTreeSet<(String, String)>,
    /// (group, NIC, target)
    pub targets: BTreeSet<(String, String, IpAddr)>,
}

/// Now, in seconds since the Unix epoch.
fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |t| t.as_secs_f64())
}

/// Removes the series of `family` whose labels `keep` refuses.
fn prune<T: MetricVecBuilder>(family: &MetricVec<T>, keep: &dyn Fn(&HashMap<&str, &str>) -> bool) {
    for metrics in family.collect() {
        for metric in metrics.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if !keep(&labels) {
                // Only fails for a series that is not there.
                let _: Result<_, _> = family.remove(&labels);
            }
        }
    }
}

/// One group as its state machine and its FDT see it.
#[derive(Debug)]
pub(crate) struct GroupSnapshot {
    pub view: GroupView,
    pub fdt: FdtView,
    pub interfaces: Vec<InterfaceView>,
    /// Each data address (with its prefix length) and the NIC it is on.
    pub addresses: Vec<(String, Option<String>)>,
}

/// A NIC outside any group: only its link is watched.
#[derive(Debug)]
pub(crate) struct UngroupedSnapshot {
    pub interface: String,
    pub link_up: bool,
}

/// One NIC's datapath counters, summed over CPUs (`Maps::counters`).
#[derive(Debug)]
pub(crate) struct DatapathSnapshot {
    pub group: String,
    pub interface: String,
    pub counters: NicCounters,
    /// Matched replies dropped over the NIC's reply budget.
    pub replies_over_budget: u64,
}

/// Counters and histograms of events, per (group, interface, target).
struct ProbeMetrics {
    sent: IntCounterVec,
    answered: IntCounterVec,
    lost: IntCounterVec,
    rtt: HistogramVec,
    interface_rtt: HistogramVec,
    loss_bursts: HistogramVec,
    unknown_replies: IntCounterVec,
    /// Probes lost in a row so far, per (group, NIC, target): a burst is observed when the
    /// next answer ends it.
    loss_runs: HashMap<(String, String, IpAddr), u32>,
}

/// Totals of what the state machines and address placement did.
struct EventMetrics {
    failures: IntCounterVec,
    repairs: IntCounterVec,
    failovers: IntCounterVec,
    failbacks: IntCounterVec,
    restores: IntCounterVec,
    group_failures: IntCounterVec,
}

/// Set from a [`Snapshot`] at each render, cleared before.
struct StateMetrics {
    group_state: IntGaugeVec,
    fdt: GaugeVec,
    configured_fdt: GaugeVec,
    probe_interval: GaugeVec,
    interface_state: IntGaugeVec,
    link_state: IntGaugeVec,
    probe_state: IntGaugeVec,
    family_probe_state: IntGaugeVec,
    active: IntGaugeVec,
    standby: IntGaugeVec,
    unusable: IntGaugeVec,
    address_interface: IntGaugeVec,
    stray_arp_isolated: IntGaugeVec,
}

/// The daemon itself: its configuration reloads.
struct DaemonMetrics {
    reloads: IntCounterVec,
    last_reload_successful: IntGaugeVec,
    last_reload_success: GaugeVec,
}

/// How a reload (SIGHUP or `mpathctl reload`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReloadResult {
    /// The new configuration was applied.
    Applied,
    /// The file had not changed.
    Unchanged,
    /// The file was refused (unreadable or invalid); the running configuration stays.
    Refused,
    /// Applying it failed part way (logged); what could be applied was.
    Failed,
}

named!(pub(crate) ReloadResult {
    Applied => "applied",
    Unchanged => "unchanged",
    Refused => "refused",
    Failed => "failed",
});

/// The datapath's own counters, copied from a [`Snapshot`] at each render.
struct DatapathMetrics {
    tx_packets: IntCounterVec,
    tx_bytes: IntCounterVec,
    redirected_packets: IntCounterVec,
    redirected_bytes: IntCounterVec,
    rx_packets: IntCounterVec,
    rx_bytes: IntCounterVec,
    probe_replies: IntCounterVec,
    probe_replies_dropped: IntCounterVec,
    probe_replies_over_budget: IntCounterVec,
    probe_replies_rejected: IntCounterVec,
    probe_checksum_failures: IntCounterVec,
    link_probes_answered: IntCounterVec,
    source_hook_attached: IntGaugeVec,
    sources_chosen: IntCounterVec,
    source_binds_failed: IntCounterVec,
}

/// Sizes of what mpathd follows and serves: the memory and the kernel maps they cost.
struct RouteMetrics {
    main: IntGaugeVec,
    table: IntGaugeVec,
    source_prefixes: IntGaugeVec,
    source_prefixes_wanted: IntGaugeVec,
    source_prefix_limit: IntGaugeVec,
}

impl RouteMetrics {
    fn new(d: &Definer<'_>) -> Result<RouteMetrics, MetricsError> {
        Ok(RouteMetrics {
            main: d.gauge(
                "mpath_main_routes",
                "Routes of the main table mpathd follows (both families): where its probe \
                 targets and the routes it serves through the groups come from.",
                NO_LABELS,
            )?,
            table: d.gauge(
                "mpath_table_routes",
                "Routes in mpathd's own table (both families), through the groups' nexthop \
                 groups.",
                NO_LABELS,
            )?,
            source_prefixes: d.gauge(
                "mpath_source_hook_prefixes",
                "Prefixes of mpathd's table the source hook's map holds: sockets to them get \
                 a group's data address as source.",
                &["family"],
            )?,
            source_prefixes_wanted: d.gauge(
                "mpath_source_hook_prefixes_wanted",
                "Prefixes of mpathd's table the source hook's map should hold; above \
                 mpath_source_hook_prefixes the kernel picks the sources of the rest.",
                &["family"],
            )?,
            source_prefix_limit: d.gauge(
                "mpath_source_hook_prefix_limit",
                "Prefixes the source hook's map can hold (its max_entries).",
                &["family"],
            )?,
        })
    }
}

/// mpathd's metrics; owned by the event loop, which reports events to it and renders it
/// for each [`Scrape`](server::Scrape).
pub(crate) struct Metrics {
    registry: Registry,
    probes: ProbeMetrics,
    events: EventMetrics,
    state: StateMetrics,
    datapath: DatapathMetrics,
    daemon: DaemonMetrics,
    routes: RouteMetrics,
}

const GROUP: &[&str] = &["group"];
const GROUP_STATE: &[&str] = &["group", "state"];
const NIC: &[&str] = &["group", "interface"];
const NIC_STATE: &[&str] = &["group", "interface", "state"];
const NIC_STATE_REASON: &[&str] = &["group", "interface", "reason"];
const NO_LABELS: &[&str] = &[];
const NIC_FAMILY_STATE: &[&str] = &["group", "interface", "family", "state"];
const ADDRESS: &[&str] = &["group", "address", "interface"];
const NIC_CAUSE: &[&str] = &["group", "interface", "cause"];
const NIC_REASON: &[&str] = &["group", "interface", "reason"];
const NIC_TARGET: &[&str] = &["group", "interface", "target"];

/// Creates a metric family and registers it, so that it shows in every render.
struct Definer<'a> {
    registry: &'a Registry,
}

impl Definer<'_> {
    fn register<C: Collector + Clone + 'static>(
        &self,
        name: &'static str,
        made: prometheus::Result<C>,
    ) -> Result<C, MetricsError> {
        let define = |error| MetricsError::Define { name, error };
        let collector = made.map_err(define)?;
        self.registry
            .register(Box::new(collector.clone()))
            .map_err(define)?;
        Ok(collector)
    }

    fn counter(
        &self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.register(name, IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(
        &self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricsError> {
        self.register(name, IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn seconds(
        &self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<GaugeVec, MetricsError> {
        self.register(name, GaugeVec::new(Opts::new(name, help), labels))
    }

    fn rtt(
        &self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(RTT_BUCKETS.to_vec());
        self.register(name, HistogramVec::new(opts, labels))
    }
}

impl ProbeMetrics {
    /// Defines the probe counters and histograms; their series appear with the first probe.
    fn new(d: &Definer<'_>) -> Result<ProbeMetrics, MetricsError> {
        Ok(ProbeMetrics {
            sent: d.counter(
                "mpath_probes_sent_total",
                "Probes sent from the NIC's test address to the target.",
                NIC_TARGET,
            )?,
            answered: d.counter(
                "mpath_probes_answered_total",
                "Probe replies accepted from the target (a late reply to a probe already \
                 counted as lost counts here too).",
                NIC_TARGET,
            )?,
            lost: d.counter(
                "mpath_probes_lost_total",
                "Probes that got no reply within the target's RTT bound.",
                NIC_TARGET,
            )?,
            rtt: d.rtt(
                "mpath_probe_rtt_seconds",
                "Round-trip time of answered probes per target (kernel timestamps where the \
                 datapath has them).",
                NIC_TARGET,
            )?,
            interface_rtt: d.rtt(
                "mpath_interface_probe_rtt_seconds",
                "Round-trip time of answered probes per NIC, all its targets together.",
                NIC,
            )?,
            loss_bursts: d.register(
                "mpath_probe_loss_burst_probes",
                HistogramVec::new(
                    HistogramOpts::new(
                        "mpath_probe_loss_burst_probes",
                        "Runs of probes to the target lost in a row, observed when an answer \
                         ends the run: sporadic loss piles up at 1, an outage shows as one \
                         long run.",
                    )
                    .buckets(LOSS_BURST_BUCKETS.to_vec()),
                    NIC_TARGET,
                ),
            )?,
            unknown_replies: d.counter(
                "mpath_probe_replies_unknown_total",
                "Matched replies the prober refused: sequence number outside the window of \
                 outstanding probes, from another target than the probe's, or duplicate.",
                NIC_REASON,
            )?,
            loss_runs: HashMap::new(),
        })
    }
}

impl EventMetrics {
    /// Defines the event totals; [`Metrics::declare_groups`] starts their series.
    fn new(d: &Definer<'_>) -> Result<EventMetrics, MetricsError> {
        Ok(EventMetrics {
            failures: d.counter(
                "mpath_interface_failures_total",
                "NIC failures detected, by cause.",
                NIC_CAUSE,
            )?,
            repairs: d.counter(
                "mpath_interface_repairs_total",
                "NIC repairs detected.",
                NIC,
            )?,
            failovers: d.counter(
                "mpath_failovers_total",
                "Failovers of data addresses away from this NIC (one per destination NIC).",
                NIC,
            )?,
            failbacks: d.counter(
                "mpath_failbacks_total",
                "Failbacks of data addresses to this NIC, their home.",
                NIC,
            )?,
            restores: d.counter(
                "mpath_address_restores_total",
                "Times missing data addresses were put back on this NIC.",
                NIC,
            )?,
            group_failures: d.counter(
                "mpath_group_failures_total",
                "Times every NIC of the group had failed.",
                GROUP,
            )?,
        })
    }
}

impl StateMetrics {
    /// Defines the gauges a render sets from its snapshot.
    fn new(d: &Definer<'_>) -> Result<StateMetrics, MetricsError> {
        Ok(StateMetrics {
            group_state: d.gauge(
                "mpath_group_state",
                "Group state: 1 for the current one (ok, degraded or failed), 0 for the others.",
                GROUP_STATE,
            )?,
            fdt: d.seconds(
                "mpath_group_failure_detection_time_seconds",
                "Effective failure detection time; above the configured one while the \
                 targets' RTT does not allow it.",
                GROUP,
            )?,
            configured_fdt: d.seconds(
                "mpath_group_configured_failure_detection_time_seconds",
                "Failure detection time from the configuration.",
                GROUP,
            )?,
            probe_interval: d.seconds(
                "mpath_group_probe_interval_seconds",
                "Interval between probes of each NIC, derived from the effective failure \
                 detection time.",
                GROUP,
            )?,
            interface_state: d.gauge(
                "mpath_interface_state",
                "NIC state: 1 for the current one (ok, failed, offline, unknown or missing), \
                 0 for the others.",
                NIC_STATE,
            )?,
            link_state: d.gauge(
                "mpath_interface_link_state",
                "NIC link (carrier) state: 1 for the current one (up, down or unknown), 0 for \
                 the others; NICs outside any group have an empty group label.",
                NIC_STATE,
            )?,
            probe_state: d.gauge(
                "mpath_interface_probe_state",
                "Probe-based detection state: 1 for the current one (ok, failed, unknown or \
                 disabled), 0 for the others.",
                NIC_STATE,
            )?,
            family_probe_state: d.gauge(
                "mpath_interface_family_probe_state",
                "Probe-based detection per address family (ipv4, ipv6) of NICs that probe in \
                 it: 1 for the current state (ok, failed or unknown), 0 for the others. A NIC \
                 probing both fails only when both fail: a failed family under an ok NIC \
                 loses that family's traffic.",
                NIC_FAMILY_STATE,
            )?,
            active: d.gauge(
                "mpath_interface_active",
                "1 when the NIC carries traffic, 0 when it is inactive or unusable.",
                NIC,
            )?,
            standby: d.gauge(
                "mpath_interface_standby",
                "1 for a NIC configured as a standby, 0 for the others.",
                NIC,
            )?,
            unusable: d.gauge(
                "mpath_interface_unusable",
                "Why the NIC carries no traffic: 1 for the reason (link_down, probes_lost, \
                 targets_unreachable, offline, duplicate_mac, no_datapath or missing), 0 for \
                 the others; all 0 while it is usable.",
                NIC_STATE_REASON,
            )?,
            address_interface: d.gauge(
                "mpath_address_interface",
                "1 for the NIC each data address is on (the interface label is empty while \
                 it is on none).",
                ADDRESS,
            )?,
            stray_arp_isolated: d.gauge(
                "mpath_stray_interface_arp_isolated",
                "One series per NIC outside the groups with carrier: 1 when it answers ARP only \
                 for its own addresses, 0 when it answers for the groups' test and data \
                 addresses too and can draw their traffic (isolate_arp = false, or a setting \
                 that could not be written).",
                &["interface"],
            )?,
        })
    }
}

impl DaemonMetrics {
    /// Defines the reload metrics, as after a successful start: every result at 0 reloads.
    fn new(d: &Definer<'_>) -> Result<DaemonMetrics, MetricsError> {
        let daemon = DaemonMetrics {
            reloads: d.counter(
                "mpath_config_reloads_total",
                "Configuration reloads (SIGHUP) by result: applied, unchanged, refused, failed.",
                &["result"],
            )?,
            last_reload_successful: d.gauge(
                "mpath_config_last_reload_successful",
                "1 when the last reload was applied or found the file unchanged, 0 when it \
                 was refused or failed (1 before any reload).",
                NO_LABELS,
            )?,
            last_reload_success: d.seconds(
                "mpath_config_last_reload_success_timestamp_seconds",
                "When the configuration was last loaded successfully (at start or by a \
                 reload), in seconds since the Unix epoch.",
                NO_LABELS,
            )?,
        };
        daemon
            .last_reload_successful
            .with_label_values(NO_LABELS)
            .set(1);
        daemon
            .last_reload_success
            .with_label_values(NO_LABELS)
            .set(unix_seconds());
        for result in ReloadResult::ALL {
            daemon.reloads.with_label_values(&[result.as_str()]);
        }
        Ok(daemon)
    }
}

impl DatapathMetrics {
    /// Defines the copies of the datapath's counters a render takes from its snapshot.
    fn new(d: &Definer<'_>) -> Result<DatapathMetrics, MetricsError> {
        Ok(DatapathMetrics {
            tx_packets: d.counter(
                "mpath_datapath_transmit_packets_total",
                "Packets that left through this NIC after load spreading.",
                NIC,
            )?,
            tx_bytes: d.counter(
                "mpath_datapath_transmit_bytes_total",
                "Bytes that left through this NIC after load spreading.",
                NIC,
            )?,
            redirected_packets: d.counter(
                "mpath_datapath_redirected_packets_total",
                "Packets routed to this NIC that load spreading sent out through another.",
                NIC,
            )?,
            redirected_bytes: d.counter(
                "mpath_datapath_redirected_bytes_total",
                "Bytes routed to this NIC that load spreading sent out through another.",
                NIC,
            )?,
            rx_packets: d.counter(
                "mpath_datapath_receive_packets_total",
                "Packets received on this NIC.",
                NIC,
            )?,
            rx_bytes: d.counter(
                "mpath_datapath_receive_bytes_total",
                "Bytes received on this NIC.",
                NIC,
            )?,
            probe_replies: d.counter(
                "mpath_datapath_probe_replies_total",
                "Probe replies the datapath matched and handed to mpathd.",
                NIC,
            )?,
            probe_replies_dropped: d.counter(
                "mpath_datapath_probe_replies_dropped_total",
                "Matched probe replies lost because mpathd's ring buffer was full.",
                NIC,
            )?,
            probe_replies_over_budget: d.counter(
                "mpath_datapath_probe_replies_over_budget_total",
                "Matched probe replies dropped because the NIC had used its reply budget (a \
                 flood of replies on this NIC, such as replayed ones) or its budget of answers \
                 to discovery echoes (more hosts on the link than mpathd needs).",
                NIC,
            )?,
            probe_replies_rejected: d.counter(
                "mpath_datapath_probe_replies_rejected_total",
                "Packets that looked like probe replies but were refused, by reason.",
                NIC_REASON,
            )?,
            probe_checksum_failures: d.counter(
                "mpath_datapath_probe_checksum_failures_total",
                "Probes sent with a wrong ICMP checksum because its fix-up after the send \
                 stamp failed: the target drops them, so they count as lost.",
                NIC,
            )?,
            link_probes_answered: d.counter(
                "mpath_datapath_link_probes_answered_total",
                "Link-layer probes of the group's alternates that the NIC's receive program \
                 answered (transitive probing).",
                NIC,
            )?,
            source_hook_attached: d.gauge(
                "mpath_source_hook_attached",
                "1 while the source hook gives sockets their sources over the groups' data \
                 addresses (sources = \"spread\"), 0 while the kernel picks them.",
                NO_LABELS,
            )?,
            sources_chosen: d.counter(
                "mpath_sources_chosen_total",
                "Sockets and datagrams the source hook gave one of the group's data addresses as source.",
                GROUP,
            )?,
            source_binds_failed: d.counter(
                "mpath_source_binds_failed_total",
                "Sockets whose chosen source the kernel refused (an address in the middle \
                 of a move); the kernel picked their source.",
                GROUP,
            )?,
        })
    }
}

impl Metrics {
    /// Defines every metric and starts the event totals (and refused replies) of the
    /// configured groups and NICs at zero, so that a rate over them is defined before the first event.
    pub(crate) fn new(groups: &[GroupConfig]) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let d = Definer {
            registry: &registry,
        };
        let build = d.gauge(
            "mpath_build_info",
            "Always 1; the version and commit labels say which mpath runs.",
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("MPATH_COMMIT")])
            .set(1);
        // The process_* series (CPU, memory, descriptors, start time) that every
        // Prometheus-instrumented daemon has.
        registry
            .register(Box::new(ProcessCollector::for_self()))
            .map_err(|error| MetricsError::Define {
                name: "process_*",
                error,
            })?;
        let metrics = Metrics {
            probes: ProbeMetrics::new(&d)?,
            events: EventMetrics::new(&d)?,
            state: StateMetrics::new(&d)?,
            datapath: DatapathMetrics::new(&d)?,
            daemon: DaemonMetrics::new(&d)?,
            routes: RouteMetrics::new(&d)?,
            registry,
        };
        metrics.declare_groups(groups);
        Ok(metrics)
    }

    /// Starts the event totals of these groups and their NICs at zero (again after a
    /// reload that added some; existing totals are kept).
    pub(crate) fn declare_groups(&self, groups: &[GroupConfig]) {
        let e = &self.events;
        for group in groups {
            e.group_failures.with_label_values(&[&group.name]);
            for nic in &group.interfaces {
                let labels = [group.name.as_str(), nic.name.as_str()];
                for cause in FailureCause::ALL {
                    e.failures
                        .with_label_values(&[labels[0], labels[1], cause.as_str()]);
                }
                for family in [&e.repairs, &e.failovers, &e.failbacks, &e.restores] {
                    family.with_label_values(&labels);
                }
                for reason in ReplyRejectReason::LABELS {
                    self.probes
                        .unknown_replies
                        .with_label_values(&[labels[0], labels[1], reason]);
                }
            }
        }
    }

    /// Drops the series of groups, NICs and probe targets that are gone (a reload removed
    /// them, a route or discovery change replaced a target), so that a long-running daemon
    /// neither grows nor keeps reporting what no longer exists. The daemon calls this before
    /// each render.
    pub(crate) fn retain(&mut self, live: &LiveSeries) {
        let keep = |labels: &HashMap<&str, &str>| {
            let group = labels.get("group").copied().unwrap_or_default();
            match (labels.get("interface"), labels.get("target")) {
                (Some(nic), Some(target)) => target.parse().is_ok_and(|target: IpAddr| {
                    live.targets
                        .contains(&(group.to_owned(), (*nic).to_owned(), target))
                }),
                (Some(nic), None) => live.nics.contains(&(group.to_owned(), (*nic).to_owned())),
                (None, _) => live.groups.contains(group),
            }
        };
        let p = &self.probes;
        let e = &self.events;
        for family in [
            &p.sent,
            &p.answered,
            &p.lost,
            &p.unknown_replies,
            &e.failures,
            &e.repairs,
            &e.failovers,
            &e.failbacks,
            &e.restores,
            &e.group_failures,
        ] {
            prune(family, &keep);
        }
        for family in [&p.rtt, &p.interface_rtt, &p.loss_bursts] {
            prune(family, &keep);
        }
        self.probes
            .loss_runs
            .retain(|key, _| live.targets.contains(key));
    }

    /// A probe left `nic` for `target`.
    /// A probe of `nic` went to `target`; its answered and lost totals start at zero with
    /// the target's first probe, so that a loss ratio is defined before any loss.
    pub(crate) fn probe_sent(&self, group: &str, nic: &str, target: IpAddr) {
        let target = target.to_string();
        let labels = [group, nic, target.as_str()];
        let sent = self.probes.sent.with_label_values(&labels);
        if sent.get() == 0 {
            self.probes.answered.with_label_values(&labels);
            self.probes.lost.with_label_values(&labels);
        }
        sent.inc();
    }

    /// A probe of `nic` was answered or declared lost, as its prober reported it.
    pub(crate) fn probe_outcome(&mut self, group: &str, nic: &str, outcome: ProbeOutcome) {
        let (ProbeOutcome::Answered { target, .. } | ProbeOutcome::Lost { target, .. }) = outcome;
        let run_key = (group.to_owned(), nic.to_owned(), target);
        match outcome {
            ProbeOutcome::Answered { target, rtt } => {
                let target = target.to_string();
                let labels = [group, nic, &target];
                if let Some(run) = self.probes.loss_runs.remove(&run_key) {
                    self.probes
                        .loss_bursts
                        .with_label_values(&labels)
                        .observe(f64::from(run));
                }
                self.probes.answered.with_label_values(&labels).inc();
                self.probes
                    .rtt
                    .with_label_values(&labels)
                    .observe(rtt.as_secs_f64());
                self.probes
                    .interface_rtt
                    .with_label_values(&[group, nic])
                    .observe(rtt.as_secs_f64());
            }
            ProbeOutcome::Lost { target, .. } => {
                *self.probes.loss_runs.entry(run_key).or_default() += 1;
                let target = target.to_string();
                self.probes
                    .lost
                    .with_label_values(&[group, nic, &target])
                    .inc();
            }
        }
    }

    /// The prober of `nic` refused a reply the datapath had matched.
    pub(crate) fn reply_refused(&self, group: &str, nic: &str, reason: ReplyRejectReason) {
        self.probes
            .unknown_replies
            .with_label_values(&[group, nic, reason.as_str()])
            .inc();
    }

    /// A NIC of `group` was declared failed.
    pub(crate) fn failure(&self, group: &str, nic: &str, cause: FailureCause) {
        self.events
            .failures
            .with_label_values(&[group, nic, cause.as_str()])
            .inc();
    }

    /// A NIC of `group` was declared repaired.
    pub(crate) fn repair(&self, group: &str, nic: &str) {
        self.events.repairs.with_label_values(&[group, nic]).inc();
    }

    /// Every NIC of `group` failed.
    pub(crate) fn group_failure(&self, group: &str) {
        self.events.group_failures.with_label_values(&[group]).inc();
    }

    /// A reload ended with `result`.
    pub(crate) fn reload(&self, result: ReloadResult) {
        let d = &self.daemon;
        d.reloads.with_label_values(&[result.as_str()]).inc();
        let successful = matches!(result, ReloadResult::Applied | ReloadResult::Unchanged);
        d.last_reload_successful
            .with_label_values(NO_LABELS)
            .set(i64::from(successful));
        if successful {
            d.last_reload_success
                .with_label_values(NO_LABELS)
                .set(unix_seconds());
        }
    }

    /// Counts a completed transfer of data addresses (one "Successfully failed over/back"
    /// log line): a failover on the NIC left, a failback or restore on the NIC reached.
    /// `nic` is the one [`Transfer::interface`] names.
    pub(crate) fn transfer(&self, group: &str, transfer: &Transfer, nic: &str) {
        let e = &self.events;
        let family = match (transfer.kind, transfer.from) {
            (MoveKind::Failover, Some(_)) => &e.failovers,
            (MoveKind::Failback, _) => &e.failbacks,
            (MoveKind::Restore, _) | (MoveKind::Failover, None) => &e.restores,
            // A first placement restores nothing.
            (MoveKind::Place, _) => return,
        };
        family.with_label_values(&[group, nic]).inc();
    }

    /// The metrics as text exposition format 0.0.4: the event totals, and the state and
    /// datapath counters of `snapshot`.
    pub(crate) fn render(&self, snapshot: &Snapshot) -> Result<String, MetricsError> {
        self.set_state(snapshot);
        self.set_datapath(snapshot);
        self.set_routes(&snapshot.routes);
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(MetricsError::Encode)
    }

    fn set_state(&self, snapshot: &Snapshot) {
        let s = &self.state;
        for family in [
            &s.group_state,
            &s.interface_state,
            &s.link_state,
            &s.probe_state,
            &s.family_probe_state,
            &s.active,
            &s.standby,
            &s.unusable,
            &s.address_interface,
            &s.stray_arp_isolated,
        ] {
            family.reset();
        }
        for (nic, isolated) in &snapshot.strays {
            s.stray_arp_isolated
                .with_label_values(&[nic])
                .set(i64::from(*isolated));
        }
        for family in [&s.fdt, &s.configured_fdt, &s.probe_interval] {
            family.reset();
        }
        for group in &snapshot.groups {
            let name = group.view.group.as_str();
            set_one_of(
                &s.group_state,
                &[name],
                GroupState::ALL,
                group.view.state,
                GroupState::as_str,
            );
            let fdt = &group.fdt;
            let seconds = |ms: u64| Duration::from_millis(ms).as_secs_f64();
            s.fdt
                .with_label_values(&[name])
                .set(seconds(fdt.effective_ms));
            s.configured_fdt
                .with_label_values(&[name])
                .set(seconds(fdt.configured_ms));
            s.probe_interval
                .with_label_values(&[name])
                .set(Duration::from_micros(fdt.probe_interval_us).as_secs_f64());
            for nic in &group.interfaces {
                let labels = [name, nic.interface.as_str()];
                set_one_of(
                    &s.interface_state,
                    &labels,
                    InterfaceStatus::ALL,
                    nic.state,
                    InterfaceStatus::as_str,
                );
                set_one_of(
                    &s.link_state,
                    &labels,
                    LinkState::ALL,
                    nic.link,
                    LinkState::as_str,
                );
                set_one_of(
                    &s.probe_state,
                    &labels,
                    ProbeStatus::ALL,
                    nic.probe,
                    ProbeStatus::as_str,
                );
                for (family, probe) in [("ipv4", nic.probe_ipv4), ("ipv6", nic.probe_ipv6)] {
                    if let Some(probe) = probe {
                        set_one_of(
                            &s.family_probe_state,
                            &[name, nic.interface.as_str(), family],
                            ProbeStatus::ALL,
                            probe,
                            ProbeStatus::as_str,
                        );
                    }
                }
                s.active
                    .with_label_values(&labels)
                    .set(i64::from(nic.active));
                s.standby
                    .with_label_values(&labels)
                    .set(i64::from(nic.flags.contains(&InterfaceFlag::Standby)));
                for &reason in UnusableReason::ALL {
                    s.unusable
                        .with_label_values(&[name, nic.interface.as_str(), reason.as_str()])
                        .set(i64::from(nic.unusable == Some(reason)));
                }
            }
            for (address, interface) in &group.addresses {
                s.address_interface
                    .with_label_values(&[name, address, interface.as_deref().unwrap_or("")])
                    .set(1);
            }
        }
        for nic in &snapshot.ungrouped {
            let link = if nic.link_up {
                LinkState::Up
            } else {
                LinkState::Down
            };
            // No group: the label is empty, which Prometheus treats as absent.
            let labels = ["", nic.interface.as_str()];
            set_one_of(
                &s.link_state,
                &labels,
                LinkState::ALL,
                link,
                LinkState::as_str,
            );
        }
    }

    fn set_datapath(&self, snapshot: &Snapshot) {
        let d = &self.datapath;
        let families = [
            &d.tx_packets,
            &d.tx_bytes,
            &d.redirected_packets,
            &d.redirected_bytes,
            &d.rx_packets,
            &d.rx_bytes,
            &d.probe_replies,
            &d.probe_replies_dropped,
            &d.probe_replies_over_budget,
            &d.probe_replies_rejected,
            &d.probe_checksum_failures,
            &d.link_probes_answered,
            &d.sources_chosen,
            &d.source_binds_failed,
        ];
        for family in families {
            family.reset();
        }
        d.source_hook_attached
            .with_label_values(NO_LABELS)
            .set(i64::from(snapshot.source_hook_attached));
        for (group, c) in &snapshot.sources {
            d.sources_chosen
                .with_label_values(&[group])
                .inc_by(c.chosen);
            d.source_binds_failed
                .with_label_values(&[group])
                .inc_by(c.bind_failed);
        }
        for nic in &snapshot.datapath {
            let labels = [nic.group.as_str(), nic.interface.as_str()];
            let c = &nic.counters;
            for (family, value) in [
                (&d.tx_packets, c.tx_packets),
                (&d.tx_bytes, c.tx_bytes),
                (&d.redirected_packets, c.redirected_packets),
                (&d.redirected_bytes, c.redirected_bytes),
                (&d.rx_packets, c.rx_packets),
                (&d.rx_bytes, c.rx_bytes),
                (&d.probe_replies, c.probe_replies),
                (&d.probe_replies_dropped, c.probe_replies_lost),
                (&d.probe_replies_over_budget, nic.replies_over_budget),
                (&d.probe_checksum_failures, c.probe_checksum_failed),
                (&d.link_probes_answered, c.link_probes_answered),
            ] {
                family.with_label_values(&labels).inc_by(value);
            }
            for reason in DatapathRejectReason::ALL {
                d.probe_replies_rejected
                    .with_label_values(&[labels[0], labels[1], reason.label()])
                    .inc_by(c.rejected[reason as usize]);
            }
        }
    }

    fn set_routes(&self, sizes: &RouteSizes) {
        let r = &self.routes;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        r.main.with_label_values(NO_LABELS).set(count(sizes.main));
        for family in [
            &r.table,
            &r.source_prefixes,
            &r.source_prefixes_wanted,
            &r.source_prefix_limit,
        ] {
            family.reset();
        }
        if let Some(routes) = sizes.table {
            r.table.with_label_values(NO_LABELS).set(count(routes));
        }
        for p in &sizes.source_prefixes {
            let family = [p.family];
            r.source_prefixes
                .with_label_values(&family)
                .set(count(p.served));
            r.source_prefixes_wanted
                .with_label_values(&family)
                .set(count(p.wanted));
            r.source_prefix_limit
                .with_label_values(&family)
                .set(i64::from(p.limit));
        }
    }
}

/// Sets an enum-style gauge: one series per possible value, 1 for `current`, 0 for the rest,
/// so that a query can both select a state and see that the series exists.
fn set_one_of<T: Copy + PartialEq>(
    family: &IntGaugeVec,
    labels: &[&str],
    all: &[T],
    current: T,
    label: fn(T) -> &'static str,
) {
    for &value in all {
        let mut with_state = labels.to_vec();
        with_state.push(label(value));
        family
            .with_label_values(&with_state)
            .set(i64::from(value == current));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };

    use mpath_common::RejectReason as DatapathRejectReason;

    use super::*;
    use crate::config::{InterfaceConfig, SpreadMode};
    use crate::core::identity::test_slot;

    fn group_config(name: &str, nics: &[&str]) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            targets: Vec::new(),
            interfaces: nics
                .iter()
                .map(|n| InterfaceConfig {
                    name: (*n).into(),
                    test_address: None,
                    data_addresses: Vec::new(),
                    standby: false,
                })
                .collect(),
            spread: SpreadMode::Routes,
            routes: Vec::new(),
            probe_rx: Default::default(),
        }
    }

    fn interface(group: &str, name: &str, state: InterfaceStatus) -> InterfaceView {
        let ok = state == InterfaceStatus::Ok;
        InterfaceView {
            interface: name.into(),
            group: group.into(),
            active: ok,
            flags: if name == "h1" {
                vec![InterfaceFlag::Standby]
            } else {
                Vec::new()
            },
            link: if ok { LinkState::Up } else { LinkState::Down },
            probe: if ok {
                ProbeStatus::Ok
            } else {
                ProbeStatus::Unknown
            },
            // A working NIC whose IPv6 probes fail while IPv4 holds it up; a broken one
            // probing IPv4 only.
            probe_ipv4: Some(if ok {
                ProbeStatus::Ok
            } else {
                ProbeStatus::Unknown
            }),
            probe_ipv6: ok.then_some(ProbeStatus::Failed),
            state,
            unusable: (!ok).then_some(UnusableReason::LinkDown),
        }
    }

    /// Group `g0` of h0 and h1, in the given states.
    pub(super) fn snapshot(h0: InterfaceStatus, h1: InterfaceStatus) -> Snapshot {
        let state = match (h0, h1) {
            (InterfaceStatus::Ok, InterfaceStatus::Ok) => GroupState::Ok,
            (InterfaceStatus::Ok, _) | (_, InterfaceStatus::Ok) => GroupState::Degraded,
            _ => GroupState::Failed,
        };
        let mut counters = NicCounters {
            tx_packets: 1200,
            tx_bytes: 96_000,
            redirected_packets: 300,
            redirected_bytes: 24_000,
            rx_packets: 900,
            rx_bytes: 72_000,
            probe_replies: 40,
            probe_replies_lost: 2,
            probe_checksum_failed: 3,
            link_probes_answered: 5,
            ..Default::default()
        };
        counters.rejected[DatapathRejectReason::BadTag as usize] = 7;
        Snapshot {
            groups: vec![GroupSnapshot {
                view: GroupView {
                    group: "g0".into(),
                    state,
                    active: vec!["h0".into()],
                    inactive: Vec::new(),
                    unusable: vec!["h1".into()],
                },
                fdt: FdtView {
                    group: "g0".into(),
                    configured_ms: 1000,
                    effective_ms: 2000,
                    probe_interval_us: 285_714,
                },
                interfaces: vec![interface("g0", "h0", h0), interface("g0", "h1", h1)],
                addresses: vec![
                    ("192.0.2.19/24".into(), Some("h0".into())),
                    ("192.0.2.20/24".into(), None),
                ],
            }],
            datapath: vec![DatapathSnapshot {
                group: "g0".into(),
                interface: "h0".into(),
                counters,
                replies_over_budget: 5,
            }],
            ungrouped: Vec::new(),
            strays: Vec::new(),
            source_hook_attached: true,
            sources: vec![(
                "g0".into(),
                SourceCounters {
                    chosen: 12,
                    bind_failed: 1,
                },
            )],
            routes: RouteSizes {
                main: 100_004,
                table: Some(100_001),
                source_prefixes: vec![SourcePrefixes {
                    family: "ipv4",
                    limit: 16_384,
                    wanted: 100_001,
                    served: 16_384,
                }],
            },
        }
    }

    fn target() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    /// A daemon's worth of metrics: probes in every outcome, a failure, a failover, a
    /// repair and a failback.
    pub(super) fn populated() -> Metrics {
        let mut m = Metrics::new(&[group_config("g0", &["h0", "h1"])]).unwrap();
        for _ in 0..3 {
            m.probe_sent("g0", "h0", target());
        }
        m.probe_outcome(
            "g0",
            "h0",
            ProbeOutcome::Answered {
                target: target(),
                rtt: Duration::from_micros(300),
            },
        );
        m.probe_outcome(
            "g0",
            "h0",
            ProbeOutcome::Lost {
                target: target(),
                seq: 0,
            },
        );
        m.reply_refused("g0", "h0", ReplyRejectReason::Duplicate);
        m.failure("g0", "h1", FailureCause::LinkDown);
        m.transfer("g0", &transfer(MoveKind::Failover, Some("h1"), "h0"), "h1");
        m.repair("g0", "h1");
        m.transfer("g0", &transfer(MoveKind::Failback, None, "h1"), "h1");
        m
    }

    fn transfer(kind: MoveKind, from: Option<&str>, to: &str) -> Transfer {
        Transfer {
            kind,
            from: from.map(test_slot),
            to: test_slot(to),
            addresses: vec!["192.0.2.19/24".parse().unwrap()],
        }
    }

    /// The value of one series, given exactly as the encoder writes it (labels sorted by
    /// name); `None` when the series is absent.
    pub(super) fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.parse().expect("a sample value"))
        })
    }

    #[test]
    fn families_standbys_addresses_the_build_and_reloads_are_shown() {
        let m = populated();
        let text = m
            .render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Failed))
            .unwrap();
        let family = |nic: &str, family: &str, state: &str| {
            format!(
                r#"mpath_interface_family_probe_state{{family="{family}",group="g0",interface="{nic}",state="{state}"}}"#
            )
        };
        for (series, value) in [
            (family("h0", "ipv4", "ok"), 1.0),
            (family("h0", "ipv6", "failed"), 1.0),
            (family("h0", "ipv6", "ok"), 0.0),
            (family("h1", "ipv4", "unknown"), 1.0),
            (
                r#"mpath_interface_standby{group="g0",interface="h1"}"#.into(),
                1.0,
            ),
            ("mpath_source_hook_attached".into(), 1.0),
            (r#"mpath_sources_chosen_total{group="g0"}"#.into(), 12.0),
            (r#"mpath_source_binds_failed_total{group="g0"}"#.into(), 1.0),
            (
                r#"mpath_interface_standby{group="g0",interface="h0"}"#.into(),
                0.0,
            ),
            (
                r#"mpath_interface_unusable{group="g0",interface="h0",reason="link_down"}"#.into(),
                0.0,
            ),
            (
                r#"mpath_interface_unusable{group="g0",interface="h1",reason="link_down"}"#.into(),
                1.0,
            ),
            (
                r#"mpath_interface_unusable{group="g0",interface="h1",reason="no_datapath"}"#
                    .into(),
                0.0,
            ),
            (
                r#"mpath_address_interface{address="192.0.2.19/24",group="g0",interface="h0"}"#
                    .into(),
                1.0,
            ),
            (
                r#"mpath_address_interface{address="192.0.2.20/24",group="g0",interface=""}"#
                    .into(),
                1.0,
            ),
            (
                format!(
                    r#"mpath_build_info{{commit="{}",version="{}"}}"#,
                    env!("MPATH_COMMIT"),
                    env!("CARGO_PKG_VERSION")
                ),
                1.0,
            ),
            ("mpath_config_last_reload_successful".into(), 1.0),
            (
                r#"mpath_config_reloads_total{result="refused"}"#.into(),
                0.0,
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(value), "{series}\n{text}");
        }
        assert_eq!(
            sample(&text, &family("h1", "ipv6", "unknown")),
            None,
            "no series for a family the NIC does not probe"
        );
        let loaded = sample(&text, "mpath_config_last_reload_success_timestamp_seconds").unwrap();

        m.reload(ReloadResult::Refused);
        let text = m.render(&Snapshot::default()).unwrap();
        assert_eq!(
            sample(&text, "mpath_config_last_reload_successful"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"mpath_config_reloads_total{result="refused"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "mpath_config_last_reload_success_timestamp_seconds"),
            Some(loaded),
            "a refused reload loads nothing"
        );
        m.reload(ReloadResult::Applied);
        let text = m.render(&Snapshot::default()).unwrap();
        assert_eq!(
            sample(&text, "mpath_config_last_reload_successful"),
            Some(1.0)
        );
        assert!(
            sample(&text, "mpath_config_last_reload_success_timestamp_seconds").unwrap() >= loaded
        );
        promtool_check(&text);
    }

    /// Runs `promtool check metrics` (Debian package `prometheus`) on `text`: it parses the
    /// exposition format as Prometheus does and lints the names against its conventions.
    /// Without promtool a plain `cargo test` passes this check over (saying so); `cargo xtask
    /// test` (`MPATH_TEST_ALL_FEATURES`, as in CI) requires it.
    pub(super) fn promtool_check(text: &str) {
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::env::var_os("MPATH_TEST_ALL_FEATURES").is_none() =>
            {
                // Straight to the descriptor: libtest captures eprint! of passing tests.
                let _: std::io::Result<()> = writeln!(
                    std::io::stderr(),
                    "mpath-test: promtool is not installed: the metrics go unchecked by it"
                );
                return;
            }
            Err(e) => panic!(
                "cannot run promtool ({e}): install Debian's prometheus package \
                 (`cargo xtask setup` does)"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool refused the metrics ({}):\n{report}\n--- metrics ---\n{text}",
            out.status
        );
    }

    #[test]
    fn promtool_accepts_a_populated_render() {
        let text = populated()
            .render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Failed))
            .unwrap();
        promtool_check(&text);
        for family in [
            "# TYPE mpath_probes_sent_total counter",
            "# TYPE mpath_probe_rtt_seconds histogram",
            "# TYPE mpath_interface_probe_rtt_seconds histogram",
            "# TYPE mpath_interface_state gauge",
            "# TYPE mpath_group_failure_detection_time_seconds gauge",
            "# TYPE mpath_datapath_transmit_bytes_total counter",
            "# HELP mpath_interface_failures_total NIC failures detected, by cause.",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
    }

    #[test]
    fn probe_counters_and_rtt_histograms_move_with_probes() {
        let m = populated();
        // A target's first probe: nothing answered or lost yet, and a loss ratio defined.
        m.probe_sent("g0", "h1", target());
        let text = m.render(&Snapshot::default()).unwrap();
        let nic_target = r#"group="g0",interface="h0",target="192.0.2.1""#;
        let get = |name: &str, labels: &str| sample(&text, &format!("{name}{{{labels}}}"));
        let first = r#"group="g0",interface="h1",target="192.0.2.1""#;
        assert_eq!(get("mpath_probes_sent_total", first), Some(1.0));
        assert_eq!(get("mpath_probes_answered_total", first), Some(0.0));
        assert_eq!(get("mpath_probes_lost_total", first), Some(0.0));
        assert_eq!(get("mpath_probes_sent_total", nic_target), Some(3.0));
        assert_eq!(get("mpath_probes_answered_total", nic_target), Some(1.0));
        assert_eq!(get("mpath_probes_lost_total", nic_target), Some(1.0));
        // 300 µs lands in the 500 µs bucket, not in the 250 µs one.
        let bucket = |le: &str| {
            get(
                "mpath_probe_rtt_seconds_bucket",
                &format!("{nic_target},le=\"{le}\""),
            )
        };
        assert_eq!(bucket("0.00025"), Some(0.0));
        assert_eq!(bucket("0.0005"), Some(1.0));
        assert_eq!(bucket("+Inf"), Some(1.0));
        assert_eq!(get("mpath_probe_rtt_seconds_count", nic_target), Some(1.0));
        assert_eq!(get("mpath_probe_rtt_seconds_sum", nic_target), Some(0.0003));
        let nic = r#"group="g0",interface="h0""#;
        assert_eq!(
            get("mpath_interface_probe_rtt_seconds_count", nic),
            Some(1.0)
        );
        assert_eq!(
            get(
                "mpath_probe_replies_unknown_total",
                r#"group="g0",interface="h0",reason="duplicate""#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn loss_bursts_are_observed_per_target_when_an_answer_ends_them() {
        let mut m = Metrics::new(&[group_config("g0", &["h0"])]).unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let answered = |target| ProbeOutcome::Answered {
            target,
            rtt: Duration::from_micros(100),
        };
        // target(): 1 lost, answer, 3 lost (interleaved with the other target's answers),
        // answer, 2 lost and still losing.
        let outcomes = [
            ProbeOutcome::Lost {
                target: target(),
                seq: 0,
            },
            answered(target()),
            ProbeOutcome::Lost {
                target: target(),
                seq: 0,
            },
            answered(other),
            ProbeOutcome::Lost {
                target: target(),
                seq: 0,
            },
            ProbeOutcome::Lost {
                target: target(),
                seq: 0,
            },
            answered(other),
            answered(target()),
            ProbeOutcome::Lost {
                target: target(),
                seq: 0,
            },
            ProbeOutcome::Lost {
                target: target(),
                seq: 0,
            },
        ];
        for outcome in outcomes {
            m.probe_outcome("g0", "h0", outcome);
        }
        let text = m.render(&Snapshot::default()).unwrap();
        let series =
            |labels: &str| sample(&text, &format!(r#"mpath_probe_loss_burst_probes_{labels}"#));
        let t = r#"group="g0",interface="h0",target="192.0.2.1""#;
        assert_eq!(series(&format!("count{{{t}}}")), Some(2.0));
        assert_eq!(series(&format!("sum{{{t}}}")), Some(4.0));
        assert_eq!(series(&format!("bucket{{{t},le=\"1\"}}")), Some(1.0));
        assert_eq!(series(&format!("bucket{{{t},le=\"2\"}}")), Some(1.0));
        assert_eq!(series(&format!("bucket{{{t},le=\"3\"}}")), Some(2.0));
        let o = r#"group="g0",interface="h0",target="192.0.2.2""#;
        assert_eq!(
            series(&format!("count{{{o}}}")),
            None,
            "never lost: no burst"
        );
    }

    #[test]
    fn series_of_gone_groups_nics_and_targets_are_dropped() {
        let mut m = populated();
        m.declare_groups(&[group_config("g1", &["h9"])]);
        let gone: IpAddr = "192.0.2.7".parse().unwrap();
        m.probe_sent("g0", "h0", gone);
        m.probe_outcome(
            "g0",
            "h0",
            ProbeOutcome::Lost {
                target: gone,
                seq: 0,
            },
        );
        let live = LiveSeries {
            groups: ["g0".to_string()].into(),
            nics: [("g0".to_string(), "h0".to_string())].into(),
            targets: [("g0".to_string(), "h0".to_string(), target())].into(),
        };
        m.retain(&live);
        let text = m.render(&Snapshot::default()).unwrap();
        let kept = r#"group="g0",interface="h0",target="192.0.2.1""#;
        assert_eq!(
            sample(&text, &format!("mpath_probes_sent_total{{{kept}}}")),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, &format!("mpath_probe_rtt_seconds_count{{{kept}}}")),
            Some(1.0)
        );
        assert!(!text.contains("192.0.2.7"), "gone target kept:\n{text}");
        assert!(
            !text.contains(r#"interface="h1""#),
            "gone NIC kept:\n{text}"
        );
        assert!(!text.contains(r#"group="g1""#), "gone group kept:\n{text}");
        assert!(
            text.contains(r#"mpath_interface_repairs_total{group="g0",interface="h0"}"#),
            "{text}"
        );
        // The live target's open loss run stays, the gone one's is dropped.
        assert_eq!(
            m.probes.loss_runs.keys().collect::<Vec<_>>(),
            [&("g0".to_string(), "h0".to_string(), target())]
        );
    }

    #[test]
    fn event_totals_start_at_zero_and_count_failures_failovers_and_failbacks() {
        let fresh = Metrics::new(&[group_config("g0", &["h0", "h1"])])
            .unwrap()
            .render(&Snapshot::default())
            .unwrap();
        let text = populated().render(&Snapshot::default()).unwrap();
        let h1 = r#"group="g0",interface="h1""#;
        let link_down = r#"cause="link_down",group="g0",interface="h1""#;
        let probes_lost = r#"cause="probes_lost",group="g0",interface="h1""#;
        for (series, before, after) in [
            (
                format!("mpath_interface_failures_total{{{link_down}}}"),
                0.0,
                1.0,
            ),
            (
                format!("mpath_interface_failures_total{{{probes_lost}}}"),
                0.0,
                0.0,
            ),
            (format!("mpath_interface_repairs_total{{{h1}}}"), 0.0, 1.0),
            (format!("mpath_failovers_total{{{h1}}}"), 0.0, 1.0),
            (format!("mpath_failbacks_total{{{h1}}}"), 0.0, 1.0),
            (
                r#"mpath_failovers_total{group="g0",interface="h0"}"#.into(),
                0.0,
                0.0,
            ),
            (format!("mpath_address_restores_total{{{h1}}}"), 0.0, 0.0),
            (r#"mpath_group_failures_total{group="g0"}"#.into(), 0.0, 0.0),
        ] {
            assert_eq!(sample(&fresh, &series), Some(before), "{series} before");
            assert_eq!(sample(&text, &series), Some(after), "{series} after");
        }

        let m = populated();
        m.group_failure("g0");
        m.transfer("g0", &transfer(MoveKind::Restore, None, "h0"), "h0");
        let text = m.render(&Snapshot::default()).unwrap();
        assert_eq!(
            sample(&text, r#"mpath_group_failures_total{group="g0"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"mpath_address_restores_total{group="g0",interface="h0"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn state_gauges_follow_the_snapshot_at_each_render() {
        let m = populated();
        let state = |text: &str, nic: &str, s: &str| {
            sample(
                text,
                &format!(r#"mpath_interface_state{{group="g0",interface="{nic}",state="{s}"}}"#),
            )
        };
        let before = m
            .render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Ok))
            .unwrap();
        assert_eq!(state(&before, "h1", "ok"), Some(1.0));
        assert_eq!(state(&before, "h1", "failed"), Some(0.0));
        assert_eq!(state(&before, "h1", "missing"), Some(0.0));
        assert_eq!(
            sample(&before, r#"mpath_group_state{group="g0",state="ok"}"#),
            Some(1.0)
        );

        let after = m
            .render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Failed))
            .unwrap();
        assert_eq!(state(&after, "h1", "ok"), Some(0.0));
        assert_eq!(state(&after, "h1", "failed"), Some(1.0));
        for (series, value) in [
            (r#"mpath_group_state{group="g0",state="ok"}"#, 0.0),
            (r#"mpath_group_state{group="g0",state="degraded"}"#, 1.0),
            (
                r#"mpath_interface_link_state{group="g0",interface="h1",state="down"}"#,
                1.0,
            ),
            (
                r#"mpath_interface_probe_state{group="g0",interface="h1",state="unknown"}"#,
                1.0,
            ),
            (r#"mpath_interface_active{group="g0",interface="h1"}"#, 0.0),
            (r#"mpath_interface_active{group="g0",interface="h0"}"#, 1.0),
            (
                r#"mpath_group_failure_detection_time_seconds{group="g0"}"#,
                2.0,
            ),
            (
                r#"mpath_group_configured_failure_detection_time_seconds{group="g0"}"#,
                1.0,
            ),
            (
                r#"mpath_group_probe_interval_seconds{group="g0"}"#,
                0.285714,
            ),
        ] {
            assert_eq!(sample(&after, series), Some(value), "{series}");
        }

        let with_other_nic = Snapshot {
            ungrouped: vec![UngroupedSnapshot {
                interface: "eth9".into(),
                link_up: false,
            }],
            strays: vec![("mgmt0".into(), true), ("eth8".into(), false)],
            ..snapshot(InterfaceStatus::Ok, InterfaceStatus::Ok)
        };
        let text = m.render(&with_other_nic).unwrap();
        let eth9 = |s: &str| {
            sample(
                &text,
                &format!(r#"mpath_interface_link_state{{group="",interface="eth9",state="{s}"}}"#),
            )
        };
        assert_eq!(eth9("down"), Some(1.0), "{text}");
        assert_eq!(eth9("up"), Some(0.0));
        assert!(!text.contains(r#"interface="eth9",state="ok""#), "{text}");
        for (nic, isolated) in [("mgmt0", 1.0), ("eth8", 0.0)] {
            let series = format!(r#"mpath_stray_interface_arp_isolated{{interface="{nic}"}}"#);
            assert_eq!(sample(&text, &series), Some(isolated), "{text}");
        }
        promtool_check(&text);

        // A group that is gone (a reload removed it) leaves no state behind.
        let empty = m.render(&Snapshot::default()).unwrap();
        assert!(!empty.contains("mpath_interface_state{"), "{empty}");
        assert!(!empty.contains("mpath_group_state{"), "{empty}");
    }

    #[test]
    fn datapath_counters_are_read_from_the_snapshot() {
        let m = populated();
        let text = m
            .render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Ok))
            .unwrap();
        let h0 = r#"group="g0",interface="h0""#;
        for (name, value) in [
            ("mpath_datapath_transmit_packets_total", 1200.0),
            ("mpath_datapath_transmit_bytes_total", 96_000.0),
            ("mpath_datapath_redirected_packets_total", 300.0),
            ("mpath_datapath_redirected_bytes_total", 24_000.0),
            ("mpath_datapath_receive_packets_total", 900.0),
            ("mpath_datapath_receive_bytes_total", 72_000.0),
            ("mpath_datapath_probe_replies_total", 40.0),
            ("mpath_datapath_probe_replies_dropped_total", 2.0),
            ("mpath_datapath_probe_checksum_failures_total", 3.0),
            ("mpath_datapath_link_probes_answered_total", 5.0),
        ] {
            assert_eq!(
                sample(&text, &format!("{name}{{{h0}}}")),
                Some(value),
                "{name}"
            );
        }
        let rejected = |reason: &str| {
            sample(
                &text,
                &format!(
                    r#"mpath_datapath_probe_replies_rejected_total{{{h0},reason="{reason}"}}"#
                ),
            )
        };
        assert_eq!(rejected("bad_tag"), Some(7.0));
        assert_eq!(rejected("truncated"), Some(0.0));
        assert!(
            !text.contains(r#"mpath_datapath_transmit_packets_total{group="g0",interface="h1"}"#),
            "h1 had no counters in the snapshot"
        );

        // Values are the snapshot's, not added up over renders.
        let again = m
            .render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Ok))
            .unwrap();
        assert_eq!(
            sample(
                &again,
                &format!("mpath_datapath_transmit_packets_total{{{h0}}}")
            ),
            Some(1200.0)
        );
    }

    #[test]
    fn route_and_source_hook_sizes_and_the_process_are_shown() {
        let m = populated();
        let text = m
            .render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Ok))
            .unwrap();
        for (series, value) in [
            ("mpath_main_routes", 100_004.0),
            ("mpath_table_routes", 100_001.0),
            (r#"mpath_source_hook_prefixes{family="ipv4"}"#, 16_384.0),
            (
                r#"mpath_source_hook_prefixes_wanted{family="ipv4"}"#,
                100_001.0,
            ),
            (r#"mpath_source_hook_prefix_limit{family="ipv4"}"#, 16_384.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series}");
        }
        assert!(
            !text.contains(r#"mpath_source_hook_prefixes{family="ipv6"}"#),
            "no IPv6 map in the snapshot"
        );
        let memory = sample(&text, "process_resident_memory_bytes").expect("process metrics");
        assert!(memory > 1e6, "{memory}");
        let fds = sample(&text, "process_open_fds").expect("process metrics");
        assert!(fds >= 3.0, "{fds}");
    }

    #[test]
    fn label_values_are_escaped() {
        let group = "g\"0\\x\ny";
        let m = Metrics::new(&[group_config(group, &["h0"])]).unwrap();
        m.failure(group, "h0", FailureCause::ProbesLost);
        let text = m.render(&Snapshot::default()).unwrap();
        assert_eq!(
            sample(
                &text,
                r#"mpath_interface_failures_total{cause="probes_lost",group="g\"0\\x\ny",interface="h0"}"#
            ),
            Some(1.0),
            "{text}"
        );
        promtool_check(&text);
    }
}
