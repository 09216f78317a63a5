//! Probing one NIC in one address family: when to send, which replies to believe, when a
//! probe counts as lost, and what failure detection time the targets' RTT allows.
//!
//! The algorithms are illumos in.mpathd's (mpd_probe.c). RTTs come from kernel timestamps
//! taken by the datapath, so the daemon's own scheduling delay stays out of the estimates.
//! Nothing here does IO or reads a clock: time and randomness are passed in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mpath_common::ProbeReply;
use rand::Rng;
use serde::Serialize;

use crate::config::MIN_FAILURE_DETECTION_TIME_MS;
use crate::core::target::{
    AddressFamily, MAX_PROBE_TARGETS, MIN_PROBE_TARGETS, RouteEntry, SetAsideReason, TargetEvent,
    TargetSet, TargetSource, TargetState,
};

/// Consecutive lost probes that fail a NIC (in.mpathd `NUM_PROBE_FAILS`).
pub const NUM_PROBE_FAILS: u32 = 5;
/// Consecutive answered probes that repair a failed NIC (in.mpathd `NUM_PROBE_REPAIRS`).
pub const NUM_PROBE_REPAIRS: u32 = 10;

/// The failure detection time spans this many probe intervals: the failing probes plus
/// room for the random send offset and the last probe's loss bound.
const INTERVALS_PER_FDT: u32 = NUM_PROBE_FAILS + 2;
/// Replies are matched against this many most recent probes: enough history to judge
/// repair across every target, and no more, so stale or replayed replies are refused.
const REPLY_WINDOW: usize = NUM_PROBE_REPAIRS as usize * MAX_PROBE_TARGETS + 2;
/// After raising the FDT, keep it at least this long so it does not flap.
const FDT_SETTLING_TIME: Duration = Duration::from_secs(60);
/// The FDT moves by this factor each time it is raised or lowered.
const FDT_STEP: u32 = 2;
/// The FDT is lowered only once every RTT bound is below the interval by this factor.
const LOWER_FDT_TRIGGER: u32 = 4;
/// A target is an exception, not a reason to raise the FDT, when every other target's
/// RTT bound is below the interval by this factor.
const EXCEPTION_FACTOR: u32 = 2;
/// Loss is judged on the daemon's clock from the moment it asked for the probe, while RTTs
/// are kernel-measured and can be microseconds; this floor absorbs the daemon's own send
/// and wake-up latency so a busy daemon does not turn into lost probes.
const LOSS_BOUND_FLOOR: Duration = Duration::from_millis(10);

/// The configuration refuses a shorter FDT too; this guards probers built without it.
const MIN_FAILURE_DETECTION_TIME: Duration =
    Duration::from_millis(MIN_FAILURE_DETECTION_TIME_MS.unsigned_abs());

/// A failure detection time the daemon cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FdtError {
    #[error(
        "failure detection time {requested_ms} ms is below the minimum of {MIN_FAILURE_DETECTION_TIME_MS} ms"
    )]
    BelowMinimum { requested_ms: u128 },
}

/// A change of a group's effective failure detection time, with the line to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FdtChange {
    pub previous: Duration,
    pub effective: Duration,
    pub message: String,
}

/// The failure detection time of one group, shared by all its probers: what the
/// administrator asked for, and what the targets' RTT currently allows.
#[derive(Debug, Clone)]
pub(crate) struct FailureDetectionTime {
    group: String,
    configured: Duration,
    effective: Duration,
    last_raise: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FdtView {
    pub group: String,
    pub configured_ms: u64,
    pub effective_ms: u64,
    pub probe_interval_us: u64,
}

impl FailureDetectionTime {
    pub(crate) fn new(group: impl Into<String>, configured: Duration) -> Result<Self, FdtError> {
        if configured < MIN_FAILURE_DETECTION_TIME {
            return Err(FdtError::BelowMinimum {
                requested_ms: configured.as_millis(),
            });
        }
        Ok(Self {
            group: group.into(),
            configured,
            effective: configured,
            last_raise: None,
        })
    }

    #[cfg(test)]
    pub(crate) fn configured(&self) -> Duration {
        self.configured
    }

    pub(crate) fn effective(&self) -> Duration {
        self.effective
    }

    /// Time between probes of one prober: FDT / (NUM_PROBE_FAILS + 2).
    pub(crate) fn probe_interval(&self) -> Duration {
        self.effective / INTERVALS_PER_FDT
    }

    pub(crate) fn view(&self) -> FdtView {
        FdtView {
            group: self.group.clone(),
            configured_ms: saturating_u64(self.configured.as_millis()),
            effective_ms: saturating_u64(self.effective.as_millis()),
            probe_interval_us: saturating_u64(self.probe_interval().as_micros()),
        }
    }

    /// Lowers the effective FDT one step towards the configured one once every active
    /// target of every working prober in the group has an RTT bound well below the probe
    /// interval, and not sooner than [`FDT_SETTLING_TIME`] after the last raise. The daemon
    /// calls this after accepted replies.
    pub(crate) fn try_lower<'a>(
        &mut self,
        now: Instant,
        probers: impl IntoIterator<Item = &'a Prober>,
    ) -> Option<FdtChange> {
        if self.effective <= self.configured {
            return None;
        }
        if let Some(raised) = self.last_raise
            && now < raised + FDT_SETTLING_TIME
        {
            return None;
        }
        let limit = self.probe_interval() / LOWER_FDT_TRIGGER;
        let mut measured = false;
        for prober in probers.into_iter().filter(|prober| !prober.nic_failed) {
            for crtt in prober.active_rtt_bounds().flatten() {
                if crtt > limit {
                    return None;
                }
                measured = true;
            }
        }
        if !measured {
            return None;
        }
        let previous = self.effective;
        self.effective = ceil_to_millis(previous / FDT_STEP).max(self.configured);
        Some(FdtChange {
            previous,
            effective: self.effective,
            message: format!(
                "Improved failure detection time {} ms for group {}",
                self.effective.as_millis(),
                self.group
            ),
        })
    }

    /// Makes the probe interval twice the RTT bound that did not fit in it.
    fn raise(
        &mut self,
        crtt: Duration,
        now: Instant,
        nic: &str,
        family: AddressFamily,
    ) -> FdtChange {
        let previous = self.effective;
        self.effective = ceil_to_millis(crtt * FDT_STEP * INTERVALS_PER_FDT);
        self.last_raise = Some(now);
        FdtChange {
            previous,
            effective: self.effective,
            message: format!(
                "Cannot meet requested failure detection time of {} ms on ({family} {nic}) new failure detection time for group {} is {} ms",
                self.configured.as_millis(),
                self.group,
                self.effective.as_millis()
            ),
        }
    }
}

/// A probe the daemon must send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeRequest {
    pub seq: u32,
    pub target: IpAddr,
}

/// What to send at a probe time: the probe itself (none while no target is known), and
/// whether to echo to [`AddressFamily::all_nodes`] to discover hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub probe: Option<ProbeRequest>,
    pub discover: bool,
}

/// The verdict on one probe. The daemon hands it to the interface state machine as it is
/// ([`crate::core::state::Event::Probe`]), which counts answers and losses; target and RTT are
/// for the logs and views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// `rtt` is the kernel-measured round trip, or the daemon's own measure when the
    /// datapath's timestamps are unusable.
    Answered {
        target: IpAddr,
        rtt: Duration,
    },
    Lost {
        target: IpAddr,
        seq: u32,
    },
}

/// Everything a prober reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeEvent {
    Outcome(ProbeOutcome),
    Target(TargetEvent),
    FdtRaised(FdtChange),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplyVerdict {
    Accepted(Vec<ProbeEvent>),
    Rejected(RejectReason),
}

/// Why a reply was not believed; all are counted as "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Its sequence number is not one of the outstanding window's: never sent, or too old.
    OutOfWindow,
    /// The probe with this sequence number went to another target.
    WrongSource { expected: IpAddr },
    /// The probe was already answered.
    Duplicate,
}

impl RejectReason {
    /// Every name [`RejectReason::as_str`] gives.
    pub const LABELS: [&'static str; 3] = ["out_of_window", "wrong_source", "duplicate"];

    /// Its name in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfWindow => "out_of_window",
            RejectReason::WrongSource { .. } => "wrong_source",
            RejectReason::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct UnknownReplies {
    pub out_of_window: u64,
    pub wrong_source: u64,
    pub duplicate: u64,
}

impl UnknownReplies {
    pub(crate) fn total(&self) -> u64 {
        self.out_of_window + self.wrong_source + self.duplicate
    }

    fn count(&mut self, reason: RejectReason) {
        match reason {
            RejectReason::OutOfWindow => self.out_of_window += 1,
            RejectReason::WrongSource { .. } => self.wrong_source += 1,
            RejectReason::Duplicate => self.duplicate += 1,
        }
    }
}

/// Probe counts. A probe answered after it was declared lost moves from `lost` to
/// `answered`, so `sent` = `answered` + `lost` + outstanding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ProbeCounters {
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
}

/// One target as `mpathctl probes` shows it (ipmpstat -p's NETRTT, RTT, RTTAVG, RTTDEV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TargetProbeView {
    pub address: IpAddr,
    pub source: TargetSource,
    pub state: TargetState,
    /// Last round trip measured by the kernel timestamps.
    pub net_rtt_us: Option<u64>,
    /// Last round trip as the daemon saw it, scheduling delay included.
    pub rtt_us: Option<u64>,
    pub rtt_avg_us: Option<u64>,
    pub rtt_dev_us: Option<u64>,
    /// Age at which a probe to this target counts as lost.
    pub rtt_bound_us: Option<u64>,
    #[serde(flatten)]
    pub probes: ProbeCounters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ProberView {
    pub nic: String,
    pub family: AddressFamily,
    pub test_address: IpAddr,
    #[serde(flatten)]
    pub probes: ProbeCounters,
    pub unknown: u64,
    pub unknown_by_reason: UnknownReplies,
    pub targets: Vec<TargetProbeView>,
}

/// The prober of one NIC in one address family.
#[derive(Debug)]
pub(crate) struct Prober {
    nic: String,
    targets: TargetSet,
    schedule: Schedule,
    next_seq: u32,
    /// The last [`REPLY_WINDOW`] probes sent, oldest first; the newest has `next_seq - 1`.
    sent: VecDeque<SentProbe>,
    stats: HashMap<IpAddr, TargetStats>,
    totals: ProbeCounters,
    unknown: UnknownReplies,
    nic_failed: bool,
    /// When the NIC last started working again; older probes do not train the RTT.
    trusted_since: Option<Instant>,
    /// When the NIC's link last came up. A reply to an older probe, which waited in an
    /// ARP/ND queue while the link was down, says nothing of the link since: it is no answer
    /// towards a repair.
    link_up_at: Option<Instant>,
    /// Since when the prober has had no target with its link up, and whether that was
    /// reported (see [`Prober::target_notice`]).
    targetless_since: Option<Instant>,
    reported_targetless: bool,
}

/// How long a prober may go without a target, its link up, before the daemon says so: long
/// enough for discovery to have had its answers.
pub(crate) const TARGETLESS_NOTICE: Duration = Duration::from_secs(10);

/// A change in whether a prober can probe at all, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetNotice {
    /// No target for this long: the NIC's failures in this family go unnoticed.
    Missing(Duration),
    /// A target again, after [`TargetNotice::Missing`].
    Back,
}

impl Prober {
    /// Starts probing at a random point within the first interval, so NICs that start
    /// together do not probe in lockstep.
    pub(crate) fn new(
        nic: impl Into<String>,
        targets: TargetSet,
        now: Instant,
        rng: &mut impl Rng,
        fdt: &FailureDetectionTime,
    ) -> Self {
        Self {
            nic: nic.into(),
            targets,
            schedule: Schedule::start(now, fdt.probe_interval(), rng),
            next_seq: rng.random(),
            sent: VecDeque::with_capacity(REPLY_WINDOW),
            stats: HashMap::new(),
            totals: ProbeCounters::default(),
            unknown: UnknownReplies::default(),
            nic_failed: false,
            trusted_since: None,
            link_up_at: None,
            targetless_since: None,
            reported_targetless: false,
        }
    }

    /// Watches whether the prober has targets while its link is up: `Missing` once it has
    /// had none for [`TARGETLESS_NOTICE`], `Back` when one comes after that.
    pub(crate) fn target_notice(&mut self, now: Instant, link_up: bool) -> Option<TargetNotice> {
        if !self.targets.is_empty() {
            self.targetless_since = None;
            return std::mem::take(&mut self.reported_targetless).then_some(TargetNotice::Back);
        }
        if !link_up {
            self.targetless_since = None;
            return None;
        }
        let since = *self.targetless_since.get_or_insert(now);
        let without = now.saturating_duration_since(since);
        if self.reported_targetless || without < TARGETLESS_NOTICE {
            return None;
        }
        self.reported_targetless = true;
        Some(TargetNotice::Missing(without))
    }

    /// The daemon reports here that the NIC's link came up.
    pub(crate) fn link_came_up(&mut self, now: Instant) {
        self.link_up_at = Some(now);
    }

    pub(crate) fn family(&self) -> AddressFamily {
        self.targets.family()
    }

    pub(crate) fn targets(&self) -> &TargetSet {
        &self.targets
    }

    pub(crate) fn update_routes(
        &mut self,
        routes: &[RouteEntry],
        group_nics: &[u32],
        local: &[IpAddr],
    ) {
        self.targets.update_routes(routes, group_nics, local);
        self.forget_removed_targets();
    }

    /// Hosts that answered a discovery echo this prober sent, first responders first.
    pub(crate) fn add_discovered(
        &mut self,
        responders: &[IpAddr],
        local: &[IpAddr],
        now: Instant,
    ) -> usize {
        self.targets.add_discovered(responders, local, now)
    }

    /// See [`TargetSet::all_silent`].
    pub(crate) fn all_targets_silent(&mut self) {
        self.targets.all_silent();
        self.forget_removed_targets();
    }

    /// The daemon reports here whether the NIC is working (neither failed nor offline). While
    /// it is not, replies still count but their RTTs are not trusted, and the estimates start
    /// afresh. Probes sent before it works again are not trusted either: they may have waited
    /// seconds in ARP/ND queues while the link was down, and their replies arrive after it.
    pub(crate) fn set_nic_failed(&mut self, failed: bool, now: Instant) {
        if failed == self.nic_failed {
            return;
        }
        self.nic_failed = failed;
        if failed {
            for stats in self.stats.values_mut() {
                stats.rtt = RttEstimator::default();
            }
        } else {
            self.trusted_since = Some(now);
        }
    }

    pub(crate) fn next_probe_at(&self) -> Instant {
        self.schedule.next_at
    }

    /// When [`Prober::poll`] or [`Prober::send`] next has something to do. The daemon drains
    /// pending replies first, then polls, then sends; a probe pushed out of the reply window
    /// before any poll saw it expire (52 intervals without a poll) never gets an outcome.
    pub(crate) fn next_wakeup(&self, fdt: &FailureDetectionTime) -> Instant {
        let interval = fdt.probe_interval();
        let deadlines = self
            .sent
            .iter()
            .filter(|probe| probe.state == ProbeState::Outstanding)
            .map(|probe| probe.sent_at + self.loss_bound(probe.target, interval));
        deadlines.fold(self.schedule.next_at, Instant::min)
    }

    /// Sends the probe that is due: schedules the next one at a random point in
    /// [0.5, 1.0] of the following interval and picks the next target in round-robin order.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        rng: &mut impl Rng,
        fdt: &FailureDetectionTime,
    ) -> Transmit {
        self.schedule.advance(now, fdt.probe_interval(), rng);
        let probe = self.targets.next_target(now).map(|target| {
            let seq = self.next_seq;
            self.next_seq = seq.wrapping_add(1);
            if self.sent.len() == REPLY_WINDOW {
                self.sent.pop_front();
            }
            self.sent.push_back(SentProbe {
                target,
                sent_at: now,
                state: ProbeState::Outstanding,
            });
            self.stats.entry(target).or_default().counters.sent += 1;
            self.totals.sent += 1;
            ProbeRequest { seq, target }
        });
        let discover = self.targets.take_discovery_request(now);
        Transmit { probe, discover }
    }

    /// Believes a reply only for an outstanding sequence number, from the target that probe
    /// went to, once. An accepted reply feeds the RTT estimate, may set a slow target aside
    /// or raise the group's FDT; one to a probe sent before the link last came up is taken
    /// without an outcome.
    pub(crate) fn on_reply(
        &mut self,
        reply: ProbeReply,
        now: Instant,
        fdt: &mut FailureDetectionTime,
    ) -> ReplyVerdict {
        let probe = match self.match_reply(&reply) {
            Ok(probe) => probe,
            Err(reason) => {
                self.unknown.count(reason);
                return ReplyVerdict::Rejected(reason);
            }
        };
        let was_lost = probe.state == ProbeState::Lost;
        let target = probe.target;
        let daemon_rtt = now.saturating_duration_since(probe.sent_at);
        let net_rtt = reply
            .received_ns
            .checked_sub(reply.left_ns())
            .map(Duration::from_nanos);
        for counters in [
            Some(&mut self.totals),
            self.stats.get_mut(&target).map(|s| &mut s.counters),
        ]
        .into_iter()
        .flatten()
        {
            counters.answered += 1;
            if was_lost {
                counters.lost = counters.lost.saturating_sub(1);
            }
        }
        if let Some(stats) = self.stats.get_mut(&target) {
            stats.last_net_rtt = net_rtt;
            stats.last_rtt = Some(daemon_rtt);
        }
        self.targets.record_answer(target);
        // An answer from a router ends its stand-ins.
        self.forget_removed_targets();
        if self.link_up_at.is_some_and(|up| probe.sent_at < up) {
            return ReplyVerdict::Accepted(Vec::new());
        }

        let mut events = vec![ProbeEvent::Outcome(ProbeOutcome::Answered {
            target,
            rtt: net_rtt.unwrap_or(daemon_rtt),
        })];
        let trusted = self
            .trusted_since
            .is_none_or(|since| probe.sent_at >= since);
        if let Some(rtt) = net_rtt.filter(|_| trusted) {
            self.sample_rtt(target, reply.seq, rtt, now, fdt, &mut events);
        }
        ReplyVerdict::Accepted(events)
    }

    /// Declares lost every outstanding probe older than its target's RTT bound (the probe
    /// interval while the target has no RTT estimate). Losses are reported as they happen,
    /// also during the startup quiet period: holding back failure is the state machine's
    /// rule ([`crate::core::state::Policy::startup_quiet`]), which needs the real loss times.
    pub(crate) fn poll(&mut self, now: Instant, fdt: &FailureDetectionTime) -> Vec<ProbeEvent> {
        let mut events = Vec::new();
        let interval = fdt.probe_interval();
        for index in 0..self.sent.len() {
            let probe = self.sent[index];
            if probe.state != ProbeState::Outstanding {
                continue;
            }
            let deadline = probe.sent_at + self.loss_bound(probe.target, interval);
            if now < deadline {
                continue;
            }
            self.sent[index].state = ProbeState::Lost;
            self.totals.lost += 1;
            if let Some(stats) = self.stats.get_mut(&probe.target) {
                stats.counters.lost += 1;
            }
            // The window ends with the newest probe, `next_seq - 1`.
            let seq = self
                .next_seq
                .wrapping_sub(u32::try_from(self.sent.len() - index).unwrap_or(u32::MAX));
            events.push(ProbeEvent::Outcome(ProbeOutcome::Lost {
                target: probe.target,
                seq,
            }));
            if let Some(event) = self.targets.record_loss(probe.target, deadline) {
                events.push(ProbeEvent::Target(event));
            }
        }
        events
    }

    /// The recent probes lost per target, for the line that reports a probe failure:
    /// "IPv4 192.0.2.1 lost 5 of 5, 192.0.2.2 lost 3 of 4" over the probes of the reply
    /// window that have an outcome (in the order the targets were last probed).
    pub(crate) fn loss_report(&self) -> String {
        let mut per_target: Vec<(IpAddr, u32, u32)> = Vec::new();
        for probe in &self.sent {
            let lost = match probe.state {
                ProbeState::Lost => 1,
                ProbeState::Answered => 0,
                ProbeState::Outstanding | ProbeState::Withdrawn => continue,
            };
            match per_target.iter_mut().find(|(t, ..)| *t == probe.target) {
                Some((_, l, decided)) => {
                    *l += lost;
                    *decided += 1;
                }
                None => per_target.push((probe.target, lost, 1)),
            }
        }
        let version = self.family().ip_version();
        if per_target.is_empty() {
            return format!("{version} no probe decided");
        }
        let targets: Vec<String> = per_target
            .iter()
            .map(|(target, lost, decided)| format!("{target} lost {lost} of {decided}"))
            .collect();
        format!("{version} {}", targets.join(", "))
    }

    pub(crate) fn view(&self) -> ProberView {
        let micros = |d: Duration| saturating_u64(d.as_micros());
        let targets = self
            .targets
            .view()
            .into_iter()
            .map(|target| {
                let stats = self.stats.get(&target.address).copied().unwrap_or_default();
                TargetProbeView {
                    address: target.address,
                    source: target.source,
                    state: target.state,
                    net_rtt_us: stats.last_net_rtt.map(micros),
                    rtt_us: stats.last_rtt.map(micros),
                    rtt_avg_us: stats.rtt.average().map(micros),
                    rtt_dev_us: stats.rtt.deviation().map(micros),
                    rtt_bound_us: stats.rtt.crtt().map(micros),
                    probes: stats.counters,
                }
            })
            .collect();
        ProberView {
            nic: self.nic.clone(),
            family: self.family(),
            test_address: self.targets.test_address().addr(),
            probes: self.totals,
            unknown: self.unknown.total(),
            unknown_by_reason: self.unknown,
            targets,
        }
    }

    fn match_reply(&mut self, reply: &ProbeReply) -> Result<SentProbe, RejectReason> {
        let age = usize::try_from(self.next_seq.wrapping_sub(reply.seq)).unwrap_or(usize::MAX);
        if age == 0 || age > self.sent.len() {
            return Err(RejectReason::OutOfWindow);
        }
        let index = self.sent.len() - age;
        let probe = self.sent[index];
        if probe.target != reply.target() {
            return Err(RejectReason::WrongSource {
                expected: probe.target,
            });
        }
        match probe.state {
            ProbeState::Answered => return Err(RejectReason::Duplicate),
            // No longer awaited: the target left the list.
            ProbeState::Withdrawn => return Err(RejectReason::OutOfWindow),
            ProbeState::Outstanding | ProbeState::Lost => {}
        }
        self.sent[index].state = ProbeState::Answered;
        Ok(probe)
    }

    /// Feeds an RTT sample; when the target's RTT bound no longer fits in the probe
    /// interval, sets the target aside if it alone is slow, else raises the group's FDT.
    fn sample_rtt(
        &mut self,
        target: IpAddr,
        seq: u32,
        rtt: Duration,
        now: Instant,
        fdt: &mut FailureDetectionTime,
        events: &mut Vec<ProbeEvent>,
    ) {
        let interval = fdt.probe_interval();
        let Some(stats) = self.stats.get_mut(&target) else {
            return;
        };
        // Only the newest answered probe speaks for the target's current RTT; a reply
        // timed this badly was mis-stamped.
        if !stats.acknowledge(seq)
            || self.nic_failed
            || rtt > interval * REPLY_WINDOW as u32
            || stats.rtt.sample(rtt, interval) == Sample::Deferred
        {
            return;
        }
        let Some(crtt) = stats.rtt.crtt().filter(|&crtt| crtt > interval) else {
            return;
        };
        if self.is_exception(target, interval) {
            if let Some(stats) = self.stats.get_mut(&target) {
                stats.rtt = RttEstimator::default();
            }
            events.extend(
                self.targets
                    .set_aside(target, SetAsideReason::Slow, now)
                    .map(ProbeEvent::Target),
            );
            self.forget_removed_targets();
        } else {
            events.push(ProbeEvent::FdtRaised(fdt.raise(
                crtt,
                now,
                &self.nic,
                self.family(),
            )));
        }
    }

    /// A slow target is an exception when enough others are active and all of them are fast.
    fn is_exception(&self, slow: IpAddr, interval: Duration) -> bool {
        let others: Vec<IpAddr> = self.targets.active().filter(|&a| a != slow).collect();
        others.len() >= MIN_PROBE_TARGETS
            && others.iter().all(|other| {
                self.rtt_bound(*other)
                    .is_none_or(|crtt| crtt <= interval / EXCEPTION_FACTOR)
            })
    }

    fn loss_bound(&self, target: IpAddr, interval: Duration) -> Duration {
        self.rtt_bound(target)
            .map_or(interval, |crtt| crtt.max(LOSS_BOUND_FLOOR))
    }

    fn rtt_bound(&self, target: IpAddr) -> Option<Duration> {
        self.stats.get(&target).and_then(|stats| stats.rtt.crtt())
    }

    fn active_rtt_bounds(&self) -> impl Iterator<Item = Option<Duration>> + '_ {
        self.targets.active().map(|target| self.rtt_bound(target))
    }

    /// Forgets the targets no longer in the list: their statistics, and their outstanding
    /// probes, whose loss would otherwise speak for a family that may probe nothing now.
    fn forget_removed_targets(&mut self) {
        let targets = &self.targets;
        self.stats.retain(|address, _| targets.contains(*address));
        for probe in &mut self.sent {
            if probe.state == ProbeState::Outstanding && !targets.contains(probe.target) {
                probe.state = ProbeState::Withdrawn;
            }
        }
    }
}

/// Probe times: each probe falls at a random point in [0.5, 1.0] of its own interval, the
/// intervals following each other strictly, so probes neither drift nor bunch up.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Start of the interval the probe after `next_at` falls in.
    slot_start: Instant,
    next_at: Instant,
}

impl Schedule {
    fn start(now: Instant, interval: Duration, rng: &mut impl Rng) -> Self {
        let first = now + random_between(rng, Duration::ZERO, interval);
        Self {
            slot_start: first,
            next_at: first,
        }
    }

    /// Called as a probe goes out at `now`; skips whole intervals the daemon slept through.
    fn advance(&mut self, now: Instant, interval: Duration, rng: &mut impl Rng) {
        let mut next = self.slot_start + random_between(rng, interval / 2, interval);
        if now > next && !interval.is_zero() {
            let behind = (now - next).as_nanos() / interval.as_nanos() + 1;
            let skip = interval * u32::try_from(behind).unwrap_or(u32::MAX);
            next += skip;
            self.slot_start += skip;
        }
        self.slot_start += interval;
        self.next_at = next;
    }
}

fn random_between(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    let low = saturating_u64(low.as_nanos());
    let high = saturating_u64(high.as_nanos());
    Duration::from_nanos(rng.random_range(low..=high))
}

/// In-window, unanswered probes are outstanding until a reply or their loss bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeState {
    Outstanding,
    Answered,
    /// Still in the window: a late reply turns it into an answer.
    Lost,
    /// Its target left the list before it was answered or lost: it counts neither way.
    Withdrawn,
}

#[derive(Debug, Clone, Copy)]
struct SentProbe {
    target: IpAddr,
    sent_at: Instant,
    state: ProbeState,
}

#[derive(Debug, Clone, Copy, Default)]
struct TargetStats {
    rtt: RttEstimator,
    newest_acked: Option<u32>,
    last_net_rtt: Option<Duration>,
    last_rtt: Option<Duration>,
    counters: ProbeCounters,
}

impl TargetStats {
    /// Records an answer to `seq`; true when it is the newest answered probe so far.
    fn acknowledge(&mut self, seq: u32) -> bool {
        let newest = self
            .newest_acked
            .is_none_or(|newest| seq.wrapping_sub(newest).cast_signed() > 0);
        if newest {
            self.newest_acked = Some(seq);
        }
        newest
    }
}

/// Jacobson/Karels RTT estimation as in mpd_probe.c's compute_crtt, in nanoseconds: a
/// smoothed average (gain 1/8), a mean deviation (gain 1/4), and the bound (crtt) =
/// average + 4 × deviation. A sample that alone would push the bound past the probe
/// interval is held back; a second one in a row means the path really slowed down, and
/// both are taken in.
#[derive(Debug, Clone, Copy, Default)]
struct RttEstimator {
    scaled: Option<ScaledRtt>,
    deferred: Option<i64>,
}

/// 8 × average and 4 × deviation, so the gains are shifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaledRtt {
    average: i64,
    deviation: i64,
}

impl ScaledRtt {
    fn fold(previous: Option<ScaledRtt>, m: i64) -> ScaledRtt {
        match previous {
            None => ScaledRtt {
                average: m << 3,
                deviation: m << 1,
            },
            Some(ScaledRtt { average, deviation }) => {
                let error = m - (average >> 3);
                ScaledRtt {
                    average: (average + error).max(0),
                    deviation: deviation + (error.abs() - (deviation >> 2)),
                }
            }
        }
    }

    fn crtt(self) -> i64 {
        (self.average >> 3) + self.deviation
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sample {
    Committed,
    Deferred,
    Integrated,
}

impl RttEstimator {
    fn sample(&mut self, rtt: Duration, probe_interval: Duration) -> Sample {
        let m = saturating_i64(rtt.as_nanos());
        let candidate = ScaledRtt::fold(self.scaled, m);
        if candidate.crtt() <= saturating_i64(probe_interval.as_nanos()) {
            self.scaled = Some(candidate);
            self.deferred = None;
            return Sample::Committed;
        }
        match self.deferred.take() {
            None => {
                self.deferred = Some(m);
                Sample::Deferred
            }
            Some(earlier) => {
                let with_earlier = ScaledRtt::fold(self.scaled, earlier);
                self.scaled = Some(ScaledRtt::fold(Some(with_earlier), m));
                Sample::Integrated
            }
        }
    }

    fn crtt(&self) -> Option<Duration> {
        self.scaled.map(|s| nanos(s.crtt()))
    }

    fn average(&self) -> Option<Duration> {
        self.scaled.map(|s| nanos(s.average >> 3))
    }

    fn deviation(&self) -> Option<Duration> {
        self.scaled.map(|s| nanos(s.deviation >> 2))
    }
}

fn nanos(value: i64) -> Duration {
    Duration::from_nanos(u64::try_from(value).unwrap_or(0))
}

fn saturating_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn saturating_i64(value: u128) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn ceil_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(saturating_u64(duration.as_nanos().div_ceil(1_000_000)))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::core::target::{SetAsideReason, TargetAction};
    use crate::net::address::IpCidr;

    const A: &str = "192.0.2.1";
    const B: &str = "192.0.2.2";
    const C: &str = "192.0.2.3";
    const D: &str = "192.0.2.4";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn fdt(millis: u64) -> FailureDetectionTime {
        FailureDetectionTime::new("g0", ms(millis)).unwrap()
    }

    fn target_set(addresses: &[&str]) -> TargetSet {
        let test_address = IpCidr::new(ip("192.0.2.21"), 24).unwrap();
        let mut set = TargetSet::new(3, test_address).unwrap();
        let addresses: Vec<IpAddr> = addresses.iter().map(|a| ip(a)).collect();
        assert!(set.set_configured(&addresses).is_empty());
        set
    }

    fn reply(request: ProbeRequest, rtt: Duration) -> ProbeReply {
        let sent_ns = 7_000_000_000;
        let received_ns = sent_ns + u64::try_from(rtt.as_nanos()).unwrap();
        ProbeReply::new(3, request.seq, request.target, sent_ns, received_ns)
    }

    fn outcomes(events: &[ProbeEvent]) -> Vec<ProbeOutcome> {
        events
            .iter()
            .filter_map(|event| match event {
                ProbeEvent::Outcome(outcome) => Some(*outcome),
                _ => None,
            })
            .collect()
    }

    fn accepted(verdict: ReplyVerdict) -> Vec<ProbeEvent> {
        match verdict {
            ReplyVerdict::Accepted(events) => events,
            ReplyVerdict::Rejected(reason) => panic!("reply rejected: {reason:?}"),
        }
    }

    struct Harness {
        prober: Prober,
        fdt: FailureDetectionTime,
        rng: StdRng,
    }

    impl Harness {
        fn new(fdt_ms: u64, targets: TargetSet) -> Self {
            let fdt = fdt(fdt_ms);
            let mut rng = StdRng::seed_from_u64(7);
            let prober = Prober::new("h0", targets, Instant::now(), &mut rng, &fdt);
            Self { prober, fdt, rng }
        }

        fn interval(&self) -> Duration {
            self.fdt.probe_interval()
        }

        fn send_at(&mut self, at: Instant) -> ProbeRequest {
            let transmit = self.prober.send(at, &mut self.rng, &self.fdt);
            transmit.probe.expect("a target to probe")
        }

        /// Sends the probe that is due, at its scheduled time.
        fn send_due(&mut self) -> (Instant, ProbeRequest) {
            let at = self.prober.next_probe_at();
            (at, self.send_at(at))
        }

        fn answer(
            &mut self,
            sent_at: Instant,
            request: ProbeRequest,
            rtt: Duration,
        ) -> ReplyVerdict {
            self.prober
                .on_reply(reply(request, rtt), sent_at + rtt, &mut self.fdt)
        }

        fn poll(&mut self, at: Instant) -> Vec<ProbeEvent> {
            self.prober.poll(at, &self.fdt)
        }

        fn target_view(&self, address: &str) -> TargetProbeView {
            self.prober
                .view()
                .targets
                .into_iter()
                .find(|view| view.address == ip(address))
                .expect("target in view")
        }
    }

    #[test]
    fn a_prober_without_targets_is_reported_once_after_a_while_with_its_link_up() {
        let start = Instant::now();
        let mut harness = Harness::new(10_000, target_set(&[]));
        let prober = &mut harness.prober;
        assert_eq!(prober.target_notice(start, true), None);
        // Link down: no target is expected, the time does not count.
        assert_eq!(prober.target_notice(start + TARGETLESS_NOTICE, false), None);
        let up = start + TARGETLESS_NOTICE + ms(1);
        assert_eq!(prober.target_notice(up, true), None);
        assert_eq!(
            prober.target_notice(up + TARGETLESS_NOTICE, true),
            Some(TargetNotice::Missing(TARGETLESS_NOTICE))
        );
        assert_eq!(prober.target_notice(up + TARGETLESS_NOTICE * 2, true), None);
        prober.add_discovered(&[ip(A)], &[], Instant::now());
        assert_eq!(
            prober.target_notice(up + TARGETLESS_NOTICE * 3, true),
            Some(TargetNotice::Back)
        );
        assert_eq!(prober.target_notice(up + TARGETLESS_NOTICE * 4, true), None);
    }

    #[test]
    fn a_reply_to_a_probe_sent_before_the_link_came_up_is_no_answer() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        // Sent while the link was down: it waited in the ARP queue.
        let (queued_at, queued) = harness.send_due();
        let up = queued_at + ms(500);
        harness.prober.link_came_up(up);
        let (fresh_at, fresh) = harness.send_due();
        assert!(fresh_at > up);
        // The queued probe leaves with the link and is answered after it.
        let late = harness.answer(queued_at, queued, ms(600));
        assert_eq!(outcomes(&accepted(late)), []);
        let answered = accepted(harness.answer(fresh_at, fresh, ms(1)));
        assert!(matches!(
            outcomes(&answered)[..],
            [ProbeOutcome::Answered { .. }]
        ));
        // Taken once: neither lost later nor believed twice.
        assert!(outcomes(&harness.poll(fresh_at + harness.interval() * 20)).is_empty());
        assert!(matches!(
            harness.answer(queued_at, queued, ms(700)),
            ReplyVerdict::Rejected(RejectReason::Duplicate)
        ));
    }

    #[test]
    fn probe_interval_is_the_fdt_over_seven() {
        assert_eq!(
            fdt(10_000).probe_interval(),
            Duration::from_nanos(1_428_571_428)
        );
        assert_eq!(fdt(100).probe_interval(), Duration::from_nanos(14_285_714));
        let error = FailureDetectionTime::new("g0", ms(99)).unwrap_err();
        assert_eq!(error, FdtError::BelowMinimum { requested_ms: 99 });
        assert_eq!(
            error.to_string(),
            "failure detection time 99 ms is below the minimum of 100 ms"
        );
    }

    #[test]
    fn first_probe_is_at_a_random_point_of_the_first_interval() {
        let fdt = fdt(10_000);
        let start = Instant::now();
        let mut offsets = Vec::new();
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let prober = Prober::new("h0", target_set(&[A]), start, &mut rng, &fdt);
            let offset = prober.next_probe_at() - start;
            assert!(offset <= fdt.probe_interval(), "{offset:?}");
            offsets.push(offset);
        }
        offsets.sort();
        offsets.dedup();
        assert!(offsets.len() > 40, "start offsets differ per NIC");
    }

    #[test]
    fn each_probe_falls_in_the_second_half_of_its_interval() {
        for fdt_ms in [10_000, 100] {
            let mut harness = Harness::new(fdt_ms, target_set(&[A, B]));
            let interval = harness.interval();
            let (first, _) = harness.send_due();
            let mut factors = Vec::new();
            for k in 1..1000u32 {
                let (at, _) = harness.send_due();
                let offset = at - (first + interval * (k - 1));
                assert!(
                    offset >= interval / 2 && offset <= interval,
                    "probe {k} at {offset:?} into an interval of {interval:?}"
                );
                factors.push(offset.as_secs_f64() / interval.as_secs_f64());
            }
            let lowest = factors.iter().copied().fold(f64::MAX, f64::min);
            let highest = factors.iter().copied().fold(f64::MIN, f64::max);
            assert!(lowest < 0.55 && highest > 0.95, "{lowest}..{highest}");
        }
    }

    #[test]
    fn a_late_send_skips_the_intervals_it_missed() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let interval = harness.interval();
        let (first, _) = harness.send_due();
        let late = first + interval * 10 + interval / 3;
        harness.send_at(late);
        let next = harness.prober.next_probe_at();
        assert!(next > late && next - late <= interval, "{:?}", next - late);
        let into_interval = (next - first).as_nanos() % interval.as_nanos();
        assert!(
            into_interval == 0 || into_interval >= interval.as_nanos() / 2,
            "still in the second half of an interval: {into_interval}"
        );
    }

    #[test]
    fn targets_are_probed_in_turn() {
        let mut harness = Harness::new(10_000, target_set(&[A, B, C]));
        let probed: Vec<IpAddr> = (0..6).map(|_| harness.send_due().1.target).collect();
        assert_eq!(probed, [A, B, C, A, B, C].map(ip));
        let sequence: Vec<u32> = (0..3).map(|_| harness.send_due().1.seq).collect();
        assert_eq!(sequence[1], sequence[0].wrapping_add(1));
    }

    #[test]
    fn without_rtt_samples_a_probe_is_lost_after_one_interval() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let interval = harness.interval();
        let (at, request) = harness.send_due();
        assert!(
            harness
                .poll(at + interval - Duration::from_nanos(1))
                .is_empty()
        );
        let events = harness.poll(at + interval);
        assert_eq!(
            outcomes(&events),
            [ProbeOutcome::Lost {
                target: request.target,
                seq: request.seq
            }]
        );
        assert!(harness.poll(at + interval * 2).is_empty(), "lost only once");
    }

    #[test]
    fn the_loss_report_names_each_target_with_its_lost_and_decided_probes() {
        let mut harness = Harness::new(10_000, target_set(&[A, B]));
        let interval = harness.interval();
        assert_eq!(harness.prober.loss_report(), "IPv4 no probe decided");
        // A answers once, then A and B lose everything.
        let (at, request) = harness.send_due();
        assert_eq!(request.target, ip(A));
        accepted(harness.answer(at, request, ms(20)));
        assert_eq!(harness.prober.loss_report(), "IPv4 192.0.2.1 lost 0 of 1");
        let mut last = at;
        for _ in 0..4 {
            let (at, _) = harness.send_due();
            last = at;
        }
        harness.poll(last + interval * 2);
        assert_eq!(
            harness.prober.loss_report(),
            "IPv4 192.0.2.1 lost 2 of 3, 192.0.2.2 lost 2 of 2"
        );
    }

    #[test]
    fn with_rtt_samples_a_probe_is_lost_after_the_rtt_bound() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let (at, request) = harness.send_due();
        accepted(harness.answer(at, request, ms(20)));
        assert_eq!(
            harness.target_view(A).rtt_bound_us,
            Some(60_000),
            "3 × the first RTT"
        );

        let (at, request) = harness.send_due();
        assert!(
            harness
                .poll(at + ms(60) - Duration::from_nanos(1))
                .is_empty()
        );
        let events = harness.poll(at + ms(60));
        assert_eq!(
            outcomes(&events),
            [ProbeOutcome::Lost {
                target: request.target,
                seq: request.seq
            }]
        );
        assert_eq!(
            harness.prober.next_wakeup(&harness.fdt),
            harness.prober.next_probe_at()
        );
    }

    #[test]
    fn a_microsecond_rtt_bound_is_floored_for_the_daemon_s_own_latency() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let (at, request) = harness.send_due();
        accepted(harness.answer(at, request, Duration::from_micros(50)));
        assert_eq!(harness.target_view(A).rtt_bound_us, Some(150));

        let (at, _) = harness.send_due();
        assert_eq!(
            harness.prober.next_wakeup(&harness.fdt),
            at + LOSS_BOUND_FLOOR
        );
        assert!(
            harness
                .poll(at + ms(10) - Duration::from_nanos(1))
                .is_empty()
        );
        assert_eq!(outcomes(&harness.poll(at + ms(10))).len(), 1);
    }

    #[test]
    fn rtt_smoothing_matches_jacobson_karels() {
        let interval = Duration::from_secs(10);
        let mut estimator = RttEstimator::default();
        let expected_us = [
            (10, 10_000, 5_000, 30_000),
            (18, 11_000, 5_750, 34_000),
            (6, 10_375, 5_562, 32_625),
        ];
        for (rtt_ms, average, deviation, crtt) in expected_us {
            assert_eq!(estimator.sample(ms(rtt_ms), interval), Sample::Committed);
            let micros = |d: Option<Duration>| d.map(|d| d.as_micros());
            assert_eq!(micros(estimator.average()), Some(average));
            assert_eq!(micros(estimator.deviation()), Some(deviation));
            assert_eq!(micros(estimator.crtt()), Some(crtt));
        }

        let mut harness = Harness::new(10_000, target_set(&[A]));
        for rtt_ms in [10, 18, 6] {
            let (at, request) = harness.send_due();
            accepted(harness.answer(at, request, ms(rtt_ms)));
        }
        let view = harness.target_view(A);
        assert_eq!(
            (
                view.net_rtt_us,
                view.rtt_avg_us,
                view.rtt_dev_us,
                view.rtt_bound_us
            ),
            (Some(6_000), Some(10_375), Some(5_562), Some(32_625))
        );
    }

    #[test]
    fn an_outlier_is_deferred_then_dropped_or_confirmed_by_a_second() {
        let interval = fdt(10_000).probe_interval();
        let mut estimator = RttEstimator::default();
        let crtt_ns = |estimator: &RttEstimator| estimator.crtt().unwrap().as_nanos();

        assert_eq!(estimator.sample(ms(10), interval), Sample::Committed);
        assert_eq!(crtt_ns(&estimator), 30_000_000);
        assert_eq!(estimator.sample(ms(1_300), interval), Sample::Deferred);
        assert_eq!(
            crtt_ns(&estimator),
            30_000_000,
            "the outlier is not trusted yet"
        );
        assert_eq!(estimator.sample(ms(10), interval), Sample::Committed);
        assert_eq!(crtt_ns(&estimator), 25_000_000, "the outlier was dropped");

        assert_eq!(estimator.sample(ms(1_300), interval), Sample::Deferred);
        assert_eq!(estimator.sample(ms(1_300), interval), Sample::Integrated);
        // sa 80 ms, sv 15 ms; + 1.3 s: sa 1370, sv 1301.25; + 1.3 s: sa 2498.75, sv 2104.6875.
        assert_eq!(crtt_ns(&estimator), 2_417_031_250);
    }

    #[test]
    fn a_reply_after_the_loss_turns_it_into_an_answer() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let interval = harness.interval();
        let (at, request) = harness.send_due();
        assert_eq!(outcomes(&harness.poll(at + interval)).len(), 1);
        let counters = |h: &Harness| h.target_view(A).probes;
        assert_eq!(counters(&harness).lost, 1);

        let events = accepted(harness.prober.on_reply(
            reply(request, interval * 2),
            at + interval * 2,
            &mut harness.fdt,
        ));
        assert_eq!(
            outcomes(&events),
            [ProbeOutcome::Answered {
                target: request.target,
                rtt: interval * 2
            }]
        );
        let expected = ProbeCounters {
            sent: 1,
            answered: 1,
            lost: 0,
        };
        assert_eq!(counters(&harness), expected);
        assert_eq!(harness.prober.view().probes, expected);
    }

    #[test]
    fn replies_outside_the_window_from_the_wrong_source_or_twice_are_rejected() {
        let mut harness = Harness::new(10_000, target_set(&[A, B]));
        let (oldest_at, oldest) = harness.send_due();
        let (at, request) = harness.send_due();
        let not_sent = ProbeRequest {
            seq: request.seq.wrapping_add(1),
            target: ip(A),
        };
        assert_eq!(
            harness.answer(at, not_sent, ms(1)),
            ReplyVerdict::Rejected(RejectReason::OutOfWindow)
        );
        let forged = ProbeRequest {
            target: ip(A),
            ..request
        };
        assert_eq!(
            harness.answer(at, forged, ms(1)),
            ReplyVerdict::Rejected(RejectReason::WrongSource { expected: ip(B) })
        );
        accepted(harness.answer(at, request, ms(1)));
        assert_eq!(
            harness.answer(at, request, ms(2)),
            ReplyVerdict::Rejected(RejectReason::Duplicate)
        );

        for _ in 0..REPLY_WINDOW - 1 {
            harness.send_due();
        }
        let (last_at, _) = harness.send_due();
        assert_eq!(
            harness
                .prober
                .on_reply(reply(oldest, ms(1)), last_at, &mut harness.fdt),
            ReplyVerdict::Rejected(RejectReason::OutOfWindow),
            "sent {:?} before, {} probes ago",
            last_at - oldest_at,
            REPLY_WINDOW + 1
        );

        let view = harness.prober.view();
        assert_eq!(view.unknown, 4);
        assert_eq!(
            view.unknown_by_reason,
            UnknownReplies {
                out_of_window: 2,
                wrong_source: 1,
                duplicate: 1
            }
        );
        assert_eq!(view.probes.answered, 1, "rejected replies answer nothing");
    }

    #[test]
    fn the_oldest_probe_in_the_window_is_still_answerable() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        harness.send_due();
        let (_, oldest_kept) = harness.send_due();
        for _ in 0..REPLY_WINDOW - 1 {
            harness.send_due();
        }
        let now = harness.prober.next_probe_at();
        accepted(
            harness
                .prober
                .on_reply(reply(oldest_kept, ms(1)), now, &mut harness.fdt),
        );
    }

    #[test]
    fn only_the_newest_answer_updates_the_rtt() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let (first_at, first) = harness.send_due();
        let (second_at, second) = harness.send_due();
        accepted(harness.answer(second_at, second, ms(10)));
        let events = accepted(harness.answer(first_at, first, ms(900)));
        assert_eq!(outcomes(&events).len(), 1, "still an answer");
        let view = harness.target_view(A);
        assert_eq!(
            (view.rtt_avg_us, view.net_rtt_us),
            (Some(10_000), Some(900_000))
        );
    }

    /// FDT 100 ms with a 10 ms RTT target: the first sample (bound 30 ms) is deferred, the
    /// second confirms it (bound 25 ms > 14.3 ms), so the interval becomes 50 ms, FDT 350 ms.
    fn raised_to_350_ms() -> (Harness, Instant) {
        let mut harness = Harness::new(100, target_set(&[A]));
        let (at, request) = harness.send_due();
        let events = accepted(harness.answer(at, request, ms(10)));
        assert_eq!(events.len(), 1, "deferred, no change yet: {events:?}");
        let (at, request) = harness.send_due();
        let events = accepted(harness.answer(at, request, ms(10)));
        let change = FdtChange {
            previous: ms(100),
            effective: ms(350),
            message: "Cannot meet requested failure detection time of 100 ms on (inet h0) new failure detection time for group g0 is 350 ms".to_string(),
        };
        assert_eq!(events.last(), Some(&ProbeEvent::FdtRaised(change)));
        (harness, at + ms(10))
    }

    #[test]
    fn an_fdt_the_rtt_cannot_meet_is_raised() {
        let (harness, _) = raised_to_350_ms();
        assert_eq!(harness.fdt.effective(), ms(350));
        assert_eq!(harness.fdt.configured(), ms(100));
        assert_eq!(harness.fdt.probe_interval(), ms(50));
        let view = harness.fdt.view();
        assert_eq!(
            (
                view.configured_ms,
                view.effective_ms,
                view.probe_interval_us
            ),
            (100, 350, 50_000)
        );
    }

    #[test]
    fn the_fdt_is_lowered_in_steps_and_not_sooner_than_60_s_after_the_raise() {
        let (mut harness, raised_at) = raised_to_350_ms();
        let mut fast_enough_early = false;
        let mut changes = Vec::new();
        while changes.len() < 2 {
            let (at, request) = harness.send_due();
            accepted(harness.answer(at, request, ms(1)));
            let now = at + ms(1);
            let bound = harness.target_view(A).rtt_bound_us.unwrap();
            if now < raised_at + FDT_SETTLING_TIME && bound <= 12_500 {
                fast_enough_early = true;
            }
            if let Some(change) = harness.fdt.try_lower(now, [&harness.prober]) {
                changes.push((now, change));
            }
            assert!(now < raised_at + Duration::from_secs(120), "never lowered");
        }
        assert!(fast_enough_early, "only the settling time held the FDT up");
        let (first_at, first) = &changes[0];
        assert!(*first_at >= raised_at + FDT_SETTLING_TIME);
        assert!(*first_at < raised_at + FDT_SETTLING_TIME + ms(100));
        assert_eq!((first.previous, first.effective), (ms(350), ms(175)));
        assert_eq!(
            first.message,
            "Improved failure detection time 175 ms for group g0"
        );
        assert_eq!(
            (changes[1].1.previous, changes[1].1.effective),
            (ms(175), ms(100))
        );
        assert_eq!(harness.fdt.effective(), harness.fdt.configured());
        let later = changes[1].0 + Duration::from_secs(600);
        assert_eq!(harness.fdt.try_lower(later, [&harness.prober]), None);
    }

    #[test]
    fn the_fdt_stays_up_while_any_target_is_still_slow() {
        let (mut harness, raised_at) = raised_to_350_ms();
        let (at, request) = harness.send_due();
        accepted(harness.answer(at, request, ms(12)));
        let later = raised_at + Duration::from_secs(61);
        assert_eq!(harness.fdt.try_lower(later, [&harness.prober]), None);
        assert_eq!(harness.fdt.effective(), ms(350));
    }

    #[test]
    fn a_lone_slow_target_is_set_aside_instead_of_raising_the_fdt() {
        let run = |targets: &[&str]| {
            let mut harness = Harness::new(10_000, target_set(targets));
            let mut events = Vec::new();
            for _ in 0..2 * targets.len() {
                let (at, request) = harness.send_due();
                let rtt = if request.target == ip(A) {
                    ms(1_300)
                } else {
                    ms(10)
                };
                events.extend(accepted(harness.answer(at, request, rtt)));
            }
            (harness, events)
        };

        let (mut harness, events) = run(&[A, B, C, D]);
        let set_aside = ProbeEvent::Target(TargetEvent::SetAside {
            target: ip(A),
            reason: SetAsideReason::Slow,
            action: TargetAction::RetryAfter(Duration::from_secs(60)),
        });
        assert!(events.contains(&set_aside), "{events:?}");
        assert!(!events.iter().any(|e| matches!(e, ProbeEvent::FdtRaised(_))));
        assert_eq!(harness.fdt.effective(), ms(10_000));
        assert_eq!(harness.target_view(A).state, TargetState::Slow);
        for _ in 0..6 {
            assert_ne!(harness.send_due().1.target, ip(A));
        }

        let (harness, events) = run(&[A, B, C]);
        assert!(
            events.iter().any(|e| matches!(e, ProbeEvent::FdtRaised(_))),
            "too few targets to call one an exception: {events:?}"
        );
        assert!(harness.fdt.effective() > ms(10_000));
    }

    #[test]
    fn losses_from_startup_on_are_reported_at_once_in_the_order_sent() {
        let mut harness = Harness::new(10_000, target_set(&[A, B]));
        let interval = harness.interval();
        let (first_at, first) = harness.send_due();
        assert_eq!(
            outcomes(&harness.poll(first_at + interval)),
            [ProbeOutcome::Lost {
                target: first.target,
                seq: first.seq
            }],
            "nothing is held back at startup"
        );
        let mut sent = Vec::new();
        let mut last_at = first_at;
        for _ in 0..NUM_PROBE_FAILS {
            let (at, request) = harness.send_due();
            sent.push(ProbeOutcome::Lost {
                target: request.target,
                seq: request.seq,
            });
            last_at = at;
        }
        assert_eq!(outcomes(&harness.poll(last_at + interval)), sent);
    }

    #[test]
    fn a_failed_nic_s_replies_count_but_do_not_train_the_rtt() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let (at, request) = harness.send_due();
        accepted(harness.answer(at, request, ms(10)));
        assert!(harness.target_view(A).rtt_avg_us.is_some());

        harness.prober.set_nic_failed(true, at);
        assert_eq!(
            harness.target_view(A).rtt_avg_us,
            None,
            "estimates start afresh"
        );
        let (at, request) = harness.send_due();
        let events = accepted(harness.answer(at, request, ms(400)));
        assert_eq!(
            outcomes(&events),
            [ProbeOutcome::Answered {
                target: ip(A),
                rtt: ms(400)
            }]
        );
        assert_eq!(harness.target_view(A).rtt_avg_us, None);

        // A probe sent while the NIC was failed, answered seconds later (it waited in the
        // ARP queue until the link came back): it counts, but its RTT does not train the
        // estimate nor raise the failure detection time.
        // Two of them in a row: one alone would be held back as an outlier anyway.
        let (stale_at, stale) = harness.send_due();
        let (stale_at2, stale2) = harness.send_due();
        let (at, request) = harness.send_due();
        harness.prober.set_nic_failed(false, at);
        for (sent_at, probe) in [(stale_at, stale), (stale_at2, stale2)] {
            let events = accepted(harness.answer(sent_at, probe, ms(2500)));
            assert!(
                !events.iter().any(|e| matches!(e, ProbeEvent::FdtRaised(_))),
                "{events:?}"
            );
        }
        assert_eq!(harness.target_view(A).rtt_avg_us, None);
        accepted(harness.answer(at, request, ms(10)));
        assert_eq!(harness.target_view(A).rtt_avg_us, Some(10_000));
    }

    #[test]
    fn reject_reason_labels_are_their_names() {
        let reasons = [
            RejectReason::OutOfWindow,
            RejectReason::WrongSource {
                expected: ip("192.0.2.1"),
            },
            RejectReason::Duplicate,
        ];
        assert_eq!(reasons.map(RejectReason::as_str), RejectReason::LABELS);
    }

    #[test]
    fn discovery_is_asked_for_while_hosts_give_no_resilience() {
        let test_address = IpCidr::new(ip("192.0.2.21"), 24).unwrap();
        let empty = TargetSet::new(3, test_address).unwrap();
        let mut harness = Harness::new(10_000, empty);
        let at = harness.prober.next_probe_at();
        let transmit = harness.prober.send(at, &mut harness.rng, &harness.fdt);
        assert_eq!(
            transmit,
            Transmit {
                probe: None,
                discover: true
            }
        );
        assert!(harness.prober.next_probe_at() > at, "the schedule goes on");

        harness
            .prober
            .add_discovered(&[ip("192.0.2.60")], &[], Instant::now());
        // One host: asked again, though not with every probe.
        let at = harness.prober.next_probe_at() + Duration::from_secs(1);
        let transmit = harness.prober.send(at, &mut harness.rng, &harness.fdt);
        assert!(transmit.discover);
        assert_eq!(transmit.probe.map(|p| p.target), Some(ip("192.0.2.60")));

        harness
            .prober
            .add_discovered(&[ip("192.0.2.61")], &[], Instant::now());
        let at = harness.prober.next_probe_at();
        assert!(
            !harness
                .prober
                .send(at, &mut harness.rng, &harness.fdt)
                .discover
        );
    }

    #[test]
    fn a_probe_to_a_target_that_left_the_list_is_neither_lost_nor_answered() {
        let test_address = IpCidr::new(ip("192.0.2.21"), 24).unwrap();
        let mut targets = TargetSet::new(3, test_address).unwrap();
        targets.add_discovered(&[ip("192.0.2.60")], &[], Instant::now());
        let mut harness = Harness::new(10_000, targets);
        let (sent_at, request) = harness.send_due();
        // The group's targets all went silent: discovered hosts are forgotten. The probe
        // still out must not count as a loss for a family that now probes nothing.
        harness.prober.all_targets_silent();
        let outcomes: Vec<ProbeEvent> = harness.poll(sent_at + harness.interval() * 3);
        assert!(
            !outcomes
                .iter()
                .any(|e| matches!(e, ProbeEvent::Outcome(ProbeOutcome::Lost { .. }))),
            "{outcomes:?}"
        );
        assert!(matches!(
            harness.answer(sent_at, request, ms(5)),
            ReplyVerdict::Rejected(RejectReason::OutOfWindow)
        ));
    }

    #[test]
    fn a_host_that_stops_answering_while_others_answer_is_replaced() {
        let test_address = IpCidr::new(ip("192.0.2.21"), 24).unwrap();
        let mut targets = TargetSet::new(3, test_address).unwrap();
        targets.add_discovered(&[ip("192.0.2.60"), ip("192.0.2.61")], &[], Instant::now());
        let mut harness = Harness::new(10_000, targets);
        let dead = ip("192.0.2.60");
        let mut set_aside = None;
        let mut lost = 0;
        for _ in 0..40 {
            let at = harness.prober.next_probe_at();
            for event in harness.poll(at) {
                match event {
                    ProbeEvent::Outcome(ProbeOutcome::Lost { target, .. }) => {
                        assert_eq!(target, dead);
                        lost += 1;
                    }
                    ProbeEvent::Target(event) => set_aside = Some((event, lost)),
                    ProbeEvent::Outcome(_) | ProbeEvent::FdtRaised(_) => {}
                }
            }
            if set_aside.is_some() {
                break;
            }
            let transmit = harness.prober.send(at, &mut harness.rng, &harness.fdt);
            let request = transmit.probe.unwrap();
            if request.target != dead {
                accepted(harness.answer(at, request, ms(1)));
            }
        }
        let expected = TargetEvent::SetAside {
            target: dead,
            reason: SetAsideReason::Unresponsive,
            action: TargetAction::Replaced,
        };
        assert_eq!(set_aside, Some((expected, NUM_PROBE_FAILS)));
        assert!(!harness.prober.targets().contains(dead));
        let at = harness.prober.next_probe_at();
        let transmit = harness.prober.send(at, &mut harness.rng, &harness.fdt);
        assert!(transmit.discover, "a replacement is looked for");
        assert_eq!(transmit.probe.map(|p| p.target), Some(ip("192.0.2.61")));
    }

    #[test]
    fn views_serialize_for_the_status_commands() {
        let mut harness = Harness::new(10_000, target_set(&[A]));
        let (at, request) = harness.send_due();
        accepted(harness.answer(at, request, ms(10)));
        let json = serde_json::to_value(harness.prober.view()).unwrap();
        assert_eq!(json["nic"], "h0");
        assert_eq!(json["family"], "inet");
        assert_eq!(json["test_address"], "192.0.2.21");
        assert_eq!(json["sent"], 1);
        assert_eq!(json["unknown"], 0);
        let target = &json["targets"][0];
        assert_eq!(target["address"], A);
        assert_eq!(target["source"], "configured");
        assert_eq!(target["state"], "active");
        assert_eq!(target["answered"], 1);
        assert_eq!(target["rtt_avg_us"], 10_000);
        assert_eq!(target["net_rtt_us"], 10_000);
        let json = serde_json::to_value(harness.fdt.view()).unwrap();
        assert_eq!(json["effective_ms"], 10_000);
        assert_eq!(json["group"], "g0");
    }
}
