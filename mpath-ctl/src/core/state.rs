//! Failure and repair detection for IPMP groups, as in.mpathd does it.
//!
//! One [`Group`] per IPMP group holds the state of each member NIC and of the group. Everything
//! that happens arrives as an [`Event`] together with the time it happened
//! ([`Group::handle`]); the answer is a list of [`Action`]s for the daemon to carry out and log.
//! Nothing here touches the kernel or reads a clock, so every rule is unit-tested with injected
//! time. The rules follow illumos in.mpathd (`mpd_probe.c`, `mpd_tables.c`):
//!
//! - **Link**: the link (carrier / `RUNNING`) going down fails a NIC at once.
//! - **Probes**: [`NUM_PROBE_FAILS`] consecutive lost probes fail a NIC. When it probes over
//!   both IPv4 and IPv6 it fails only when every family that has targets has lost that many.
//!   Losses reported during the startup quiet period ([`Policy::startup_quiet`], ended early by
//!   the first reply) are counted but do not fail the NIC until the period is over, so a switch
//!   port still in spanning-tree learning is not declared failed. The rule lives here only:
//!   the prober reports losses as they happen, so the NIC-or-target verdict below compares
//!   true loss times (as in.mpathd, which records losses and skips only the failure check).
//! - **Repair**: a probing NIC is repaired after [`NUM_PROBE_REPAIRS`] consecutive replies in
//!   one family while its link is up; replies and losses seen while the link is down are
//!   ignored and the counters restart when it goes down. A NIC without a test address is
//!   repaired when its link comes back, unless the link has come up more than
//!   [`LINK_UPS_PER_MINUTE`] times within [`FLAP_WINDOW`]: then the repair waits until a
//!   minute has passed since the link-up before the latest one (in.mpathd's `pi_whenup` ring),
//!   reported once by [`Action::RepairDeferred`]; [`Group::next_wakeup`] says when to send
//!   [`Event::Tick`] to complete it.
//! - **NIC failure or group failure**: when a NIC has lost its probes, in.mpathd asks whether
//!   any other member has succeeded since this NIC's first loss (a functioning member with its
//!   link up that has had a reply since then, or that is judged by its link alone). If one has,
//!   the NIC failed. If none has, all targets stopped answering at once: that is taken as a
//!   target failure, not a NIC failure. Every functioning member is marked failed with cause
//!   [`FailureCause::TargetsUnreachable`], the group fails ("nothing moves": with no usable NIC
//!   there is nowhere to move to) and [`Action::FlushTargets`] tells the prober to drop its
//!   discovered targets and rediscover (router and configured targets are kept). Members are
//!   repaired one by one by [`NUM_PROBE_REPAIRS`] replies, exactly as after a NIC failure.
//! - **Group state**: ok when every member functions, failed when none does, degraded
//!   otherwise. A configured NIC that is missing counts as not functioning.
//! - **Active and inactive** (which NICs carry traffic): the group keeps as many active NICs as
//!   it has non-standby members (at least one). When fewer are active, an inactive functioning
//!   NIC is activated, a standby first; when more are, an active standby is deactivated.
//!   A standby is therefore inactive until an active NIC fails and inactive again after
//!   failback. With `FAILBACK=no` a repaired non-standby NIC becomes inactive, unless the group
//!   is below its number of active NICs (for example it had failed, or no standby took over):
//!   then it is active but does not take its addresses back (Oracle's description of
//!   `FAILBACK=no`; in.mpathd checks only for group failure).
//! - **Offline/online** (if_mpadm -d/-r): offline is refused when no other member functions
//!   (when the group has failed, when no other member is present and online). Onlining acts as
//!   if the NIC were new, so its addresses come back even with `FAILBACK=no`.
//! - **Duplicate hardware addresses**: a present member whose MAC (reported by
//!   [`Event::HardwareAddress`]) equals an earlier present member's, in configuration order,
//!   is taken offline ([`OfflineReason::DuplicateMac`], reported by [`Action::DuplicateMac`]):
//!   the switch learns a MAC on one port only, so one of the two cannot receive. It comes
//!   back by itself, as onlining would bring it, once its MAC is unique again
//!   ([`Action::MacUnique`]); an operator cannot online it meanwhile, and an operator's
//!   offline of it takes over (it then stays offline until onlined). The rule is applied
//!   after every event, in one place ([`Group::refresh_duplicates`]).
//! - **Datapath**: a NIC mpathd could not attach its programs to (reported by
//!   [`Event::Datapath`]) cannot match its probe replies nor take moved traffic: it is taken
//!   offline ([`OfflineReason::NoDatapath`], reported by [`Action::DatapathLost`]) and comes
//!   back by itself once they attach ([`Action::DatapathAttached`]), like a duplicate MAC.
//!   Both rules are applied after every event, in one place ([`Group::refresh_offline`]).
//! - **Appearing/disappearing**: a configured NIC missing from the system is
//!   [`IfState::Missing`]; when it appears it joins like a new NIC; when it disappears it
//!   leaves the usable set, so its addresses fail over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::core::identity::NicSlot;
use crate::core::probe::{NUM_PROBE_FAILS, NUM_PROBE_REPAIRS, ProbeOutcome};
use crate::core::target::AddressFamily;

/// Link-ups tolerated within [`FLAP_WINDOW`] before repair waits for a stable link
/// (in.mpathd `LINK_UP_PERMIN`).
pub(crate) const LINK_UPS_PER_MINUTE: usize = 2;
/// The window over which link-ups are counted for damping.
pub(crate) const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// in.mpathd's startup quiet period (`FAILURE_DETECTION_QP`), covering spanning-tree learning.
pub(crate) const STARTUP_QUIET_PERIOD: Duration = Duration::from_secs(40);

/// Group-wide settings that change the decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `FAILBACK`: a repaired NIC takes its data addresses back.
    pub failback: bool,
    /// How long after a probing NIC appears lost probes cannot fail it; zero disables it.
    pub startup_quiet: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failback: true,
            startup_quiet: STARTUP_QUIET_PERIOD,
        }
    }
}

/// The families a NIC probes over; none means link-based detection only (no test address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeFamilies {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl ProbeFamilies {
    pub(crate) const NONE: ProbeFamilies = ProbeFamilies {
        ipv4: false,
        ipv6: false,
    };
    pub(crate) const IPV4: ProbeFamilies = ProbeFamilies {
        ipv4: true,
        ipv6: false,
    };
    pub(crate) const IPV6: ProbeFamilies = ProbeFamilies {
        ipv4: false,
        ipv6: true,
    };
    pub(crate) const BOTH: ProbeFamilies = ProbeFamilies {
        ipv4: true,
        ipv6: true,
    };

    pub fn contains(self, family: AddressFamily) -> bool {
        match family {
            AddressFamily::Inet => self.ipv4,
            AddressFamily::Inet6 => self.ipv6,
        }
    }

    fn any(self) -> bool {
        self.ipv4 || self.ipv6
    }

    fn iter(self) -> impl Iterator<Item = AddressFamily> {
        [AddressFamily::Inet, AddressFamily::Inet6]
            .into_iter()
            .filter(move |family| self.contains(*family))
    }
}

/// How one member NIC is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub slot: NicSlot,
    pub name: String,
    pub standby: bool,
    pub probe: ProbeFamilies,
}

/// Something that happened to the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The full picture after a link dump (startup, or a resync after a netlink overrun):
    /// the members present with their link state (`true` = RUNNING); members not listed are
    /// missing. Applied as one step, so no transient activation happens in between.
    Snapshot { present: Vec<(NicSlot, bool)> },
    /// A member NIC exists now (or again). Repeating it for a present NIC is a link report.
    Appeared { nic: NicSlot, link_up: bool },
    /// A member NIC was removed from the system.
    Disappeared { nic: NicSlot },
    /// The link (carrier / RUNNING) of a present member changed; repeats are ignored.
    Link { nic: NicSlot, up: bool },
    /// A probe completed, as the prober reported it; only answered or lost matters here.
    /// Ignored while the NIC is offline, missing or its link is down.
    Probe {
        nic: NicSlot,
        family: AddressFamily,
        outcome: ProbeOutcome,
    },
    /// The prober has (or no longer has) any target for this NIC and family.
    Targets {
        nic: NicSlot,
        family: AddressFamily,
        available: bool,
    },
    /// The hardware address of a member, reported before it appears (so that a duplicate
    /// never carries traffic) and whenever it changes; forgotten when it disappears.
    HardwareAddress { nic: NicSlot, mac: [u8; 6] },
    /// Administrative offline (if_mpadm -d).
    Offline { nic: NicSlot },
    /// Undo an offline (if_mpadm -r).
    Online { nic: NicSlot },
    /// A probing NIC that is up but whose data addresses a previous mpathd had moved away
    /// (found at start): it was failed by probes, so it stays failed until its probes
    /// repair it, instead of taking its addresses back at once and losing them again.
    Adopt { nic: NicSlot },
    /// Whether mpathd's programs are attached to a member: reported before it appears (so
    /// that a NIC without them never carries traffic) and whenever that changes.
    Datapath { nic: NicSlot, attached: bool },
    /// Time passed; send it at [`Group::next_wakeup`].
    Tick,
}

/// Why a NIC was declared failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    LinkDown,
    ProbesLost,
    /// Every member lost its probes at once: probably the targets, not the NICs.
    TargetsUnreachable,
}

named!(pub FailureCause {
    LinkDown => "link_down",
    ProbesLost => "probes_lost",
    TargetsUnreachable => "targets_unreachable",
});

/// The state of one member NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfState {
    /// Configured but not present in the system.
    Missing,
    /// Functioning: link up and, if it probes, probes passing (or no targets to tell).
    Ok,
    Failed {
        cause: FailureCause,
    },
    /// Out of use, administratively or for a duplicate hardware address; `failure` is what
    /// detection says underneath (link only, as probing stops while offline), applied when
    /// it comes back online.
    Offline {
        failure: Option<FailureCause>,
        reason: OfflineReason,
    },
}

/// Why a NIC is offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    /// An operator's offline (if_mpadm -d); an online brings it back.
    Admin,
    /// Its hardware address is an earlier member's; a unique one brings it back.
    DuplicateMac,
    /// mpathd's programs could not be attached to it; attaching them brings it back.
    NoDatapath,
}

/// Link state as reported by rtnetlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Down,
    Unknown,
}

named!(pub LinkState {
    Up => "up",
    Down => "down",
    Unknown => "unknown",
});

/// Group state (ipmpstat -g STATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    Ok,
    Degraded,
    Failed,
}

named!(pub GroupState {
    Ok => "ok",
    Degraded => "degraded",
    Failed => "failed",
});

/// What the daemon must do or report after an event. [`Action::log_line`] gives the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Appeared {
        nic: NicSlot,
    },
    Disappeared {
        nic: NicSlot,
    },
    LinkDown {
        nic: NicSlot,
    },
    LinkUp {
        nic: NicSlot,
    },
    Failed {
        nic: NicSlot,
        cause: FailureCause,
    },
    /// A NIC found failed by probes before this state machine (mpathd restarted, or a
    /// reload rebuilt the group) is failed again: a failure's effects, but no new failure.
    StillFailed {
        nic: NicSlot,
    },
    Repaired {
        nic: NicSlot,
    },
    /// The link is flapping; repair waits until `until` (reported once per episode).
    RepairDeferred {
        nic: NicSlot,
        until: Instant,
    },
    /// All targets stopped answering at once: drop discovered targets of these NICs and
    /// rediscover (keep router and configured targets).
    FlushTargets {
        nics: Vec<NicSlot>,
    },
    /// An inactive NIC (usually a standby) now carries traffic.
    Activate {
        nic: NicSlot,
    },
    /// A NIC (a standby no longer needed) stops carrying traffic.
    Deactivate {
        nic: NicSlot,
    },
    Offlined {
        nic: NicSlot,
    },
    Onlined {
        nic: NicSlot,
    },
    /// `nic` has the hardware address `mac` of `of`, an earlier member: it is offline.
    DuplicateMac {
        nic: NicSlot,
        of: NicSlot,
        mac: [u8; 6],
    },
    /// `nic`'s hardware address is unique in the group again: it is back.
    MacUnique {
        nic: NicSlot,
    },
    /// mpathd's programs are not on `nic`: it is offline.
    DatapathLost {
        nic: NicSlot,
    },
    /// They are attached again: `nic` is back.
    DatapathAttached {
        nic: NicSlot,
    },
    GroupFailed,
    /// The group has a functioning member again; `nic` is the first of them.
    GroupRepaired {
        nic: NicSlot,
    },
    /// One family of a NIC probing both lost its last [`NUM_PROBE_FAILS`] probes while the
    /// other still answers, which holds the NIC up (in.mpathd's rule): its traffic in that
    /// family may be lost, and the NIC is not failed over.
    FamilyFailed {
        nic: NicSlot,
        family: AddressFamily,
    },
    /// That family answers again.
    FamilyRepaired {
        nic: NicSlot,
        family: AddressFamily,
    },
    /// The roles of the members changed ([`Group::nic_roles`]): rewrite the bucket table from
    /// [`Group::usable_interfaces`] and recompute the address placement.
    UsableSetChanged,
}

impl Action {
    /// The NIC the action is about.
    pub fn nic(&self) -> Option<NicSlot> {
        match self {
            Action::Appeared { nic }
            | Action::Disappeared { nic }
            | Action::LinkDown { nic }
            | Action::LinkUp { nic }
            | Action::Failed { nic, .. }
            | Action::StillFailed { nic }
            | Action::Repaired { nic }
            | Action::RepairDeferred { nic, .. }
            | Action::Activate { nic }
            | Action::Deactivate { nic }
            | Action::Offlined { nic }
            | Action::Onlined { nic }
            | Action::DuplicateMac { nic, .. }
            | Action::MacUnique { nic }
            | Action::DatapathLost { nic }
            | Action::DatapathAttached { nic }
            | Action::GroupRepaired { nic }
            | Action::FamilyFailed { nic, .. }
            | Action::FamilyRepaired { nic, .. } => Some(*nic),
            Action::FlushTargets { .. } | Action::GroupFailed | Action::UsableSetChanged => None,
        }
    }

    /// The line an administrator sees for this action of `group`, with in.mpathd's wording
    /// where it has one; `None` for actions that are only instructions to the daemon.
    pub(crate) fn log_line(&self, group: &Group) -> Option<String> {
        let members = group;
        let nic = self.nic().map_or("", |slot| members.nic_name(slot));
        let group = members.name();
        Some(match self {
            Action::Appeared { .. } => format!("NIC {nic} of group {group} has appeared"),
            Action::Disappeared { .. } => {
                format!("NIC {nic} of group {group} has been removed from the system")
            }
            Action::LinkDown { .. } => format!("The link has gone down on {nic}"),
            Action::LinkUp { .. } => format!("The link has come up on {nic}"),
            // The group-wide FlushTargets line explains these; one line per NIC would call
            // them NIC failures.
            Action::Failed {
                cause: FailureCause::TargetsUnreachable,
                ..
            } => return None,
            Action::Failed { .. } => {
                format!("NIC failure detected on {nic} of group {group}")
            }
            Action::StillFailed { .. } => format!(
                "NIC {nic} of group {group} stays failed (found failed before mpathd's restart \
                 or reload) until its probes answer again"
            ),
            Action::Repaired { .. } => format!("NIC repair detected on {nic} of group {group}"),
            Action::RepairDeferred { .. } => format!(
                "The link has come up on {nic} more than {LINK_UPS_PER_MINUTE} times in the \
                 last minute; disabling repair until it stabilizes"
            ),
            Action::FlushTargets { .. } => format!(
                "All probe targets of group {group} stopped answering at once: treating it as \
                 a target failure, no failover; flushing and rediscovering probe targets"
            ),
            Action::Activate { .. } => format!("NIC {nic} of group {group} is now active"),
            Action::Deactivate { .. } => format!("NIC {nic} of group {group} is now inactive"),
            Action::Offlined { .. } => format!("NIC {nic} of group {group} is now offline"),
            Action::Onlined { .. } => format!("NIC {nic} of group {group} is back online"),
            Action::DuplicateMac { of, mac, .. } => format!(
                "NIC {nic} of group {group} has the hardware address {} of {}, which is not \
                 unique in the group; offlining {nic}",
                mac.map(|b| format!("{b:02x}")).join(":"),
                members.nic_name(*of)
            ),
            Action::MacUnique { .. } => {
                format!("NIC {nic} now has a unique hardware address in group {group}; onlining it")
            }
            Action::DatapathLost { .. } => format!(
                "NIC {nic} of group {group} is offline: mpathd's programs are not attached to it, \
                 so its probe replies go unseen; it comes back once they attach"
            ),
            Action::DatapathAttached { .. } => {
                format!("mpathd's programs are attached to {nic} of group {group}; onlining it")
            }
            Action::GroupFailed => format!("All Interfaces in group {group} have failed"),
            Action::GroupRepaired { .. } => {
                format!("At least 1 interface ({nic}) in group {group} is now usable")
            }
            Action::FamilyFailed { family, .. } => format!(
                "{} probes on {nic} of group {group} have failed while {} probes answer: {nic} stays \
                 in use, and its {} traffic may be lost",
                family.ip_version(),
                family.other().ip_version(),
                family.ip_version()
            ),
            Action::FamilyRepaired { family, .. } => format!(
                "{} probes on {nic} of group {group} answer again",
                family.ip_version()
            ),
            Action::UsableSetChanged => return None,
        })
    }
}

/// What a member may do with data addresses, the input of address placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Carries traffic and may host data addresses. `reclaims_home`: its own addresses come
    /// back to it (false after a repair with `FAILBACK=no`).
    Active { reclaims_home: bool },
    /// Functioning but held in reserve: no data addresses, not in the bucket table.
    Inactive,
    /// Failed in a group failure (where nothing moved) and answering again: about to be
    /// repaired. It keeps the data addresses it has, so that the first NIC to recover does
    /// not take them all and hand them back a moment later, but takes none and carries no
    /// other traffic. Once no family's last probe was answered, it is unusable again.
    Recovering,
    /// Failed, offline or missing.
    Unusable,
}

/// A member and its [`Role`], in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NicRole {
    pub slot: NicSlot,
    pub name: String,
    pub standby: bool,
    pub role: Role,
}

/// Flags as ifconfig showed them on Solaris.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceFlag {
    Standby,
    Inactive,
    Failed,
    Offline,
    /// Offline for a duplicate hardware address (ipmpstat's `h`).
    DuplicateMac,
    /// Offline because mpathd's programs could not be attached.
    NoDatapath,
}

named!(pub InterfaceFlag {
    Standby => "standby",
    Inactive => "inactive",
    Failed => "failed",
    Offline => "offline",
    DuplicateMac => "duplicate_mac",
    NoDatapath => "no_datapath",
});

/// ipmpstat -i PROBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStatus {
    Ok,
    Failed,
    /// Probing is configured but cannot tell: no targets, link down, offline or missing.
    Unknown,
    /// No test address: link-based detection only.
    Disabled,
}

named!(pub ProbeStatus {
    Ok => "ok",
    Failed => "failed",
    Unknown => "unknown",
    Disabled => "disabled",
});

/// ipmpstat -i STATE, plus `missing` for a configured NIC not present in the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterfaceStatus {
    Ok,
    Failed,
    Offline,
    /// Functioning as far as the link tells, but probing has no targets to confirm it.
    Unknown,
    Missing,
}

named!(pub InterfaceStatus {
    Ok => "ok",
    Failed => "failed",
    Offline => "offline",
    Unknown => "unknown",
    Missing => "missing",
});

/// Why a NIC carries no traffic (ipmpstat has no such column; only in.mpathd's log said it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnusableReason {
    /// Its link (carrier) is down.
    LinkDown,
    /// Its probes were lost (`probe_ipv4`/`probe_ipv6` say in which family).
    ProbesLost,
    /// Every NIC's probes were lost at once: the targets, not the NICs, stopped answering.
    TargetsUnreachable,
    /// An operator took it offline.
    Offline,
    /// Offline: another member has its hardware address.
    DuplicateMac,
    /// Offline: mpathd's programs could not be attached to it.
    NoDatapath,
    /// Not present in the system.
    Missing,
}

named!(pub UnusableReason {
    LinkDown => "link_down",
    ProbesLost => "probes_lost",
    TargetsUnreachable => "targets_unreachable",
    Offline => "offline",
    DuplicateMac => "duplicate_mac",
    NoDatapath => "no_datapath",
    Missing => "missing",
});

/// One line of the interfaces view (ipmpstat -i).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct InterfaceView {
    pub interface: String,
    pub group: String,
    pub active: bool,
    pub flags: Vec<InterfaceFlag>,
    pub link: LinkState,
    pub probe: ProbeStatus,
    /// Probe-based detection per family; `None` for a family the NIC does not probe.
    pub probe_ipv4: Option<ProbeStatus>,
    pub probe_ipv6: Option<ProbeStatus>,
    pub state: InterfaceStatus,
    /// Why it carries no traffic, when it is unusable.
    pub unusable: Option<UnusableReason>,
}

/// One line of the groups view (ipmpstat -g; INTERFACES as `active (inactive) [unusable]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    pub group: String,
    pub state: GroupState,
    pub active: Vec<String>,
    pub inactive: Vec<String>,
    pub unusable: Vec<String>,
}

/// Bad input to the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    #[error("group {group} has no interfaces")]
    EmptyGroup { group: String },
    #[error("interface {nic} is listed twice in group {group}")]
    DuplicateInterface { group: String, nic: String },
    #[error("interfaces {first} and {nic} of group {group} share counter slot {}", slot.0)]
    SharedSlot {
        group: String,
        first: String,
        nic: String,
        slot: NicSlot,
    },
    #[error("group {group} has no interface in counter slot {}", slot.0)]
    UnknownInterface { group: String, slot: NicSlot },
    #[error("interface {nic} of group {group} is not present in the system")]
    NotPresent { group: String, nic: String },
    #[error(
        "interface {nic} of group {group} has no {} test address to probe from",
        family.ip_version()
    )]
    NotProbing {
        group: String,
        nic: String,
        family: AddressFamily,
    },
    #[error(
        "cannot offline {nic}: no other functioning interfaces are in its group {group}, \
         so offlining it would leave the group without a usable interface"
    )]
    LastUsable { group: String, nic: String },
    #[error("interface {nic} of group {group} is already offline")]
    AlreadyOffline { group: String, nic: String },
    #[error("cannot online {nic} of group {group}: it is not offline")]
    NotOffline { group: String, nic: String },
    #[error(
        "cannot online {nic} of group {group}: it is offline for a duplicate hardware \
         address, and comes back by itself once its hardware address is unique in the group"
    )]
    DuplicateMac { group: String, nic: String },
    #[error(
        "cannot online {nic} of group {group}: mpathd's programs are not attached to it, \
         and it comes back by itself once they attach"
    )]
    NoDatapath { group: String, nic: String },
}

/// Probe history of one family on one NIC.
#[derive(Debug, Clone, Copy, Default)]
struct ProbeStats {
    lost: u32,
    answered: u32,
    /// When the current run of losses began (in.mpathd "time first fail").
    first_loss: Option<Instant>,
    /// When the last reply came (in.mpathd "time last success").
    last_answer: Option<Instant>,
    has_targets: bool,
    /// [`Action::FamilyFailed`] was reported and no answer came since.
    failed_alone: bool,
}

impl ProbeStats {
    /// Forget the history but keep what the prober said about targets.
    fn clear(&mut self) {
        *self = ProbeStats {
            has_targets: self.has_targets,
            ..ProbeStats::default()
        };
    }
}

#[derive(Debug, Clone)]
struct Interface {
    slot: NicSlot,
    name: String,
    standby: bool,
    probe: ProbeFamilies,
    state: IfState,
    link: LinkState,
    /// Functioning but held in reserve (IFF_INACTIVE); only meaningful when functioning.
    inactive: bool,
    reclaims_home: bool,
    ipv4: ProbeStats,
    ipv6: ProbeStats,
    quiet_until: Option<Instant>,
    /// The latest link-ups, oldest first, at most [`LINK_UPS_PER_MINUTE`].
    link_ups: VecDeque<Instant>,
    /// A [`Action::RepairDeferred`] was reported for the current flapping episode.
    repair_deferred: bool,
    /// The hardware address while present and reported.
    mac: Option<[u8; 6]>,
    /// mpathd's programs are attached (as last reported; assumed until told otherwise).
    datapath: bool,
}

impl Interface {
    fn new(config: InterfaceConfig) -> Self {
        Interface {
            slot: config.slot,
            name: config.name,
            standby: config.standby,
            probe: config.probe,
            state: IfState::Missing,
            link: LinkState::Unknown,
            inactive: false,
            reclaims_home: true,
            ipv4: ProbeStats::default(),
            ipv6: ProbeStats::default(),
            quiet_until: None,
            link_ups: VecDeque::with_capacity(LINK_UPS_PER_MINUTE),
            repair_deferred: false,
            mac: None,
            datapath: true,
        }
    }

    fn stats(&self, family: AddressFamily) -> &ProbeStats {
        match family {
            AddressFamily::Inet => &self.ipv4,
            AddressFamily::Inet6 => &self.ipv6,
        }
    }

    fn stats_mut(&mut self, family: AddressFamily) -> &mut ProbeStats {
        match family {
            AddressFamily::Inet => &mut self.ipv4,
            AddressFamily::Inet6 => &mut self.ipv6,
        }
    }

    fn clear_probes(&mut self) {
        self.ipv4.clear();
        self.ipv6.clear();
    }

    fn functioning(&self) -> bool {
        self.state == IfState::Ok
    }

    fn active(&self) -> bool {
        self.functioning() && !self.inactive
    }

    fn present(&self) -> bool {
        self.state != IfState::Missing
    }

    fn offline(&self) -> bool {
        matches!(self.state, IfState::Offline { .. })
    }

    /// Back from offline as if new: a non-standby NIC is active and takes its addresses back,
    /// unless detection found it failed meanwhile.
    fn bring_back(&mut self) {
        let IfState::Offline { failure, .. } = self.state else {
            return;
        };
        self.clear_probes();
        match failure {
            Some(cause) => self.state = IfState::Failed { cause },
            None => {
                self.state = IfState::Ok;
                self.inactive = self.standby;
                self.reclaims_home = true;
            }
        }
    }

    fn offline_for(&self, wanted: OfflineReason) -> bool {
        matches!(self.state, IfState::Offline { reason, .. } if reason == wanted)
    }

    /// Taken out of use for `reason`, keeping what detection says underneath.
    fn take_offline(&mut self, reason: OfflineReason) {
        let failure = match self.state {
            IfState::Failed { cause } => Some(cause),
            _ => None,
        };
        self.state = IfState::Offline { failure, reason };
        self.inactive = false;
        self.clear_probes();
    }

    /// Without a test address, only the link tells whether the NIC works.
    fn link_judged(&self) -> bool {
        !self.probe.any()
    }

    fn has_targets(&self) -> bool {
        self.probe
            .iter()
            .any(|family| self.stats(family).has_targets)
    }

    /// Failed with the whole group (every target silent at once) and the last probe in a
    /// family answered: the group is coming back.
    fn recovering(&self) -> bool {
        self.state
            == (IfState::Failed {
                cause: FailureCause::TargetsUnreachable,
            })
            && self.link == LinkState::Up
            && self
                .probe
                .iter()
                .any(|family| self.stats(family).answered > 0)
    }

    /// Every family that has targets lost its last [`NUM_PROBE_FAILS`] probes.
    fn probes_failed(&self) -> bool {
        let mut with_targets = self
            .probe
            .iter()
            .map(|family| self.stats(family))
            .filter(|stats| stats.has_targets)
            .peekable();
        with_targets.peek().is_some() && with_targets.all(|stats| stats.lost >= NUM_PROBE_FAILS)
    }

    /// Some family answered its last [`NUM_PROBE_REPAIRS`] probes.
    fn probes_repaired(&self) -> bool {
        self.probe
            .iter()
            .any(|family| self.stats(family).answered >= NUM_PROBE_REPAIRS)
    }

    /// `family` lost its last [`NUM_PROBE_FAILS`] probes while the other family answered
    /// since: the NIC works in one family only. (Both going silent is a NIC failure, not
    /// this.)
    fn fails_alone(&self, family: AddressFamily) -> bool {
        let stats = self.stats(family);
        let other = self.stats(family.other());
        let answered_since = match (other.last_answer, stats.first_loss) {
            (Some(answer), Some(first_loss)) => answer > first_loss,
            _ => false,
        };
        self.probe.contains(family.other())
            && other.has_targets
            && stats.lost >= NUM_PROBE_FAILS
            && answered_since
    }

    fn first_loss(&self) -> Option<Instant> {
        self.probe
            .iter()
            .filter_map(|family| self.stats(family).first_loss)
            .min()
    }

    fn answered_after(&self, time: Instant) -> bool {
        self.probe
            .iter()
            .filter_map(|family| self.stats(family).last_answer)
            .any(|answer| answer > time)
    }

    fn in_quiet_period(&self, now: Instant) -> bool {
        self.quiet_until.is_some_and(|until| now < until)
    }

    /// More than [`LINK_UPS_PER_MINUTE`] link-ups within [`FLAP_WINDOW`], counting the ring as
    /// it stands (in.mpathd checks before recording a new link-up and again on its timer).
    fn flapping(&self, now: Instant) -> bool {
        self.link_ups.len() == LINK_UPS_PER_MINUTE
            && self
                .link_ups
                .front()
                .is_some_and(|oldest| now.saturating_duration_since(*oldest) < FLAP_WINDOW)
    }

    fn record_link_up(&mut self, now: Instant) {
        if self.link_ups.len() == LINK_UPS_PER_MINUTE {
            self.link_ups.pop_front();
        }
        self.link_ups.push_back(now);
    }

    /// When a damped repair becomes possible.
    fn flap_deadline(&self) -> Option<Instant> {
        if self.link_ups.len() < LINK_UPS_PER_MINUTE {
            return None;
        }
        self.link_ups.front().map(|oldest| *oldest + FLAP_WINDOW)
    }

    fn role(&self) -> Role {
        if self.recovering() {
            Role::Recovering
        } else if !self.functioning() {
            Role::Unusable
        } else if self.inactive {
            Role::Inactive
        } else {
            Role::Active {
                reclaims_home: self.reclaims_home,
            }
        }
    }

    /// What probing in one family says, as the views show it; `None` when the NIC does not
    /// probe in that family.
    fn family_probe(&self, family: AddressFamily) -> Option<ProbeStatus> {
        if !self.probe.contains(family) {
            return None;
        }
        let stats = self.stats(family);
        let detecting = matches!(self.state, IfState::Ok | IfState::Failed { .. });
        // A failed NIC's family is ok only once it answers again: a NIC found failed at a
        // restart or reload has no losses counted yet, which says nothing.
        let failed = matches!(self.state, IfState::Failed { .. });
        Some(
            if !detecting || self.link != LinkState::Up || !stats.has_targets {
                ProbeStatus::Unknown
            } else if stats.lost >= NUM_PROBE_FAILS {
                ProbeStatus::Failed
            } else if failed && stats.answered == 0 {
                ProbeStatus::Unknown
            } else {
                ProbeStatus::Ok
            },
        )
    }

    fn status(&self) -> InterfaceStatus {
        match self.state {
            IfState::Missing => InterfaceStatus::Missing,
            IfState::Offline { .. } => InterfaceStatus::Offline,
            IfState::Failed { .. } => InterfaceStatus::Failed,
            IfState::Ok if !self.link_judged() && !self.has_targets() => InterfaceStatus::Unknown,
            IfState::Ok => InterfaceStatus::Ok,
        }
    }

    fn view(&self, group: &str) -> InterfaceView {
        let mut flags = Vec::new();
        if self.standby {
            flags.push(InterfaceFlag::Standby);
        }
        if self.functioning() && self.inactive {
            flags.push(InterfaceFlag::Inactive);
        }
        if matches!(
            self.state,
            IfState::Failed { .. }
                | IfState::Offline {
                    failure: Some(_),
                    ..
                }
        ) {
            flags.push(InterfaceFlag::Failed);
        }
        if self.offline() {
            flags.push(InterfaceFlag::Offline);
        }
        if self.offline_for(OfflineReason::DuplicateMac) {
            flags.push(InterfaceFlag::DuplicateMac);
        }
        if self.offline_for(OfflineReason::NoDatapath) {
            flags.push(InterfaceFlag::NoDatapath);
        }
        let probe = if self.link_judged() {
            ProbeStatus::Disabled
        } else if self.link != LinkState::Up {
            ProbeStatus::Unknown
        } else {
            match self.state {
                IfState::Missing | IfState::Offline { .. } => ProbeStatus::Unknown,
                IfState::Failed { .. } => ProbeStatus::Failed,
                IfState::Ok if self.has_targets() => ProbeStatus::Ok,
                IfState::Ok => ProbeStatus::Unknown,
            }
        };
        let state = self.status();
        let unusable = match self.state {
            IfState::Ok => None,
            IfState::Missing => Some(UnusableReason::Missing),
            IfState::Failed { cause } => Some(match cause {
                FailureCause::LinkDown => UnusableReason::LinkDown,
                FailureCause::ProbesLost => UnusableReason::ProbesLost,
                FailureCause::TargetsUnreachable => UnusableReason::TargetsUnreachable,
            }),
            IfState::Offline { reason, .. } => Some(match reason {
                OfflineReason::Admin => UnusableReason::Offline,
                OfflineReason::DuplicateMac => UnusableReason::DuplicateMac,
                OfflineReason::NoDatapath => UnusableReason::NoDatapath,
            }),
        };
        InterfaceView {
            interface: self.name.clone(),
            group: group.to_owned(),
            active: self.active(),
            flags,
            link: self.link,
            probe,
            probe_ipv4: self.family_probe(AddressFamily::Inet),
            probe_ipv6: self.family_probe(AddressFamily::Inet6),
            state,
            unusable,
        }
    }
}

/// The state machines of one IPMP group and its members.
#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    policy: Policy,
    members: Vec<Interface>,
    /// "All Interfaces ... have failed" was reported and not yet followed by a repair.
    failure_reported: bool,
}

impl Group {
    /// A group whose members are all [`IfState::Missing`] until an [`Event::Snapshot`] or
    /// [`Event::Appeared`] says otherwise. Member order is configuration order; it breaks ties.
    pub fn new(
        name: impl Into<String>,
        policy: Policy,
        interfaces: Vec<InterfaceConfig>,
    ) -> Result<Self, StateError> {
        let name = name.into();
        if interfaces.is_empty() {
            return Err(StateError::EmptyGroup { group: name });
        }
        for (index, config) in interfaces.iter().enumerate() {
            let earlier = &interfaces[..index];
            if earlier.iter().any(|c| c.name == config.name) {
                return Err(StateError::DuplicateInterface {
                    group: name,
                    nic: config.name.clone(),
                });
            }
            if let Some(first) = earlier.iter().find(|c| c.slot == config.slot) {
                return Err(StateError::SharedSlot {
                    group: name,
                    first: first.name.clone(),
                    nic: config.name.clone(),
                    slot: config.slot,
                });
            }
        }
        Ok(Group {
            name,
            policy,
            members: interfaces.into_iter().map(Interface::new).collect(),
            failure_reported: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the member in `slot`, for what users see.
    pub(crate) fn nic_name(&self, slot: NicSlot) -> &str {
        self.members
            .iter()
            .find(|m| m.slot == slot)
            .map_or("", |m| m.name.as_str())
    }

    /// Apply one event that happened at `now`. On error nothing has changed.
    pub fn handle(&mut self, event: Event, now: Instant) -> Result<Vec<Action>, StateError> {
        let roles_before = self.nic_roles();
        // A MAC says nothing of whether the group works, and the daemon gives the MACs (and
        // the programs' attach results) before the NICs' presence: judged then, every group
        // would be reported failed at every start. The programs of a present NIC do count.
        let judge_group = match &event {
            Event::HardwareAddress { .. } => false,
            Event::Datapath { nic, .. } => {
                self.members.iter().any(|m| m.slot == *nic && m.present())
            }
            _ => true,
        };
        let mut actions = Vec::new();
        match event {
            Event::Snapshot { present } => {
                for (nic, _) in &present {
                    self.find(*nic)?;
                }
                for index in 0..self.members.len() {
                    let reported = present
                        .iter()
                        .find(|(nic, _)| *nic == self.members[index].slot);
                    match reported {
                        Some((_, link_up)) => self.appear(index, *link_up, now, &mut actions),
                        None => self.disappear(index, &mut actions),
                    }
                }
            }
            Event::Appeared { nic, link_up } => {
                let index = self.find(nic)?;
                self.appear(index, link_up, now, &mut actions);
            }
            Event::Disappeared { nic } => {
                let index = self.find(nic)?;
                self.disappear(index, &mut actions);
            }
            Event::Link { nic, up } => {
                let index = self.find_present(nic)?;
                self.link_change(index, up, now, &mut actions);
            }
            Event::Probe {
                nic,
                family,
                outcome,
            } => {
                let index = self.find_prober(nic, family)?;
                self.probe(index, family, outcome, now, &mut actions);
            }
            Event::Targets {
                nic,
                family,
                available,
            } => {
                let index = self.find_prober(nic, family)?;
                let member = &mut self.members[index];
                let stats = member.stats_mut(family);
                if available {
                    stats.has_targets = true;
                } else {
                    *stats = ProbeStats::default();
                }
                self.check_probe_failure(index, now, &mut actions);
            }
            Event::HardwareAddress { nic, mac } => {
                let index = self.find(nic)?;
                self.members[index].mac = Some(mac);
            }
            Event::Offline { nic } => {
                let index = self.find(nic)?;
                self.offline(index, &mut actions)?;
            }
            Event::Online { nic } => {
                let index = self.find(nic)?;
                self.online(index, &mut actions)?;
            }
            Event::Adopt { nic } => {
                let index = self.find_present(nic)?;
                let member = &self.members[index];
                if member.state == IfState::Ok && !member.link_judged() {
                    let nic = self.set_failed(index, FailureCause::ProbesLost);
                    actions.push(Action::StillFailed { nic });
                }
            }
            Event::Datapath { nic, attached } => {
                let index = self.find(nic)?;
                self.members[index].datapath = attached;
            }
            Event::Tick => self.tick(now, &mut actions),
        }
        self.refresh_offline(&mut actions);
        self.refresh_activity(&mut actions);
        if judge_group {
            self.refresh_group_state(&mut actions);
        }
        if self.nic_roles() != roles_before {
            actions.push(Action::UsableSetChanged);
        }
        Ok(actions)
    }

    /// When the daemon should send [`Event::Tick`]: a damped repair or the end of a quiet
    /// period that holds back a failure is due. `None` when nothing is pending.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(|member| match member.state {
                IfState::Failed { .. }
                | IfState::Offline {
                    failure: Some(_), ..
                } if member.link_judged() && member.link == LinkState::Up => member.flap_deadline(),
                IfState::Ok if member.probes_failed() => member.quiet_until,
                _ => None,
            })
            .min()
    }

    pub fn state(&self) -> GroupState {
        let functioning = self.members.iter().filter(|m| m.functioning()).count();
        if functioning == 0 {
            GroupState::Failed
        } else if functioning == self.members.len() {
            GroupState::Ok
        } else {
            GroupState::Degraded
        }
    }

    /// The NICs that carry traffic (not failed, offline, missing or inactive), in
    /// configuration order: the contents of the bucket table.
    pub(crate) fn usable_interfaces(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| m.active())
            .map(|m| m.name.as_str())
            .collect()
    }

    /// The slots of [`Group::usable_interfaces`].
    pub(crate) fn usable_slots(&self) -> impl Iterator<Item = NicSlot> {
        self.members.iter().filter(|m| m.active()).map(|m| m.slot)
    }

    /// Every member with its [`Role`], in configuration order: the input of
    /// [`crate::core::failover::plan`].
    pub(crate) fn nic_roles(&self) -> Vec<NicRole> {
        self.members
            .iter()
            .map(|m| NicRole {
                slot: m.slot,
                name: m.name.clone(),
                standby: m.standby,
                role: m.role(),
            })
            .collect()
    }

    pub(crate) fn interface_state(&self, nic: NicSlot) -> Option<IfState> {
        self.members.iter().find(|m| m.slot == nic).map(|m| m.state)
    }

    /// Feeds the group's state and each member's [`InterfaceStatus`] to `hasher`, without
    /// building views: cheap enough for every turn of the event loop, which tells systemd
    /// the summary of these (STATUS=) as soon as it changes.
    pub(crate) fn hash_states(&self, hasher: &mut impl std::hash::Hasher) {
        use std::hash::Hash as _;
        self.name.hash(hasher);
        self.state().hash(hasher);
        for member in &self.members {
            member.name.hash(hasher);
            member.status().hash(hasher);
        }
    }

    pub(crate) fn interface_views(&self) -> Vec<InterfaceView> {
        self.members.iter().map(|m| m.view(&self.name)).collect()
    }

    pub fn view(&self) -> GroupView {
        let names = |keep: fn(&Interface) -> bool| {
            self.members
                .iter()
                .filter(|m| keep(m))
                .map(|m| m.name.clone())
                .collect()
        };
        GroupView {
            group: self.name.clone(),
            state: self.state(),
            active: names(|m| m.active()),
            inactive: names(|m| m.functioning() && m.inactive),
            unusable: names(|m| !m.functioning()),
        }
    }

    fn find(&self, nic: NicSlot) -> Result<usize, StateError> {
        self.members
            .iter()
            .position(|m| m.slot == nic)
            .ok_or_else(|| StateError::UnknownInterface {
                group: self.name.clone(),
                slot: nic,
            })
    }

    fn find_present(&self, nic: NicSlot) -> Result<usize, StateError> {
        let index = self.find(nic)?;
        if !self.members[index].present() {
            return Err(StateError::NotPresent {
                group: self.name.clone(),
                nic: self.members[index].name.clone(),
            });
        }
        Ok(index)
    }

    fn find_prober(&self, nic: NicSlot, family: AddressFamily) -> Result<usize, StateError> {
        let index = self.find(nic)?;
        if !self.members[index].probe.contains(family) {
            return Err(StateError::NotProbing {
                group: self.name.clone(),
                nic: self.members[index].name.clone(),
                family,
            });
        }
        Ok(index)
    }

    fn appear(&mut self, index: usize, link_up: bool, now: Instant, actions: &mut Vec<Action>) {
        if self.members[index].present() {
            self.link_change(index, link_up, now, actions);
            return;
        }
        let quiet = self.policy.startup_quiet;
        let member = &mut self.members[index];
        member.ipv4 = ProbeStats::default();
        member.ipv6 = ProbeStats::default();
        member.quiet_until = (!member.link_judged() && !quiet.is_zero()).then(|| now + quiet);
        member.inactive = member.standby;
        member.reclaims_home = true;
        member.repair_deferred = false;
        actions.push(Action::Appeared { nic: member.slot });
        if link_up {
            member.link = LinkState::Up;
            member.state = IfState::Ok;
        } else {
            member.link = LinkState::Down;
            self.fail(index, FailureCause::LinkDown, actions);
        }
    }

    fn disappear(&mut self, index: usize, actions: &mut Vec<Action>) {
        let member = &mut self.members[index];
        if !member.present() {
            return;
        }
        member.state = IfState::Missing;
        member.link = LinkState::Unknown;
        member.inactive = false;
        member.quiet_until = None;
        member.mac = None;
        member.clear_probes();
        actions.push(Action::Disappeared { nic: member.slot });
    }

    fn link_change(&mut self, index: usize, up: bool, now: Instant, actions: &mut Vec<Action>) {
        let member = &mut self.members[index];
        let link = if up { LinkState::Up } else { LinkState::Down };
        if member.link == link {
            return;
        }
        member.link = link;
        let nic = member.slot;
        if !up {
            // in.mpathd clears the probe history: replies from before the link went down
            // must not count towards a repair.
            member.clear_probes();
            actions.push(Action::LinkDown { nic });
            match member.state {
                IfState::Ok => self.fail(index, FailureCause::LinkDown, actions),
                IfState::Offline {
                    failure: None,
                    reason,
                } => {
                    member.state = IfState::Offline {
                        failure: Some(FailureCause::LinkDown),
                        reason,
                    };
                }
                IfState::Missing | IfState::Failed { .. } | IfState::Offline { .. } => {}
            }
            return;
        }
        actions.push(Action::LinkUp { nic });
        let flapping = member.flapping(now);
        member.record_link_up(now);
        match member.state {
            IfState::Failed { .. } => self.consider_repair(index, flapping, actions),
            IfState::Offline {
                failure: Some(_),
                reason,
            } if member.link_judged() && !flapping => {
                member.state = IfState::Offline {
                    failure: None,
                    reason,
                };
            }
            IfState::Missing | IfState::Ok | IfState::Offline { .. } => {}
        }
    }

    fn probe(
        &mut self,
        index: usize,
        family: AddressFamily,
        outcome: ProbeOutcome,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let member = &mut self.members[index];
        let detecting = matches!(member.state, IfState::Ok | IfState::Failed { .. });
        if !detecting || member.link != LinkState::Up {
            return;
        }
        let stats = member.stats_mut(family);
        stats.has_targets = true;
        match outcome {
            ProbeOutcome::Answered { .. } => {
                stats.answered += 1;
                stats.lost = 0;
                stats.first_loss = None;
                stats.last_answer = Some(now);
                if std::mem::take(&mut stats.failed_alone) {
                    actions.push(Action::FamilyRepaired {
                        nic: member.slot,
                        family,
                    });
                }
                member.quiet_until = None;
                if matches!(member.state, IfState::Failed { .. }) {
                    self.consider_repair(index, false, actions);
                }
            }
            ProbeOutcome::Lost { .. } => {
                stats.lost += 1;
                stats.answered = 0;
                stats.first_loss.get_or_insert(now);
                self.check_probe_failure(index, now, actions);
                let member = &mut self.members[index];
                let failed_alone = member.functioning() && member.fails_alone(family);
                let stats = member.stats_mut(family);
                if failed_alone && !stats.failed_alone {
                    stats.failed_alone = true;
                    actions.push(Action::FamilyFailed {
                        nic: member.slot,
                        family,
                    });
                }
            }
        }
    }

    /// Decide between NIC failure and group (target) failure once a NIC's probes have failed.
    fn check_probe_failure(&mut self, index: usize, now: Instant, actions: &mut Vec<Action>) {
        let member = &self.members[index];
        if !member.functioning() || member.in_quiet_period(now) || !member.probes_failed() {
            return;
        }
        let Some(first_loss) = member.first_loss() else {
            return;
        };
        let another_works = self.members.iter().enumerate().any(|(other, m)| {
            other != index
                && m.functioning()
                && m.link == LinkState::Up
                && (m.link_judged() || m.answered_after(first_loss))
        });
        if another_works {
            self.fail(index, FailureCause::ProbesLost, actions);
            return;
        }
        for other in 0..self.members.len() {
            if self.members[other].functioning() {
                self.fail(other, FailureCause::TargetsUnreachable, actions);
            }
        }
        let nics = self
            .members
            .iter()
            .filter(|m| m.present() && !m.offline() && !m.link_judged())
            .map(|m| m.slot)
            .collect();
        actions.push(Action::FlushTargets { nics });
    }

    fn consider_repair(&mut self, index: usize, flapping: bool, actions: &mut Vec<Action>) {
        let member = &mut self.members[index];
        if member.link != LinkState::Up {
            return;
        }
        let ready = if member.link_judged() {
            !flapping
        } else {
            member.probes_repaired()
        };
        if ready {
            self.repair(index, actions);
        } else if member.link_judged() && !member.repair_deferred {
            member.repair_deferred = true;
            if let Some(until) = member.flap_deadline() {
                actions.push(Action::RepairDeferred {
                    nic: member.slot,
                    until,
                });
            }
        }
    }

    fn fail(&mut self, index: usize, cause: FailureCause, actions: &mut Vec<Action>) {
        let nic = self.set_failed(index, cause);
        actions.push(Action::Failed { nic, cause });
    }

    /// Puts a member in the failed state; returns its slot.
    fn set_failed(&mut self, index: usize, cause: FailureCause) -> NicSlot {
        let member = &mut self.members[index];
        member.state = IfState::Failed { cause };
        member.inactive = false;
        member.slot
    }

    fn repair(&mut self, index: usize, actions: &mut Vec<Action>) {
        let failback = self.policy.failback;
        let member = &mut self.members[index];
        member.state = IfState::Ok;
        member.repair_deferred = false;
        // Tentative: refresh_activity activates it if the group is short of active NICs.
        member.inactive = member.standby || !failback;
        member.reclaims_home = failback;
        actions.push(Action::Repaired { nic: member.slot });
    }

    fn offline(&mut self, index: usize, actions: &mut Vec<Action>) -> Result<(), StateError> {
        let group = self.name.clone();
        let nic = self.members[index].name.clone();
        match self.members[index].state {
            IfState::Missing => return Err(StateError::NotPresent { group, nic }),
            // Out of use already: the operator's offline takes over, and outlasts the
            // duplicate or the missing programs until an online.
            IfState::Offline {
                failure,
                reason: OfflineReason::DuplicateMac | OfflineReason::NoDatapath,
            } => {
                self.members[index].state = IfState::Offline {
                    failure,
                    reason: OfflineReason::Admin,
                };
                actions.push(Action::Offlined {
                    nic: self.members[index].slot,
                });
                return Ok(());
            }
            IfState::Offline { .. } => return Err(StateError::AlreadyOffline { group, nic }),
            IfState::Ok | IfState::Failed { .. } => {}
        }
        let group_failed = self.state() == GroupState::Failed;
        let others_usable = self.members.iter().enumerate().any(|(other, m)| {
            other != index && (m.functioning() || (group_failed && m.present() && !m.offline()))
        });
        if !others_usable {
            return Err(StateError::LastUsable { group, nic });
        }
        let member = &mut self.members[index];
        let failure = match member.state {
            IfState::Failed { cause } => Some(cause),
            _ => None,
        };
        member.state = IfState::Offline {
            failure,
            reason: OfflineReason::Admin,
        };
        member.inactive = false;
        member.clear_probes();
        actions.push(Action::Offlined { nic: member.slot });
        Ok(())
    }

    fn online(&mut self, index: usize, actions: &mut Vec<Action>) -> Result<(), StateError> {
        let member = &mut self.members[index];
        let group = self.name.clone();
        let nic = member.name.clone();
        match member.state {
            IfState::Offline {
                reason: OfflineReason::Admin,
                ..
            } => {}
            IfState::Offline {
                reason: OfflineReason::DuplicateMac,
                ..
            } => return Err(StateError::DuplicateMac { group, nic }),
            IfState::Offline {
                reason: OfflineReason::NoDatapath,
                ..
            } => return Err(StateError::NoDatapath { group, nic }),
            _ => return Err(StateError::NotOffline { group, nic }),
        }
        member.bring_back();
        actions.push(Action::Onlined { nic: member.slot });
        Ok(())
    }

    /// The offline reasons that come and go by themselves, applied after every event. The
    /// programs are judged before and after the MACs: a NIC whose MAC became unique or whose
    /// programs attached is brought back by one rule and may be taken again by the other at
    /// once, never carrying traffic in between.
    fn refresh_offline(&mut self, actions: &mut Vec<Action>) {
        self.refresh_datapath(actions);
        self.refresh_duplicates(actions);
        self.refresh_datapath(actions);
    }

    /// Takes members without mpathd's programs offline, and brings back those that have
    /// them again.
    fn refresh_datapath(&mut self, actions: &mut Vec<Action>) {
        for member in &mut self.members {
            let nic = member.slot;
            match member.state {
                IfState::Ok | IfState::Failed { .. } if !member.datapath => {
                    member.take_offline(OfflineReason::NoDatapath);
                    actions.push(Action::DatapathLost { nic });
                }
                IfState::Offline {
                    reason: OfflineReason::NoDatapath,
                    ..
                } if member.datapath => {
                    member.bring_back();
                    actions.push(Action::DatapathAttached { nic });
                }
                _ => {}
            }
        }
    }

    /// Takes members whose hardware address an earlier present member has offline, and
    /// brings back those whose address is unique again.
    fn refresh_duplicates(&mut self, actions: &mut Vec<Action>) {
        for index in 0..self.members.len() {
            let member = &self.members[index];
            let original = member.mac.filter(|mac| *mac != [0; 6]).and_then(|mac| {
                self.members[..index]
                    .iter()
                    .find(|m| m.present() && m.mac == Some(mac))
                    .map(|m| (m.slot, mac))
            });
            let member = &mut self.members[index];
            match (member.state, original) {
                (IfState::Ok | IfState::Failed { .. }, Some((of, mac))) => {
                    member.take_offline(OfflineReason::DuplicateMac);
                    actions.push(Action::DuplicateMac {
                        nic: member.slot,
                        of,
                        mac,
                    });
                }
                (
                    IfState::Offline {
                        reason: OfflineReason::DuplicateMac,
                        ..
                    },
                    None,
                ) => {
                    member.bring_back();
                    actions.push(Action::MacUnique { nic: member.slot });
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for index in 0..self.members.len() {
            let member = &mut self.members[index];
            let link_repairable = member.link_judged() && member.link == LinkState::Up;
            match member.state {
                IfState::Failed { .. } if link_repairable => {
                    let flapping = member.flapping(now);
                    self.consider_repair(index, flapping, actions);
                }
                IfState::Offline {
                    failure: Some(_),
                    reason,
                } if link_repairable && !member.flapping(now) => {
                    member.state = IfState::Offline {
                        failure: None,
                        reason,
                    };
                }
                IfState::Ok => self.check_probe_failure(index, now, actions),
                IfState::Missing | IfState::Failed { .. } | IfState::Offline { .. } => {}
            }
        }
    }

    /// Keep as many active NICs as there are non-standby members (at least one): activate
    /// inactive functioning NICs (standbys first) when short, deactivate standbys when over.
    fn refresh_activity(&mut self, actions: &mut Vec<Action>) {
        for member in &mut self.members {
            if !member.functioning() {
                member.inactive = false;
            }
        }
        let wanted = self.members.iter().filter(|m| !m.standby).count().max(1);
        let mut active = self.members.iter().filter(|m| m.active()).count();
        while active < wanted {
            let candidate = self
                .members
                .iter()
                .position(|m| m.functioning() && m.inactive && m.standby)
                .or_else(|| {
                    self.members
                        .iter()
                        .position(|m| m.functioning() && m.inactive)
                });
            let Some(index) = candidate else { break };
            self.members[index].inactive = false;
            actions.push(Action::Activate {
                nic: self.members[index].slot,
            });
            active += 1;
        }
        while active > wanted {
            let Some(index) = self.members.iter().rposition(|m| m.active() && m.standby) else {
                break;
            };
            self.members[index].inactive = true;
            actions.push(Action::Deactivate {
                nic: self.members[index].slot,
            });
            active -= 1;
        }
    }

    fn refresh_group_state(&mut self, actions: &mut Vec<Action>) {
        let failed = self.state() == GroupState::Failed;
        if failed && !self.failure_reported {
            self.failure_reported = true;
            actions.push(Action::GroupFailed);
        } else if !failed && self.failure_reported {
            self.failure_reported = false;
            if let Some(first) = self.members.iter().find(|m| m.functioning()) {
                actions.push(Action::GroupRepaired { nic: first.slot });
            }
        }
    }
}

/// Probe outcomes for tests of the state machine and of what it drives: which target
/// answered and how fast do not matter to it.
#[cfg(test)]
pub(crate) mod test_outcomes {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use crate::core::probe::ProbeOutcome;

    const TARGET: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    pub(crate) const ANSWERED: ProbeOutcome = ProbeOutcome::Answered {
        target: TARGET,
        rtt: Duration::from_millis(1),
    };
    pub(crate) const LOST: ProbeOutcome = ProbeOutcome::Lost {
        target: TARGET,
        seq: 0,
    };
}

#[cfg(test)]
mod tests {
    use super::test_outcomes::{ANSWERED, LOST};
    use super::*;
    use crate::core::identity::test_slot as slot;

    /// in.mpathd's probe interval at the default FDT of 10 s: FDT / (NUM_PROBE_FAILS + 2).
    const PROBE_INTERVAL: Duration = Duration::from_millis(1428);

    fn nic(name: &str, standby: bool, probe: ProbeFamilies) -> InterfaceConfig {
        InterfaceConfig {
            slot: slot(name),
            name: name.to_owned(),
            standby,
            probe,
        }
    }

    fn policy(failback: bool) -> Policy {
        Policy {
            failback,
            startup_quiet: Duration::ZERO,
        }
    }

    /// A group driven with injected time; the clock is read once, as an anchor.
    struct Sim {
        group: Group,
        now: Instant,
    }

    impl Sim {
        /// All members present with their link up.
        fn new(policy: Policy, members: Vec<InterfaceConfig>) -> Sim {
            let present = members.iter().map(|m| (m.slot, true)).collect();
            let mut sim = Sim {
                group: Group::new("g0", policy, members).unwrap(),
                now: Instant::now(),
            };
            sim.send(Event::Snapshot { present });
            sim
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        fn send(&mut self, event: Event) -> Vec<Action> {
            self.group.handle(event, self.now).unwrap()
        }

        fn try_send(&mut self, event: Event) -> Result<Vec<Action>, StateError> {
            self.group.handle(event, self.now)
        }

        fn link(&mut self, name: &str, up: bool) -> Vec<Action> {
            self.send(Event::Link {
                nic: slot(name),
                up,
            })
        }

        /// One probe interval passes and each listed NIC reports one IPv4 probe.
        fn round(&mut self, outcomes: &[(&str, ProbeOutcome)]) -> Vec<Action> {
            self.advance(PROBE_INTERVAL);
            let mut actions = Vec::new();
            for (name, outcome) in outcomes {
                actions.extend(self.send(Event::Probe {
                    nic: slot(name),
                    family: AddressFamily::Inet,
                    outcome: *outcome,
                }));
            }
            actions
        }

        fn rounds(&mut self, count: usize, outcomes: &[(&str, ProbeOutcome)]) -> Vec<Action> {
            (0..count).flat_map(|_| self.round(outcomes)).collect()
        }

        fn tick(&mut self) -> Vec<Action> {
            self.send(Event::Tick)
        }

        fn state(&self, name: &str) -> IfState {
            self.group.interface_state(slot(name)).unwrap()
        }

        fn view(&self, name: &str) -> InterfaceView {
            self.group
                .interface_views()
                .into_iter()
                .find(|v| v.interface == name)
                .unwrap()
        }
    }

    fn failed(cause: FailureCause) -> IfState {
        IfState::Failed { cause }
    }

    fn act(kind: fn(NicSlot) -> Action, name: &str) -> Action {
        kind(slot(name))
    }

    fn repaired(nic: NicSlot) -> Action {
        Action::Repaired { nic }
    }

    fn activate(nic: NicSlot) -> Action {
        Action::Activate { nic }
    }

    fn deactivate(nic: NicSlot) -> Action {
        Action::Deactivate { nic }
    }

    fn count(actions: &[Action], wanted: &Action) -> usize {
        actions.iter().filter(|a| *a == wanted).count()
    }

    fn two_link_only() -> Sim {
        Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::NONE),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        )
    }

    fn two_probing(failback: bool) -> Sim {
        Sim::new(
            policy(failback),
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::IPV4),
            ],
        )
    }

    fn active_active_standby(failback: bool) -> Sim {
        Sim::new(
            policy(failback),
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::IPV4),
                nic("h2", true, ProbeFamilies::IPV4),
            ],
        )
    }

    /// h0 loses five probes while h1 keeps answering: a NIC failure of h0.
    fn fail_h0_by_probes(sim: &mut Sim) -> Vec<Action> {
        sim.rounds(NUM_PROBE_FAILS as usize, &[("h1", ANSWERED), ("h0", LOST)])
    }

    #[test]
    fn startup_snapshot_brings_members_up_without_noise() {
        let sim = active_active_standby(true);
        assert_eq!(sim.group.state(), GroupState::Ok);
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
        assert_eq!(sim.state("h2"), IfState::Ok);
        assert_eq!(
            sim.view("h2").flags,
            [InterfaceFlag::Standby, InterfaceFlag::Inactive]
        );
        assert_eq!(sim.group.next_wakeup(), None);
    }

    #[test]
    fn link_down_fails_a_nic_at_once() {
        let mut sim = two_link_only();
        let actions = sim.link("h0", false);
        assert_eq!(
            actions,
            [
                Action::LinkDown { nic: slot("h0") },
                Action::Failed {
                    nic: slot("h0"),
                    cause: FailureCause::LinkDown
                },
                Action::UsableSetChanged,
            ]
        );
        assert_eq!(sim.state("h0"), failed(FailureCause::LinkDown));
        assert_eq!(sim.group.state(), GroupState::Degraded);
        assert_eq!(sim.group.usable_interfaces(), ["h1"]);
        assert_eq!(
            actions[1].log_line(&sim.group).unwrap(),
            "NIC failure detected on h0 of group g0"
        );
        assert_eq!(
            actions[0].log_line(&sim.group).unwrap(),
            "The link has gone down on h0"
        );
    }

    #[test]
    fn repeated_link_reports_change_nothing() {
        let mut sim = two_link_only();
        assert!(sim.link("h0", true).is_empty());
        sim.link("h0", false);
        assert!(sim.link("h0", false).is_empty());
        assert!(
            sim.send(Event::Appeared {
                nic: slot("h0"),
                link_up: false
            })
            .is_empty()
        );
    }

    #[test]
    fn link_only_nic_is_repaired_when_its_link_returns() {
        let mut sim = two_link_only();
        sim.link("h0", false);
        sim.advance(Duration::from_secs(5));
        let actions = sim.link("h0", true);
        assert_eq!(count(&actions, &act(repaired, "h0")), 1);
        assert_eq!(sim.state("h0"), IfState::Ok);
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
        assert!(actions.contains(&Action::UsableSetChanged));
        assert_eq!(
            actions
                .iter()
                .find(|a| matches!(a, Action::Repaired { .. }))
                .and_then(|a| a.log_line(&sim.group))
                .unwrap(),
            "NIC repair detected on h0 of group g0"
        );
    }

    #[test]
    fn four_lost_probes_do_not_fail_a_nic_five_do() {
        let mut sim = two_probing(true);
        let actions = sim.rounds(4, &[("h1", ANSWERED), ("h0", LOST)]);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(sim.state("h0"), IfState::Ok);
        let actions = sim.round(&[("h1", ANSWERED), ("h0", LOST)]);
        assert_eq!(
            actions,
            [
                Action::Failed {
                    nic: slot("h0"),
                    cause: FailureCause::ProbesLost
                },
                Action::UsableSetChanged
            ]
        );
        assert_eq!(sim.group.usable_interfaces(), ["h1"]);
        assert_eq!(sim.view("h0").probe, ProbeStatus::Failed);
    }

    #[test]
    fn a_reply_restarts_the_count_of_losses() {
        let mut sim = two_probing(true);
        sim.rounds(4, &[("h1", ANSWERED), ("h0", LOST)]);
        sim.round(&[("h1", ANSWERED), ("h0", ANSWERED)]);
        sim.rounds(4, &[("h1", ANSWERED), ("h0", LOST)]);
        assert_eq!(sim.state("h0"), IfState::Ok);
    }

    #[test]
    fn nine_answers_do_not_repair_a_nic_ten_do() {
        let mut sim = two_probing(true);
        fail_h0_by_probes(&mut sim);
        let actions = sim.rounds(9, &[("h1", ANSWERED), ("h0", ANSWERED)]);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(sim.state("h0"), failed(FailureCause::ProbesLost));
        let actions = sim.round(&[("h1", ANSWERED), ("h0", ANSWERED)]);
        assert_eq!(actions, [act(repaired, "h0"), Action::UsableSetChanged]);
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
    }

    #[test]
    fn a_loss_during_repair_restarts_the_count_of_replies() {
        let mut sim = two_probing(true);
        fail_h0_by_probes(&mut sim);
        sim.rounds(9, &[("h0", ANSWERED)]);
        sim.round(&[("h0", LOST)]);
        sim.rounds(9, &[("h0", ANSWERED)]);
        assert_eq!(sim.state("h0"), failed(FailureCause::ProbesLost));
        sim.round(&[("h0", ANSWERED)]);
        assert_eq!(sim.state("h0"), IfState::Ok);
    }

    #[test]
    fn repair_needs_the_link_running() {
        let mut sim = two_probing(true);
        fail_h0_by_probes(&mut sim);
        // Replies before the link went down do not count towards the repair.
        sim.rounds(5, &[("h0", ANSWERED)]);
        sim.link("h0", false);
        // Nor do replies reported while it is down.
        let actions = sim.rounds(10, &[("h0", ANSWERED)]);
        assert!(actions.is_empty(), "{actions:?}");
        let actions = sim.link("h0", true);
        assert_eq!(actions, [Action::LinkUp { nic: slot("h0") }]);
        sim.rounds(9, &[("h0", ANSWERED)]);
        assert_eq!(sim.state("h0"), failed(FailureCause::ProbesLost));
        sim.round(&[("h0", ANSWERED)]);
        assert_eq!(sim.state("h0"), IfState::Ok);
    }

    #[test]
    fn probing_nic_failed_by_its_link_needs_ten_replies_after_the_link_returns() {
        let mut sim = two_probing(true);
        sim.link("h0", false);
        sim.advance(Duration::from_secs(1));
        sim.link("h0", true);
        assert_eq!(sim.state("h0"), failed(FailureCause::LinkDown));
        sim.rounds(9, &[("h0", ANSWERED)]);
        assert_eq!(sim.state("h0"), failed(FailureCause::LinkDown));
        sim.round(&[("h0", ANSWERED)]);
        assert_eq!(sim.state("h0"), IfState::Ok);
    }

    #[test]
    fn within_the_startup_quiet_period_a_probing_nic_whose_link_returned_needs_ten_replies() {
        for probe in [ProbeFamilies::IPV4, ProbeFamilies::BOTH] {
            let policy = Policy {
                failback: true,
                startup_quiet: STARTUP_QUIET_PERIOD,
            };
            let mut sim = Sim::new(
                policy,
                vec![nic("h0", false, probe), nic("h1", false, probe)],
            );
            sim.rounds(3, &[("h0", ANSWERED), ("h1", ANSWERED)]);
            sim.link("h0", false);
            sim.advance(Duration::from_millis(500));
            sim.link("h0", true);
            sim.tick();
            sim.rounds(2, &[("h0", ANSWERED), ("h1", ANSWERED)]);
            sim.tick();
            assert_eq!(sim.state("h0"), failed(FailureCause::LinkDown), "{probe:?}");
            sim.rounds(8, &[("h0", ANSWERED), ("h1", ANSWERED)]);
            assert_eq!(sim.state("h0"), IfState::Ok, "{probe:?}");
        }
    }

    #[test]
    fn flapping_link_is_not_repaired_until_stable() {
        let mut sim = two_link_only();
        let mut actions = Vec::new();
        let mut ups = Vec::new();
        // 20 flaps within 40 s.
        for _ in 0..20 {
            sim.advance(Duration::from_secs(1));
            actions.extend(sim.link("h0", false));
            sim.advance(Duration::from_secs(1));
            ups.push(sim.now);
            actions.extend(sim.link("h0", true));
        }
        // The first two link-ups of the minute repair it, later ones do not.
        assert_eq!(count(&actions, &act(repaired, "h0")), LINK_UPS_PER_MINUTE);
        let deferrals: Vec<_> = actions
            .iter()
            .filter(|a| matches!(a, Action::RepairDeferred { .. }))
            .collect();
        assert_eq!(deferrals.len(), 1, "reported once per episode");
        assert_eq!(
            deferrals[0].log_line(&sim.group).unwrap(),
            "The link has come up on h0 more than 2 times in the last minute; disabling repair \
             until it stabilizes"
        );
        assert!(matches!(sim.state("h0"), IfState::Failed { .. }));
        // The link now stays up: repair a minute after the link-up before the latest one.
        let due = ups[ups.len() - 2] + FLAP_WINDOW;
        assert_eq!(sim.group.next_wakeup(), Some(due));
        sim.now = due - Duration::from_millis(1);
        assert!(sim.tick().is_empty());
        sim.now = due;
        let actions = sim.tick();
        assert_eq!(actions, [act(repaired, "h0"), Action::UsableSetChanged]);
        assert_eq!(sim.group.next_wakeup(), None);
    }

    #[test]
    fn three_link_ups_spread_over_more_than_a_minute_are_not_flapping() {
        let mut sim = two_link_only();
        for _ in 0..3 {
            sim.link("h0", false);
            sim.advance(Duration::from_secs(31));
            let actions = sim.link("h0", true);
            assert!(actions.contains(&act(repaired, "h0")), "{actions:?}");
        }
    }

    #[test]
    fn flapping_probing_nic_is_not_repaired_without_ten_replies() {
        let mut sim = two_probing(true);
        let mut actions = Vec::new();
        for _ in 0..20 {
            actions.extend(sim.link("h0", false));
            actions.extend(sim.rounds(3, &[("h1", ANSWERED), ("h0", ANSWERED)]));
            actions.extend(sim.link("h0", true));
            actions.extend(sim.rounds(3, &[("h1", ANSWERED), ("h0", ANSWERED)]));
        }
        assert_eq!(count(&actions, &act(repaired, "h0")), 0);
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::Failed { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn standby_takes_over_and_steps_back_after_failback() {
        let mut sim = active_active_standby(true);
        let actions = fail_h0_by_probes(&mut sim);
        assert!(actions.contains(&act(activate, "h2")), "{actions:?}");
        assert_eq!(sim.group.usable_interfaces(), ["h1", "h2"]);
        assert_eq!(sim.view("h2").flags, [InterfaceFlag::Standby]);
        assert!(sim.view("h2").active);
        assert_eq!(sim.group.state(), GroupState::Degraded);

        let actions = sim.rounds(
            NUM_PROBE_REPAIRS as usize,
            &[("h0", ANSWERED), ("h1", ANSWERED), ("h2", ANSWERED)],
        );
        assert_eq!(
            actions,
            [
                act(repaired, "h0"),
                act(deactivate, "h2"),
                Action::UsableSetChanged
            ]
        );
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
        assert_eq!(
            sim.view("h2").flags,
            [InterfaceFlag::Standby, InterfaceFlag::Inactive]
        );
        assert_eq!(sim.group.state(), GroupState::Ok);
    }

    #[test]
    fn failed_inactive_standby_changes_no_role_of_another_nic() {
        let mut sim = active_active_standby(true);
        let actions = sim.link("h2", false);
        assert!(!actions.iter().any(|a| matches!(a, Action::Activate { .. })));
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
        assert_eq!(sim.group.state(), GroupState::Degraded);
        // A repaired standby goes back to being inactive.
        let actions = sim.link("h2", true);
        assert!(!actions.iter().any(|a| matches!(a, Action::Activate { .. })));
        // It has a test address: it needs replies first.
        assert_eq!(
            sim.view("h2").flags,
            [InterfaceFlag::Standby, InterfaceFlag::Failed]
        );
        sim.rounds(10, &[("h2", ANSWERED)]);
        assert_eq!(
            sim.view("h2").flags,
            [InterfaceFlag::Standby, InterfaceFlag::Inactive]
        );
    }

    #[test]
    fn failback_off_leaves_the_repaired_nic_inactive_while_the_standby_serves() {
        let mut sim = active_active_standby(false);
        fail_h0_by_probes(&mut sim);
        let actions = sim.rounds(NUM_PROBE_REPAIRS as usize, &[("h0", ANSWERED)]);
        assert_eq!(actions, [act(repaired, "h0"), Action::UsableSetChanged]);
        assert_eq!(sim.group.usable_interfaces(), ["h1", "h2"]);
        let h0 = sim.view("h0");
        assert!(!h0.active);
        assert_eq!(h0.flags, [InterfaceFlag::Inactive]);
        assert_eq!(h0.state, InterfaceStatus::Ok);
        assert_eq!(sim.group.state(), GroupState::Ok);
        // When the active standby fails, the inactive NIC is activated.
        let actions = sim.link("h2", false);
        assert!(actions.contains(&act(activate, "h0")), "{actions:?}");
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
    }

    #[test]
    fn an_inactive_standby_is_activated_before_an_inactive_repaired_nic() {
        let mut sim = Sim::new(
            policy(false),
            vec![
                nic("h0", false, ProbeFamilies::NONE),
                nic("h1", false, ProbeFamilies::NONE),
                nic("s2", true, ProbeFamilies::NONE),
                nic("s3", true, ProbeFamilies::NONE),
            ],
        );
        sim.link("h0", false);
        sim.advance(Duration::from_secs(1));
        sim.link("h0", true);
        assert_eq!(sim.group.view().inactive, ["h0", "s3"]);
        let actions = sim.link("h1", false);
        assert!(actions.contains(&act(activate, "s3")), "{actions:?}");
        assert_eq!(sim.group.view().inactive, ["h0"]);
    }

    #[test]
    fn failback_off_without_standby_keeps_the_repaired_nic_active_without_its_addresses() {
        let mut sim = two_probing(false);
        fail_h0_by_probes(&mut sim);
        sim.rounds(NUM_PROBE_REPAIRS as usize, &[("h0", ANSWERED)]);
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
        assert_eq!(
            sim.group.nic_roles()[0].role,
            Role::Active {
                reclaims_home: false
            }
        );
    }

    #[test]
    fn offline_is_refused_for_the_last_usable_nic() {
        let mut sim = two_link_only();
        let actions = sim.send(Event::Offline { nic: slot("h0") });
        assert_eq!(
            actions,
            [
                Action::Offlined { nic: slot("h0") },
                Action::UsableSetChanged
            ]
        );
        assert_eq!(sim.view("h0").state, InterfaceStatus::Offline);
        assert_eq!(sim.view("h0").flags, [InterfaceFlag::Offline]);
        let error = sim
            .try_send(Event::Offline { nic: slot("h1") })
            .unwrap_err();
        assert_eq!(
            error,
            StateError::LastUsable {
                group: "g0".into(),
                nic: "h1".into()
            }
        );
        assert_eq!(
            error.to_string(),
            "cannot offline h1: no other functioning interfaces are in its group g0, so \
             offlining it would leave the group without a usable interface"
        );
        assert_eq!(sim.state("h1"), IfState::Ok, "a refusal changes nothing");
        assert_eq!(
            sim.try_send(Event::Offline { nic: slot("h0") }),
            Err(StateError::AlreadyOffline {
                group: "g0".into(),
                nic: "h0".into()
            })
        );
        assert_eq!(
            sim.try_send(Event::Online { nic: slot("h1") }),
            Err(StateError::NotOffline {
                group: "g0".into(),
                nic: "h1".into()
            })
        );
        let actions = sim.send(Event::Online { nic: slot("h0") });
        assert_eq!(
            actions,
            [
                Action::Onlined { nic: slot("h0") },
                Action::UsableSetChanged
            ]
        );
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
    }

    #[test]
    fn offline_is_refused_when_the_only_other_nic_has_failed() {
        let mut sim = two_link_only();
        sim.link("h1", false);
        assert!(matches!(
            sim.try_send(Event::Offline { nic: slot("h0") }),
            Err(StateError::LastUsable { .. })
        ));
        // A failed NIC may go offline while another works.
        sim.send(Event::Offline { nic: slot("h1") });
        assert_eq!(
            sim.view("h1").flags,
            [InterfaceFlag::Failed, InterfaceFlag::Offline]
        );
    }

    #[test]
    fn offline_of_a_single_nic_group_is_refused() {
        let mut sim = Sim::new(policy(true), vec![nic("h0", false, ProbeFamilies::NONE)]);
        assert!(matches!(
            sim.try_send(Event::Offline { nic: slot("h0") }),
            Err(StateError::LastUsable { .. })
        ));
    }

    #[test]
    fn when_the_group_has_failed_any_member_but_the_last_online_one_may_go_offline() {
        let mut sim = two_link_only();
        sim.link("h0", false);
        sim.link("h1", false);
        assert_eq!(sim.group.state(), GroupState::Failed);
        sim.send(Event::Offline { nic: slot("h0") });
        assert!(matches!(
            sim.try_send(Event::Offline { nic: slot("h1") }),
            Err(StateError::LastUsable { .. })
        ));
    }

    #[test]
    fn an_offline_standby_is_not_activated_and_an_onlined_one_is_inactive() {
        let mut sim = active_active_standby(true);
        sim.send(Event::Offline { nic: slot("h2") });
        sim.link("h0", false);
        assert_eq!(sim.group.usable_interfaces(), ["h1"]);
        let actions = sim.send(Event::Online { nic: slot("h2") });
        assert!(actions.contains(&act(activate, "h2")), "{actions:?}");
        assert_eq!(sim.group.usable_interfaces(), ["h1", "h2"]);
    }

    #[test]
    fn onlining_takes_addresses_back_even_with_failback_off() {
        let mut sim = two_probing(false);
        sim.send(Event::Offline { nic: slot("h0") });
        sim.send(Event::Online { nic: slot("h0") });
        assert_eq!(
            sim.group.nic_roles()[0].role,
            Role::Active {
                reclaims_home: true
            }
        );
    }

    #[test]
    fn link_tracked_while_offline_decides_the_state_after_online() {
        let mut sim = Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::NONE),
                nic("h1", false, ProbeFamilies::NONE),
                nic("h2", false, ProbeFamilies::NONE),
            ],
        );
        sim.send(Event::Offline { nic: slot("h0") });
        sim.link("h0", false);
        sim.send(Event::Offline { nic: slot("h1") });
        sim.link("h1", false);
        sim.advance(Duration::from_secs(1));
        sim.link("h1", true);
        let actions = sim.send(Event::Online { nic: slot("h0") });
        assert_eq!(actions, [Action::Onlined { nic: slot("h0") }]);
        assert_eq!(sim.state("h0"), failed(FailureCause::LinkDown));
        sim.send(Event::Online { nic: slot("h1") });
        assert_eq!(sim.state("h1"), IfState::Ok);
    }

    #[test]
    fn group_failure_and_recovery_one_by_one() {
        let mut sim = two_link_only();
        let mut actions = sim.link("h0", false);
        actions.extend(sim.link("h1", false));
        assert_eq!(count(&actions, &Action::GroupFailed), 1);
        assert_eq!(sim.group.state(), GroupState::Failed);
        assert!(sim.group.usable_interfaces().is_empty());
        assert_eq!(
            Action::GroupFailed.log_line(&sim.group).unwrap(),
            "All Interfaces in group g0 have failed"
        );
        let actions = sim.link("h1", true);
        assert!(actions.contains(&Action::GroupRepaired { nic: slot("h1") }));
        assert_eq!(sim.group.state(), GroupState::Degraded);
        assert_eq!(sim.group.usable_interfaces(), ["h1"]);
        let actions = sim.link("h0", true);
        assert!(!actions.contains(&Action::GroupRepaired { nic: slot("h0") }));
        assert_eq!(sim.group.state(), GroupState::Ok);
    }

    #[test]
    fn first_nic_repaired_after_group_failure_is_active_even_with_failback_off() {
        let mut sim = active_active_standby(false);
        sim.link("h0", false);
        sim.link("h1", false);
        sim.link("h2", false);
        assert_eq!(sim.group.state(), GroupState::Failed);
        sim.link("h0", true);
        sim.rounds(NUM_PROBE_REPAIRS as usize, &[("h0", ANSWERED)]);
        assert_eq!(sim.group.usable_interfaces(), ["h0"]);
    }

    #[test]
    fn all_targets_lost_at_once_is_a_target_failure() {
        let mut sim = two_probing(true);
        sim.rounds(3, &[("h0", ANSWERED), ("h1", ANSWERED)]);
        let actions = sim.rounds(NUM_PROBE_FAILS as usize, &[("h0", LOST), ("h1", LOST)]);
        assert_eq!(
            actions,
            [
                Action::Failed {
                    nic: slot("h0"),
                    cause: FailureCause::TargetsUnreachable
                },
                Action::Failed {
                    nic: slot("h1"),
                    cause: FailureCause::TargetsUnreachable
                },
                Action::FlushTargets {
                    nics: vec![slot("h0"), slot("h1")]
                },
                Action::GroupFailed,
                Action::UsableSetChanged,
            ]
        );
        let lines: Vec<_> = actions
            .iter()
            .filter_map(|a| a.log_line(&sim.group))
            .collect();
        assert_eq!(lines.len(), 2, "no per-NIC failure lines: {lines:?}");
        assert!(lines[0].starts_with("All probe targets of group g0 stopped answering at once"));
        // New targets answer: each member is repaired by its own replies.
        let actions = sim.rounds(
            NUM_PROBE_REPAIRS as usize,
            &[("h0", ANSWERED), ("h1", ANSWERED)],
        );
        assert_eq!(count(&actions, &act(repaired, "h0")), 1);
        assert_eq!(count(&actions, &act(repaired, "h1")), 1);
        assert_eq!(
            count(&actions, &Action::GroupRepaired { nic: slot("h0") }),
            1
        );
        assert_eq!(sim.group.state(), GroupState::Ok);
    }

    #[test]
    fn nics_answering_again_after_a_group_failure_keep_their_addresses_until_repaired() {
        let mut sim = two_probing(true);
        sim.rounds(3, &[("h0", ANSWERED), ("h1", ANSWERED)]);
        sim.rounds(NUM_PROBE_FAILS as usize, &[("h0", LOST), ("h1", LOST)]);
        assert_eq!(sim.group.state(), GroupState::Failed);
        let role = |sim: &Sim, index: usize| sim.group.nic_roles()[index].role;
        assert_eq!(role(&sim, 1), Role::Unusable);
        // The targets answer again; h0's replies come a little ahead of h1's.
        let actions = sim.rounds(
            NUM_PROBE_REPAIRS as usize - 1,
            &[("h0", ANSWERED), ("h1", ANSWERED)],
        );
        assert!(actions.contains(&Action::UsableSetChanged), "{actions:?}");
        assert_eq!(role(&sim, 0), Role::Recovering);
        assert_eq!(role(&sim, 1), Role::Recovering);
        sim.round(&[("h0", ANSWERED)]);
        assert_eq!(sim.group.usable_interfaces(), ["h0"]);
        assert_eq!(role(&sim, 1), Role::Recovering, "h1 keeps what it has");
        // A loss ends it: h1 is unusable, and its addresses may move.
        let actions = sim.round(&[("h1", LOST)]);
        assert!(actions.contains(&Action::UsableSetChanged), "{actions:?}");
        assert_eq!(role(&sim, 1), Role::Unusable);
        // A NIC failed alone never recovers so: its addresses left at its failure.
        let mut sim = two_probing(true);
        sim.rounds(3, &[("h0", ANSWERED), ("h1", ANSWERED)]);
        sim.rounds(NUM_PROBE_FAILS as usize, &[("h0", LOST), ("h1", ANSWERED)]);
        sim.round(&[("h0", ANSWERED)]);
        assert_eq!(role(&sim, 0), Role::Unusable);
    }

    #[test]
    fn a_reply_on_another_nic_after_the_first_loss_makes_it_a_nic_failure() {
        let mut sim = two_probing(true);
        // h1 answered after h0's first loss (strictly later, as in.mpathd's TIME_GT)...
        sim.round(&[("h0", LOST)]);
        sim.advance(Duration::from_millis(100));
        sim.send(Event::Probe {
            nic: slot("h1"),
            family: AddressFamily::Inet,
            outcome: ANSWERED,
        });
        // ...so h0's fifth loss is a NIC failure even though h1 is now losing too.
        let actions = sim.rounds(4, &[("h0", LOST), ("h1", LOST)]);
        assert_eq!(
            actions,
            [
                Action::Failed {
                    nic: slot("h0"),
                    cause: FailureCause::ProbesLost
                },
                Action::UsableSetChanged
            ]
        );
    }

    #[test]
    fn a_working_link_only_member_makes_it_a_nic_failure() {
        let mut sim = Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        );
        let actions = sim.rounds(NUM_PROBE_FAILS as usize, &[("h0", LOST)]);
        assert!(actions.contains(&Action::Failed {
            nic: slot("h0"),
            cause: FailureCause::ProbesLost
        }));
        assert_eq!(sim.group.state(), GroupState::Degraded);
    }

    #[test]
    fn a_single_probing_nic_losing_its_probes_fails_the_group() {
        let mut sim = Sim::new(policy(true), vec![nic("h0", false, ProbeFamilies::IPV4)]);
        let actions = sim.rounds(NUM_PROBE_FAILS as usize, &[("h0", LOST)]);
        assert!(actions.contains(&Action::GroupFailed));
        assert!(actions.contains(&Action::FlushTargets {
            nics: vec![slot("h0")]
        }));
    }

    #[test]
    fn dual_stack_nic_fails_only_when_both_families_fail() {
        let mut sim = Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::BOTH),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        );
        let v6 = |outcome| Event::Probe {
            nic: slot("h0"),
            family: AddressFamily::Inet6,
            outcome,
        };
        for _ in 0..NUM_PROBE_FAILS {
            sim.round(&[("h0", LOST)]);
            sim.send(v6(ANSWERED));
        }
        assert_eq!(sim.state("h0"), IfState::Ok, "IPv6 still answers");
        for _ in 0..NUM_PROBE_FAILS - 1 {
            sim.round(&[("h0", LOST)]);
            sim.send(v6(LOST));
        }
        assert_eq!(sim.state("h0"), IfState::Ok);
        sim.send(v6(LOST));
        assert_eq!(sim.state("h0"), failed(FailureCause::ProbesLost));
        // One family answering NUM_PROBE_REPAIRS times repairs it.
        for _ in 0..NUM_PROBE_REPAIRS {
            sim.send(v6(ANSWERED));
        }
        assert_eq!(sim.state("h0"), IfState::Ok);
    }

    #[test]
    fn one_family_failing_alone_is_reported_and_shown_but_fails_no_nic() {
        let mut sim = Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::BOTH),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        );
        let v6 = |outcome| Event::Probe {
            nic: slot("h0"),
            family: AddressFamily::Inet6,
            outcome,
        };
        let family_failed = Action::FamilyFailed {
            nic: slot("h0"),
            family: AddressFamily::Inet,
        };
        let view = |sim: &Sim| sim.group.interface_views()[0].clone();
        let mut reported = Vec::new();
        for _ in 0..NUM_PROBE_FAILS {
            reported.extend(sim.round(&[("h0", LOST)]));
            reported.extend(sim.send(v6(ANSWERED)));
        }
        assert_eq!(sim.state("h0"), IfState::Ok, "IPv6 holds h0 up");
        assert_eq!(
            reported.iter().filter(|a| **a == family_failed).count(),
            1,
            "reported once: {reported:?}"
        );
        let h0 = view(&sim);
        assert_eq!(
            (h0.probe, h0.probe_ipv4, h0.probe_ipv6),
            (
                ProbeStatus::Ok,
                Some(ProbeStatus::Failed),
                Some(ProbeStatus::Ok)
            )
        );
        // Further losses report nothing new; an answer repairs the family.
        assert!(!sim.round(&[("h0", LOST)]).contains(&family_failed));
        let repaired = sim.round(&[("h0", ANSWERED)]);
        assert!(
            repaired.contains(&Action::FamilyRepaired {
                nic: slot("h0"),
                family: AddressFamily::Inet
            }),
            "{repaired:?}"
        );
        assert_eq!(view(&sim).probe_ipv4, Some(ProbeStatus::Ok));
        // A NIC probing one family has no per-family report: its failure is the NIC's.
        assert_eq!(sim.group.interface_views()[1].probe_ipv4, None);
    }

    #[test]
    fn both_families_failing_fail_the_nic_without_a_family_report() {
        let mut sim = Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::BOTH),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        );
        let mut reported = Vec::new();
        for _ in 0..NUM_PROBE_FAILS {
            reported.extend(sim.round(&[("h0", LOST)]));
            reported.extend(sim.send(Event::Probe {
                nic: slot("h0"),
                family: AddressFamily::Inet6,
                outcome: LOST,
            }));
        }
        assert_eq!(sim.state("h0"), failed(FailureCause::ProbesLost));
        assert!(
            !reported
                .iter()
                .any(|a| matches!(a, Action::FamilyFailed { .. })),
            "{reported:?}"
        );
    }

    fn state_hash(group: &Group) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        group.hash_states(&mut hasher);
        std::hash::Hasher::finish(&hasher)
    }

    /// What STATUS= summarises changes the hash; a probe that changes no state does not.
    #[test]
    fn the_state_hash_follows_the_states_the_status_line_shows() {
        let mut sim = Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::IPV4),
            ],
        );
        let unconfirmed = state_hash(&sim.group);
        assert_eq!(sim.view("h0").state, InterfaceStatus::Unknown);
        sim.send(Event::Targets {
            nic: slot("h0"),
            family: AddressFamily::Inet,
            available: true,
        });
        assert_eq!(sim.view("h0").state, InterfaceStatus::Ok);
        let confirmed = state_hash(&sim.group);
        assert_ne!(confirmed, unconfirmed, "h0's targets made it ok");
        sim.round(&[("h0", ANSWERED)]);
        assert_eq!(
            state_hash(&sim.group),
            confirmed,
            "an answered probe changes nothing"
        );
        sim.link("h1", false);
        assert_ne!(state_hash(&sim.group), confirmed, "h1 failed");
    }

    #[test]
    fn a_family_without_targets_does_not_hold_back_a_failure() {
        let mut sim = Sim::new(
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::BOTH),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        );
        sim.send(Event::Targets {
            nic: slot("h0"),
            family: AddressFamily::Inet6,
            available: true,
        });
        sim.rounds(NUM_PROBE_FAILS as usize, &[("h0", LOST)]);
        assert_eq!(sim.state("h0"), IfState::Ok, "IPv6 has targets");
        sim.send(Event::Targets {
            nic: slot("h0"),
            family: AddressFamily::Inet6,
            available: false,
        });
        assert_eq!(sim.state("h0"), failed(FailureCause::ProbesLost));
    }

    #[test]
    fn startup_quiet_period_holds_back_failure_until_it_ends() {
        let mut sim = Sim::new(
            Policy {
                failback: true,
                startup_quiet: STARTUP_QUIET_PERIOD,
            },
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        );
        let start = sim.now;
        sim.rounds(8, &[("h0", LOST)]);
        assert_eq!(sim.state("h0"), IfState::Ok);
        let end = start + STARTUP_QUIET_PERIOD;
        assert_eq!(sim.group.next_wakeup(), Some(end));
        sim.now = end - Duration::from_millis(1);
        assert!(sim.tick().is_empty());
        sim.now = end;
        assert!(sim.tick().contains(&Action::Failed {
            nic: slot("h0"),
            cause: FailureCause::ProbesLost
        }));
    }

    #[test]
    fn an_adopted_failure_is_repaired_only_by_ten_answered_probes() {
        let mut sim = Sim::new(
            Policy::default(),
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::IPV4),
                nic("h2", true, ProbeFamilies::IPV4),
                nic("h3", false, ProbeFamilies::NONE),
            ],
        );
        let actions = sim.send(Event::Adopt { nic: slot("h0") });
        assert!(actions.contains(&Action::StillFailed { nic: slot("h0") }));
        assert!(!actions.iter().any(|a| matches!(a, Action::Failed { .. })));
        assert!(actions.contains(&Action::Activate { nic: slot("h2") }));
        // No probe has spoken since: the family's probing is unknown, not ok.
        assert_eq!(sim.view("h0").probe_ipv4, Some(ProbeStatus::Unknown));
        let answers = [("h0", ANSWERED), ("h1", ANSWERED), ("h2", ANSWERED)];
        sim.round(&answers);
        assert_eq!(sim.view("h0").probe_ipv4, Some(ProbeStatus::Ok));
        sim.rounds(NUM_PROBE_REPAIRS as usize - 2, &answers);
        assert_eq!(
            sim.state("h0"),
            IfState::Failed {
                cause: FailureCause::ProbesLost
            }
        );
        let actions = sim.round(&answers);
        assert!(actions.contains(&Action::Repaired { nic: slot("h0") }));
        assert_eq!(sim.state("h0"), IfState::Ok);

        // Only a working probing NIC is adopted as failed: a link-only NIC's link decides,
        // and a failed one stays as it is.
        assert!(sim.send(Event::Adopt { nic: slot("h3") }).is_empty());
        assert_eq!(sim.state("h3"), IfState::Ok);
        sim.link("h1", false);
        assert!(sim.send(Event::Adopt { nic: slot("h1") }).is_empty());
        assert!(sim.try_send(Event::Adopt { nic: slot("eth9") }).is_err());
    }

    #[test]
    fn first_reply_ends_the_startup_quiet_period() {
        let mut sim = Sim::new(
            Policy::default(),
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::NONE),
            ],
        );
        sim.rounds(NUM_PROBE_FAILS as usize - 1, &[("h0", LOST)]);
        sim.round(&[("h0", ANSWERED)]);
        // Losses from before the reply no longer count; later ones fail the NIC at once.
        sim.rounds(NUM_PROBE_FAILS as usize - 1, &[("h0", LOST)]);
        assert_eq!(sim.state("h0"), IfState::Ok);
        let actions = sim.round(&[("h0", LOST)]);
        assert!(actions.contains(&Action::Failed {
            nic: slot("h0"),
            cause: FailureCause::ProbesLost
        }));
        assert_eq!(sim.group.next_wakeup(), None);
    }

    #[test]
    fn a_failure_held_back_by_the_quiet_period_is_judged_on_the_real_loss_times() {
        let mut sim = Sim::new(
            Policy::default(),
            vec![
                nic("h0", false, ProbeFamilies::IPV4),
                nic("h1", false, ProbeFamilies::IPV4),
            ],
        );
        let end = sim.now + STARTUP_QUIET_PERIOD;
        while sim.now + PROBE_INTERVAL < end {
            sim.round(&[("h0", LOST), ("h1", ANSWERED)]);
        }
        assert_eq!(sim.state("h0"), IfState::Ok);
        // h1 answered after h0's first loss, long before the quiet period ended: h0 failed,
        // not the targets.
        sim.now = end;
        assert_eq!(
            sim.tick(),
            [
                Action::Failed {
                    nic: slot("h0"),
                    cause: FailureCause::ProbesLost
                },
                Action::UsableSetChanged
            ]
        );
        assert_eq!(sim.state("h1"), IfState::Ok);
    }

    #[test]
    fn nic_that_disappears_leaves_the_usable_set_and_rejoins_when_it_appears() {
        let mut sim = active_active_standby(true);
        let actions = sim.send(Event::Disappeared { nic: slot("h0") });
        assert_eq!(
            actions,
            [
                Action::Disappeared { nic: slot("h0") },
                act(activate, "h2"),
                Action::UsableSetChanged
            ]
        );
        assert_eq!(sim.view("h0").state, InterfaceStatus::Missing);
        assert_eq!(sim.view("h0").link, LinkState::Unknown);
        assert_eq!(sim.group.state(), GroupState::Degraded);
        assert_eq!(
            sim.try_send(Event::Link {
                nic: slot("h0"),
                up: true
            }),
            Err(StateError::NotPresent {
                group: "g0".into(),
                nic: "h0".into()
            })
        );
        let actions = sim.send(Event::Appeared {
            nic: slot("h0"),
            link_up: true,
        });
        assert_eq!(
            actions,
            [
                Action::Appeared { nic: slot("h0") },
                act(deactivate, "h2"),
                Action::UsableSetChanged
            ]
        );
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
    }

    #[test]
    fn nic_missing_at_start_is_covered_by_the_standby_until_it_appears() {
        let mut group = Group::new(
            "g0",
            policy(true),
            vec![
                nic("h0", false, ProbeFamilies::NONE),
                nic("h1", false, ProbeFamilies::NONE),
                nic("h2", true, ProbeFamilies::NONE),
            ],
        )
        .unwrap();
        let now = Instant::now();
        let actions = group
            .handle(
                Event::Snapshot {
                    present: vec![(slot("h0"), true), (slot("h2"), true)],
                },
                now,
            )
            .unwrap();
        assert!(actions.contains(&act(activate, "h2")), "{actions:?}");
        assert!(!actions.contains(&act(deactivate, "h2")));
        assert_eq!(group.usable_interfaces(), ["h0", "h2"]);
        assert_eq!(group.state(), GroupState::Degraded);
    }

    #[test]
    fn a_group_whose_nics_are_all_missing_is_reported_failed() {
        let mut group = Group::new(
            "g0",
            policy(true),
            vec![nic("h0", false, ProbeFamilies::NONE)],
        )
        .unwrap();
        let actions = group
            .handle(Event::Snapshot { present: vec![] }, Instant::now())
            .unwrap();
        assert_eq!(actions, [Action::GroupFailed]);
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        assert_eq!(
            Group::new("g0", policy(true), vec![])
                .unwrap_err()
                .to_string(),
            "group g0 has no interfaces"
        );
        assert_eq!(
            Group::new(
                "g0",
                policy(true),
                vec![
                    nic("h0", false, ProbeFamilies::NONE),
                    nic("h0", true, ProbeFamilies::NONE)
                ]
            )
            .unwrap_err()
            .to_string(),
            "interface h0 is listed twice in group g0"
        );
        let mut shared = nic("h1", false, ProbeFamilies::NONE);
        shared.slot = slot("h0");
        assert_eq!(
            Group::new(
                "g0",
                policy(true),
                vec![nic("h0", false, ProbeFamilies::NONE), shared]
            )
            .unwrap_err()
            .to_string(),
            "interfaces h0 and h1 of group g0 share counter slot 0"
        );
        let mut sim = two_link_only();
        assert_eq!(
            sim.try_send(Event::Link {
                nic: slot("eth9"),
                up: true
            })
            .unwrap_err()
            .to_string(),
            "group g0 has no interface in counter slot 9"
        );
        assert_eq!(
            sim.try_send(Event::Probe {
                nic: slot("h0"),
                family: AddressFamily::Inet,
                outcome: LOST
            })
            .unwrap_err()
            .to_string(),
            "interface h0 of group g0 has no IPv4 test address to probe from"
        );
        assert!(matches!(
            sim.try_send(Event::Snapshot {
                present: vec![(slot("eth9"), true)]
            }),
            Err(StateError::UnknownInterface { .. })
        ));
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h1"]);
    }

    #[test]
    fn views_report_ipmpstat_columns_as_stable_json() {
        let mut sim = active_active_standby(true);
        sim.rounds(1, &[("h0", ANSWERED), ("h1", ANSWERED)]);
        sim.link("h1", false);
        let views = serde_json::to_value(sim.group.interface_views()).unwrap();
        assert_eq!(
            views,
            serde_json::json!([
                {"interface": "h0", "group": "g0", "active": true, "flags": [],
                 "link": "up", "probe": "ok", "probe_ipv4": "ok", "probe_ipv6": null,
                 "state": "ok", "unusable": null},
                {"interface": "h1", "group": "g0", "active": false, "flags": ["failed"],
                 "link": "down", "probe": "unknown", "probe_ipv4": "unknown",
                 "probe_ipv6": null, "state": "failed", "unusable": "link_down"},
                {"interface": "h2", "group": "g0", "active": true, "flags": ["standby"],
                 "link": "up", "probe": "unknown", "probe_ipv4": "unknown", "probe_ipv6": null,
                 "state": "unknown", "unusable": null},
            ])
        );
        let group = serde_json::to_value(sim.group.view()).unwrap();
        assert_eq!(
            group,
            serde_json::json!({"group": "g0", "state": "degraded", "active": ["h0", "h2"],
                               "inactive": [], "unusable": ["h1"]})
        );
    }

    #[test]
    fn link_only_nic_reports_probing_disabled() {
        let sim = two_link_only();
        let view = sim.view("h0");
        assert_eq!(view.probe, ProbeStatus::Disabled);
        assert_eq!(view.state, InterfaceStatus::Ok);
    }

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];

    fn set_mac(sim: &mut Sim, nic: &str, mac: [u8; 6]) -> Vec<Action> {
        sim.send(Event::HardwareAddress {
            nic: slot(nic),
            mac,
        })
    }

    const DUPLICATE: IfState = IfState::Offline {
        failure: None,
        reason: OfflineReason::DuplicateMac,
    };

    /// As at every start: the MACs first, then which NICs exist.
    #[test]
    fn macs_given_before_the_nics_presence_do_not_report_the_group_failed() {
        let nics = vec![
            nic("h0", false, ProbeFamilies::NONE),
            nic("h1", false, ProbeFamilies::NONE),
        ];
        let mut group = Group::new("g0", policy(true), nics).unwrap();
        let now = Instant::now();
        for (name, mac) in [("h0", MAC_A), ("h1", MAC_B)] {
            let event = Event::HardwareAddress {
                nic: slot(name),
                mac,
            };
            let actions = group.handle(event, now).unwrap();
            assert!(actions.is_empty(), "{actions:?}");
        }
        let present = vec![(slot("h0"), true), (slot("h1"), true)];
        let actions = group.handle(Event::Snapshot { present }, now).unwrap();
        assert!(!actions.contains(&Action::GroupFailed), "{actions:?}");
        assert_eq!(group.state(), GroupState::Ok);
    }

    #[test]
    fn a_nic_with_an_earlier_members_mac_goes_offline_until_its_mac_is_unique() {
        let mut sim = active_active_standby(true);
        for (nic, mac) in [("h0", MAC_A), ("h1", MAC_B), ("h2", MAC_C)] {
            assert!(set_mac(&mut sim, nic, mac).is_empty(), "unique: nothing");
        }
        let actions = set_mac(&mut sim, "h1", MAC_A);
        assert_eq!(
            actions,
            [
                Action::DuplicateMac {
                    nic: slot("h1"),
                    of: slot("h0"),
                    mac: MAC_A
                },
                act(activate, "h2"),
                Action::UsableSetChanged,
            ]
        );
        assert_eq!(
            actions[0].log_line(&sim.group).unwrap(),
            "NIC h1 of group g0 has the hardware address 02:00:00:00:00:0a of h0, which is \
             not unique in the group; offlining h1"
        );
        assert_eq!(sim.state("h1"), DUPLICATE);
        assert_eq!(sim.group.usable_interfaces(), ["h0", "h2"]);
        let view = sim.view("h1");
        assert_eq!(
            view.flags,
            [InterfaceFlag::Offline, InterfaceFlag::DuplicateMac]
        );
        assert_eq!(view.state, InterfaceStatus::Offline);
        assert!(!view.active);
        assert!(
            set_mac(&mut sim, "h1", MAC_A).is_empty(),
            "a repeat is no news"
        );

        // The operator cannot bring it online meanwhile.
        assert_eq!(
            sim.try_send(Event::Online { nic: slot("h1") }),
            Err(StateError::DuplicateMac {
                group: "g0".into(),
                nic: "h1".into()
            })
        );
        assert_eq!(sim.state("h1"), DUPLICATE, "a refusal changes nothing");

        let actions = set_mac(&mut sim, "h1", MAC_B);
        assert_eq!(
            actions,
            [
                Action::MacUnique { nic: slot("h1") },
                act(deactivate, "h2"),
                Action::UsableSetChanged,
            ]
        );
        assert_eq!(sim.state("h1"), IfState::Ok);
        assert_eq!(
            sim.group.nic_roles()[1].role,
            Role::Active {
                reclaims_home: true
            },
            "back as if new: it takes its addresses back"
        );
    }

    #[test]
    fn the_later_member_in_configuration_order_is_the_duplicate_whoever_changed() {
        let mut sim = active_active_standby(true);
        set_mac(&mut sim, "h2", MAC_A);
        set_mac(&mut sim, "h1", MAC_B);
        let actions = set_mac(&mut sim, "h0", MAC_A);
        assert!(
            actions.contains(&Action::DuplicateMac {
                nic: slot("h2"),
                of: slot("h0"),
                mac: MAC_A
            }),
            "{actions:?}"
        );
        assert_eq!(sim.state("h0"), IfState::Ok);
        assert_eq!(sim.state("h2"), DUPLICATE);
        // The earlier one changes: the later one is unique again.
        let actions = set_mac(&mut sim, "h0", MAC_C);
        assert!(actions.contains(&Action::MacUnique { nic: slot("h2") }));
        assert_eq!(sim.state("h2"), IfState::Ok);
    }

    #[test]
    fn a_duplicate_whose_original_disappears_comes_back() {
        let mut sim = two_link_only();
        set_mac(&mut sim, "h0", MAC_A);
        set_mac(&mut sim, "h1", MAC_A);
        assert_eq!(sim.state("h1"), DUPLICATE);
        let actions = sim.send(Event::Disappeared { nic: slot("h0") });
        assert!(actions.contains(&Action::MacUnique { nic: slot("h1") }));
        assert_eq!(sim.state("h1"), IfState::Ok);
        // Back with the same MAC, now the later one in configuration order is h1 again.
        set_mac(&mut sim, "h0", MAC_A);
        sim.send(Event::Appeared {
            nic: slot("h0"),
            link_up: true,
        });
        assert_eq!(sim.state("h0"), IfState::Ok);
        assert_eq!(sim.state("h1"), DUPLICATE);
    }

    #[test]
    fn a_duplicate_that_lost_its_link_meanwhile_comes_back_failed() {
        let mut sim = two_link_only();
        set_mac(&mut sim, "h0", MAC_A);
        set_mac(&mut sim, "h1", MAC_A);
        sim.link("h1", false);
        assert_eq!(
            sim.state("h1"),
            IfState::Offline {
                failure: Some(FailureCause::LinkDown),
                reason: OfflineReason::DuplicateMac
            }
        );
        set_mac(&mut sim, "h1", MAC_B);
        assert_eq!(sim.state("h1"), failed(FailureCause::LinkDown));
        sim.link("h1", true);
        assert_eq!(sim.state("h1"), IfState::Ok);
    }

    #[test]
    fn a_nic_that_appears_with_a_duplicate_mac_never_carries_traffic() {
        let mut sim = Sim {
            group: Group::new(
                "g0",
                policy(true),
                vec![
                    nic("h0", false, ProbeFamilies::NONE),
                    nic("h1", false, ProbeFamilies::NONE),
                ],
            )
            .unwrap(),
            now: Instant::now(),
        };
        set_mac(&mut sim, "h1", MAC_A);
        set_mac(&mut sim, "h0", MAC_A);
        let actions = sim.send(Event::Snapshot {
            present: vec![(slot("h0"), true), (slot("h1"), true)],
        });
        assert!(!actions.contains(&act(activate, "h1")), "{actions:?}");
        assert_eq!(sim.state("h1"), DUPLICATE);
        assert_eq!(sim.group.usable_interfaces(), ["h0"]);
    }

    #[test]
    fn an_all_zero_mac_is_no_duplicate() {
        let mut sim = two_link_only();
        set_mac(&mut sim, "h0", [0; 6]);
        assert!(set_mac(&mut sim, "h1", [0; 6]).is_empty());
        assert_eq!(sim.state("h1"), IfState::Ok);
    }

    #[test]
    fn an_offline_nic_that_gets_a_duplicate_mac_stays_the_operators_until_onlined() {
        let mut sim = active_active_standby(true);
        set_mac(&mut sim, "h0", MAC_A);
        sim.send(Event::Offline { nic: slot("h1") });
        assert!(set_mac(&mut sim, "h1", MAC_A).is_empty());
        let actions = sim.send(Event::Online { nic: slot("h1") });
        assert!(
            actions.contains(&Action::DuplicateMac {
                nic: slot("h1"),
                of: slot("h0"),
                mac: MAC_A
            }),
            "{actions:?}"
        );
        assert_eq!(sim.state("h1"), DUPLICATE);
    }

    #[test]
    fn an_operators_offline_of_a_duplicate_outlasts_the_duplicate() {
        let mut sim = active_active_standby(true);
        set_mac(&mut sim, "h0", MAC_A);
        set_mac(&mut sim, "h1", MAC_A);
        assert_eq!(
            sim.send(Event::Offline { nic: slot("h1") }),
            [Action::Offlined { nic: slot("h1") }],
            "no role changes: it was out of use already"
        );
        assert!(
            set_mac(&mut sim, "h1", MAC_B).is_empty(),
            "it stays offline"
        );
        assert_eq!(
            sim.state("h1"),
            IfState::Offline {
                failure: None,
                reason: OfflineReason::Admin
            }
        );
        sim.send(Event::Online { nic: slot("h1") });
        assert_eq!(sim.state("h1"), IfState::Ok);
    }

    fn report_datapath(sim: &mut Sim, nic: &str, attached: bool) -> Vec<Action> {
        sim.send(Event::Datapath {
            nic: slot(nic),
            attached,
        })
    }

    const NO_DATAPATH: IfState = IfState::Offline {
        failure: None,
        reason: OfflineReason::NoDatapath,
    };

    #[test]
    fn a_nic_without_its_programs_never_carries_traffic_until_they_attach() {
        // As at start: the attach result first, then which NICs exist.
        let nics = vec![
            nic("h0", false, ProbeFamilies::IPV4),
            nic("h1", false, ProbeFamilies::IPV4),
        ];
        let mut group = Group::new("g0", policy(true), nics).unwrap();
        let now = Instant::now();
        let event = Event::Datapath {
            nic: slot("h1"),
            attached: false,
        };
        assert!(group.handle(event, now).unwrap().is_empty());
        let present = vec![(slot("h0"), true), (slot("h1"), true)];
        let actions = group.handle(Event::Snapshot { present }, now).unwrap();
        assert!(
            actions.contains(&Action::DatapathLost { nic: slot("h1") }),
            "{actions:?}"
        );
        assert_eq!(group.interface_state(slot("h1")), Some(NO_DATAPATH));
        assert_eq!(group.usable_interfaces(), ["h0"]);
        assert_eq!(group.nic_roles()[1].role, Role::Unusable);
        let view = group
            .interface_views()
            .into_iter()
            .find(|v| v.interface == "h1")
            .unwrap();
        assert_eq!(
            view.flags,
            [InterfaceFlag::Offline, InterfaceFlag::NoDatapath]
        );
        assert_eq!(view.state, InterfaceStatus::Offline);
        assert_eq!(group.state(), GroupState::Degraded);

        // Attached later (the cause went away): back as if new.
        let event = Event::Datapath {
            nic: slot("h1"),
            attached: true,
        };
        let actions = group.handle(event, now).unwrap();
        assert_eq!(
            actions,
            [
                Action::DatapathAttached { nic: slot("h1") },
                Action::UsableSetChanged
            ]
        );
        assert_eq!(
            actions[0].log_line(&group).unwrap(),
            "mpathd's programs are attached to h1 of group g0; onlining it"
        );
        assert_eq!(group.interface_state(slot("h1")), Some(IfState::Ok));
        assert_eq!(group.usable_interfaces(), ["h0", "h1"]);
    }

    #[test]
    fn programs_lost_on_an_active_nic_move_its_traffic_and_the_operator_cannot_online_it() {
        let mut sim = active_active_standby(true);
        let actions = report_datapath(&mut sim, "h1", false);
        assert_eq!(
            actions,
            [
                Action::DatapathLost { nic: slot("h1") },
                act(activate, "h2"),
                Action::UsableSetChanged,
            ]
        );
        assert!(
            report_datapath(&mut sim, "h1", false).is_empty(),
            "a repeat is no news"
        );
        assert_eq!(
            sim.try_send(Event::Online { nic: slot("h1") }),
            Err(StateError::NoDatapath {
                group: "g0".into(),
                nic: "h1".into()
            })
        );
        // The operator's offline takes over and outlasts the cause.
        sim.send(Event::Offline { nic: slot("h1") });
        assert_eq!(
            sim.state("h1"),
            IfState::Offline {
                failure: None,
                reason: OfflineReason::Admin
            }
        );
        assert!(report_datapath(&mut sim, "h1", true).is_empty());
        assert!(matches!(sim.state("h1"), IfState::Offline { .. }));
        sim.send(Event::Online { nic: slot("h1") });
        assert_eq!(sim.state("h1"), IfState::Ok);
    }

    #[test]
    fn a_nic_whose_mac_turns_unique_while_its_programs_are_missing_stays_offline() {
        let mut sim = two_link_only();
        set_mac(&mut sim, "h0", MAC_A);
        set_mac(&mut sim, "h1", MAC_A);
        assert_eq!(sim.state("h1"), DUPLICATE);
        report_datapath(&mut sim, "h1", false);
        let actions = set_mac(&mut sim, "h1", MAC_B);
        assert_eq!(
            actions,
            [
                Action::MacUnique { nic: slot("h1") },
                Action::DatapathLost { nic: slot("h1") },
            ],
            "never usable in between"
        );
        assert_eq!(sim.state("h1"), NO_DATAPATH);
        // And the other way round: programs back while its MAC is a duplicate again.
        set_mac(&mut sim, "h1", MAC_A);
        let actions = report_datapath(&mut sim, "h1", true);
        assert_eq!(
            actions,
            [
                Action::DatapathAttached { nic: slot("h1") },
                Action::DuplicateMac {
                    nic: slot("h1"),
                    of: slot("h0"),
                    mac: MAC_A
                },
            ]
        );
        assert_eq!(sim.state("h1"), DUPLICATE);
    }
}
