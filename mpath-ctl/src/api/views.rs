//! The status views mpathd serves and mpathctl prints (modelled on ipmpstat -g -i -a -t -p).
//!
//! These are the wire format of the control socket and of `mpathctl --json`: field names are
//! stable and documented here; new fields may be added, none renamed or removed.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::core::{
    failover::AddressState,
    state::{GroupState, InterfaceFlag, InterfaceStatus, LinkState, ProbeStatus, UnusableReason},
    target::{TargetMode, TargetSource, TargetState},
};

/// Everything `mpathctl groups|interfaces|addresses|targets` shows, taken at one instant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub groups: Vec<GroupRow>,
    pub interfaces: Vec<InterfaceRow>,
    pub addresses: Vec<AddressRow>,
    pub targets: Vec<TargetRow>,
    /// Multicast memberships that followed a failover.
    #[serde(default)]
    pub memberships: Vec<MembershipRow>,
}

/// ipmpstat -g.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    /// Group name from the configuration.
    pub group: String,
    /// `ok` (all members usable), `degraded` (some unusable) or `failed` (none usable).
    pub state: GroupState,
    /// Effective failure detection time in milliseconds (may exceed the configured one when
    /// the targets are too slow for it).
    pub fdt_ms: u64,
    /// Members carrying traffic.
    pub active: Vec<String>,
    /// Working members held in reserve (standbys, or repaired NICs with FAILBACK=no).
    pub inactive: Vec<String>,
    /// Members that are failed, offline or missing.
    pub unusable: Vec<String>,
    /// Routes the kernel deleted from `main` with a NIC that went down or away, which the
    /// group serves until they are back there (`--json` only).
    #[serde(default)]
    pub held_routes: Vec<String>,
}

/// ipmpstat -i.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceRow {
    pub interface: String,
    /// Empty for a NIC in no group (listed when TRACK_INTERFACES_ONLY_WITH_GROUPS is off).
    pub group: String,
    /// Whether the NIC carries traffic now.
    pub active: bool,
    /// Any of `standby`, `inactive`, `failed`, `offline`, `duplicate_mac` (offline because
    /// another member of the group has its hardware address), `no_datapath` (offline because
    /// mpathd's programs could not be attached; `datapath_error` says why).
    pub flags: Vec<InterfaceFlag>,
    /// `up`, `down` or `unknown`.
    pub link: LinkState,
    /// `ok`, `failed`, `unknown` or `disabled` (no test address: link-based only).
    pub probe: ProbeStatus,
    /// Probing in each family (`ok`, `failed`, `unknown`), `None` where the NIC does not
    /// probe in it. A NIC probing both families fails only when both fail, so one family
    /// can be `failed` under a `probe` of `ok`: its traffic in that family may be lost.
    #[serde(default)]
    pub probe_ipv4: Option<ProbeStatus>,
    #[serde(default)]
    pub probe_ipv6: Option<ProbeStatus>,
    /// `ok`, `failed`, `offline`, `missing` or `unknown`.
    pub state: InterfaceStatus,
    /// Why the NIC carries no traffic, while it is unusable: `link_down`, `probes_lost`
    /// (`probe_ipv4`/`probe_ipv6` say in which family), `targets_unreachable`, `offline` (the
    /// operator's), `duplicate_mac`, `no_datapath` or `missing`.
    #[serde(default)]
    pub unusable: Option<UnusableReason>,
    /// Why mpathd's programs are not attached to the NIC (the kernel's errno and message
    /// where it gives them), while they are not (`--json` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_error: Option<String>,
}

/// ipmpstat -a.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRow {
    /// The data address with its prefix length.
    pub address: String,
    /// `up` when it is on a NIC, `down` when on none (group failure with nowhere to go).
    pub state: AddressState,
    pub group: String,
    /// The NIC the address is on: peers send to it there.
    pub inbound: Option<String>,
    /// The NICs outbound traffic from it is spread over.
    pub outbound: Vec<String>,
}

/// A multicast group joined on an unusable NIC that mpathd joined on the NIC that took over,
/// so that the applications joined on the first keep receiving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRow {
    /// The multicast group address.
    pub address: IpAddr,
    /// The IPMP group.
    pub group: String,
    /// The unusable NIC the applications joined it on.
    pub from: String,
    /// The NIC mpathd joined it on.
    pub on: String,
}

/// ipmpstat -t.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRow {
    pub interface: String,
    /// `routes` (configured or router targets), `multicast` (hosts found by an all-hosts
    /// echo, alone or standing in for silent routers), or `disabled`.
    pub mode: TargetMode,
    pub test_address: Option<IpAddr>,
    /// Targets in use, in probing order.
    pub targets: Vec<IpAddr>,
    /// Every target the NIC knows, in use or set aside, with its health (`--json` only).
    #[serde(default)]
    pub health: Vec<TargetHealth>,
    /// Replies matched to this NIC that its prober refused (out of window, wrong source,
    /// duplicate).
    #[serde(default)]
    pub unknown_replies: u64,
}

/// One probe target of a NIC and how it answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHealth {
    pub address: IpAddr,
    /// `configured`, `router` or `discovered`.
    pub source: TargetSource,
    /// `active` (probed in turn), `spare` (known, not needed), `slow` or `dead` (set aside,
    /// probed again later).
    pub state: TargetState,
    /// Smoothed round trip, its deviation and the age at which a probe counts as lost,
    /// microseconds; `None` before the first answer.
    pub rtt_avg_us: Option<u64>,
    pub rtt_dev_us: Option<u64>,
    pub rtt_bound_us: Option<u64>,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
}

/// One completed probe, as `mpathctl probes` streams them (ipmpstat -p).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRow {
    /// When the probe completed (answered or declared lost), in milliseconds since the Unix
    /// epoch (wall-clock time).
    pub time_unix_ms: u64,
    pub interface: String,
    pub seq: u32,
    pub target: IpAddr,
    /// Kernel-to-kernel round trip (send stamp to XDP receive stamp), microseconds; `None`
    /// when the probe was lost.
    pub net_rtt_us: Option<u64>,
    /// The round trip as mpathd saw it, from asking for the probe to handling its reply:
    /// its own scheduling and any wait for ARP/ND included. `None` when lost.
    pub rtt_us: Option<u64>,
    /// Smoothed round trip of the target, microseconds.
    pub rtt_avg_us: Option<u64>,
    pub rtt_dev_us: Option<u64>,
}
