//! Map keys, values and constants shared by mpath's eBPF programs (`mpath-ebpf`) and its
//! daemon (`mpath-ctl`).
//!
//! Every type is `#[repr(C)]` with fixed-width fields and explicit padding, so the kernel and
//! userspace agree on the layout byte for byte. Addresses are kept as network-order byte
//! arrays, exactly as they appear in packets.
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub mod checksum;
pub mod flow_hash;
pub mod sources;
pub mod transitive;

/// Buckets in each group's load-spreading table. A flow's hash picks one bucket; 256 buckets
/// give an even spread over up to dozens of NICs and let a NIC leave or join by moving only
/// the buckets it owns or takes.
pub const BUCKETS_PER_GROUP: u32 = 256;
/// Groups one datapath can serve; group ids index the bucket table.
pub const MAX_GROUPS: u32 = 64;
/// NICs one datapath can serve (all groups together); NIC slots index the counters.
pub const MAX_NICS: u32 = 256;
/// Group NICs must have an ifindex below this: the egress program finds its NIC by indexing
/// an array with the ifindex, which is much cheaper per packet than a hash lookup.
pub const MAX_IFINDEX: u32 = 1 << 16;
/// IPv4 test addresses per group that the spreading program keeps on their own NIC.
pub const MAX_TEST_ADDRESSES_PER_GROUP: usize = 16;
/// Size of the ring buffer of matched probe replies (bytes, a power of two of pages).
pub const PROBE_RING_BYTES: u32 = 256 * 1024;
/// Size of the ring buffer of carrier losses: a page holds 256 of them, more NICs than a
/// host loses at once.
pub const CARRIER_RING_BYTES: u32 = 4096;

/// ICMP / ICMPv6 echo identifier of mpathd's probes. Replies carrying another identifier are
/// not looked at further.
pub const PROBE_ICMP_ID: u16 = 0x4d50;
/// First word of a probe payload ("MPTH"), so a reply to someone else's echo request with a
/// colliding identifier is recognised as malformed rather than as ours.
pub const PROBE_MAGIC: u32 = 0x4d50_5448;

/// Version of the pinned layout; part of the pin path so a daemon never adopts maps whose
/// layout it does not understand (aya reuses a pinned map without checking it).
pub const PIN_LAYOUT_VERSION: &str = "v4";

/// Names of the maps, as pinned under `<pin dir>/<PIN_LAYOUT_VERSION>/maps/`.
pub mod map_names {
    pub const NICS: &str = "MPATH_NICS";
    pub const EGRESS_NICS: &str = "MPATH_EGRESS_NICS";
    pub const GROUP_TESTS: &str = "MPATH_GROUP_TESTS";
    pub const BUCKETS: &str = "MPATH_BUCKETS";
    pub const COUNTERS: &str = "MPATH_COUNTERS";
    pub const SETTINGS: &str = "MPATH_SETTINGS";
    pub const PROBE_REPLIES: &str = "MPATH_PROBE_REPLIES";
    pub const LAST_REPLY: &str = "MPATH_LAST_REPLY";
    pub const REPLY_BUDGETS: &str = "MPATH_REPLY_BUDGETS";
    pub const CARRIER_EVENTS: &str = "MPATH_CARRIER_EVENTS";
    pub const SOURCE_ROUTES: &str = "MPATH_SOURCE_ROUTES";
    pub const SOURCE_ROUTES4: &str = "MPATH_SOURCE_ROUTES4";
    pub const SOURCES: &str = "MPATH_SOURCES";
    pub const SOURCE_COUNTERS: &str = "MPATH_SOURCE_COUNTERS";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC egress (tcx) program that spreads outbound flows.
    pub const SPREAD: &str = "mpath_spread";
    /// TC ingress program that matches probe replies (the default).
    pub const PROBE_RX: &str = "mpath_probe_rx";
    /// XDP program that matches probe replies (opt-in: `probe_rx = "xdp"`).
    pub const PROBE_RX_XDP: &str = "mpath_probe_rx_xdp";
    /// fentry program on `netif_carrier_off` that reports a group NIC's carrier loss and
    /// marks it in the egress map.
    pub const CARRIER_OFF: &str = "mpath_carrier_off";
    /// fentry program on `netif_carrier_on` that clears that mark.
    pub const CARRIER_ON: &str = "mpath_carrier_on";
    /// cgroup `connect6` program that binds a connecting IPv6 socket to a group's source.
    pub const SOURCE_CONNECT6: &str = "mpath_source_connect6";
    /// cgroup `sendmsg6` program that gives an unconnected IPv6 datagram a group's source.
    pub const SOURCE_SENDMSG6: &str = "mpath_source_sendmsg6";
    /// cgroup `connect4` program: [`SOURCE_CONNECT6`] for IPv4 sockets.
    pub const SOURCE_CONNECT4: &str = "mpath_source_connect4";
    /// cgroup `sendmsg4` program: [`SOURCE_SENDMSG6`] for IPv4 datagrams.
    pub const SOURCE_SENDMSG4: &str = "mpath_source_sendmsg4";
}

/// What the datapath knows about one group NIC. Key: the NIC's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicInfo {
    /// Index of the NIC's counters in `COUNTERS` and of its last reply in `LAST_REPLY`.
    pub slot: u32,
    /// Index of the NIC's group in `BUCKETS`.
    pub group: u32,
    /// `NIC_F_*` bits.
    pub flags: u32,
    /// IPv4 test address (network order); meaningful with `NIC_F_TEST_V4`.
    pub test_v4: [u8; 4],
    /// IPv6 test address, the NIC's link-local one; meaningful with `NIC_F_TEST_V6`.
    pub test_v6: [u8; 16],
    /// The NIC's MAC, written as source into packets redirected to it.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl NicInfo {
    /// The IPv4 test address the XDP program matches replies against, if the NIC has one.
    pub fn ipv4_test(&self) -> Option<Ipv4Addr> {
        (self.flags & NIC_F_TEST_V4 != 0).then_some(Ipv4Addr::from(self.test_v4))
    }

    /// The IPv6 test address (link-local) the XDP program matches replies against.
    pub fn ipv6_test(&self) -> Option<Ipv6Addr> {
        (self.flags & NIC_F_TEST_V6 != 0).then_some(Ipv6Addr::from(self.test_v6))
    }

    pub fn set_ipv4_test(&mut self, addr: Option<Ipv4Addr>) {
        self.test_v4 = addr.map_or([0; 4], |a| a.octets());
        self.set_flag(NIC_F_TEST_V4, addr.is_some());
    }

    pub fn set_ipv6_test(&mut self, addr: Option<Ipv6Addr>) {
        self.test_v6 = addr.map_or([0; 16], |a| a.octets());
        self.set_flag(NIC_F_TEST_V6, addr.is_some());
    }

    pub fn offline(&self) -> bool {
        self.flags & NIC_F_OFFLINE != 0
    }

    pub fn set_offline(&mut self, offline: bool) {
        self.set_flag(NIC_F_OFFLINE, offline);
    }

    fn set_flag(&mut self, flag: u32, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }
}

/// What the egress program needs of a group NIC. Index: the NIC's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressNic {
    /// `EGRESS_F_*` bits.
    pub flags: u16,
    pub group: u16,
    pub slot: u16,
    pub _pad: u16,
}

/// The ifindex is a group NIC; an entry without it is not mpath's and its packets are left
/// alone.
pub const EGRESS_F_PRESENT: u16 = 1 << 0;
/// The kernel's routes (a resilient nexthop group over the usable NICs) send this NIC its
/// share of flows and it is usable: its packets stay where they are, skipping the flow hash,
/// the bucket lookup and the ~190 ns redirect. Without it (bucket mode, or a NIC that just
/// became unusable) packets go to their flow's bucket NIC.
pub const EGRESS_F_ROUTED: u16 = 1 << 1;
/// The NIC's driver reported its carrier gone, as the carrier hook saw it, ahead of the
/// kernel's link event and of mpathd: its packets go to their flow's bucket NIC at once,
/// skipping buckets whose NIC has lost its carrier too. The hook on `netif_carrier_on`
/// clears it; mpathd only keeps it when it rewrites the entry.
pub const EGRESS_F_NO_CARRIER: u16 = 1 << 2;

impl EgressNic {
    /// Whether the ifindex is a group NIC (`EGRESS_F_PRESENT`).
    #[inline(always)]
    pub const fn is_present(&self) -> bool {
        self.flags & EGRESS_F_PRESENT != 0
    }

    /// Whether the routes already spread flows onto this NIC (`EGRESS_F_ROUTED`).
    #[inline(always)]
    pub const fn is_routed(&self) -> bool {
        self.flags & EGRESS_F_ROUTED != 0
    }

    /// Whether the NIC has its carrier, as far as the carrier hook knows
    /// (`EGRESS_F_NO_CARRIER` clear).
    #[inline(always)]
    pub const fn has_carrier(&self) -> bool {
        self.flags & EGRESS_F_NO_CARRIER == 0
    }
}

/// The NIC owning a test address, where packets from that address must leave.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestOwner {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The IPv4 test addresses of one group, scanned linearly by the egress program (a few
/// compares beat a hash lookup). Index: the group id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTests {
    pub count: u32,
    pub addrs: [[u8; 4]; MAX_TEST_ADDRESSES_PER_GROUP],
    pub owners: [TestOwner; MAX_TEST_ADDRESSES_PER_GROUP],
}

/// The NIC has an IPv4 test address and probes from it.
pub const NIC_F_TEST_V4: u32 = 1 << 0;
/// The NIC probes over IPv6 from its link-local address.
pub const NIC_F_TEST_V6: u32 = 1 << 1;
/// The NIC answers the link-layer probes of its group's alternates ([`transitive`]): mpathd
/// sets it on an active NIC whose own probes succeed, so that an alternate reaching it is
/// healthy itself.
pub const NIC_F_ANSWERS_LINK: u32 = 1 << 3;
/// An operator took the NIC offline. The programs ignore it: it is kept in the pinned map so
/// that a restarted mpathd (kill -9, upgrade) keeps the NIC offline, as Solaris keeps
/// IFF_OFFLINE in the kernel across in.mpathd restarts.
pub const NIC_F_OFFLINE: u32 = 1 << 2;

/// One bucket of a group's spreading table: the NIC that carries the flows hashing here.
/// Key: `group * BUCKETS_PER_GROUP + bucket`. An all-zero entry (ifindex 0) means "leave the
/// packet where the kernel routed it".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub ifindex: u32,
    /// Source MAC written into packets redirected to this NIC.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Why the XDP program refused a packet that looked like a reply to one of mpathd's probes.
/// Values index `NicCounters::rejected`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The frame ends before the headers or the probe payload do.
    Truncated = 0,
    /// An IP fragment: probes are never fragmented, so a fragment is not trusted.
    Fragmented = 1,
    /// Sent to an address other than this NIC's test address.
    WrongDestination = 2,
    /// The payload names another NIC: the reply came in on the wrong one.
    WrongNic = 3,
    /// The payload's tag is not the keyed hash of its NIC and sequence number under this
    /// run's probe key: forged, or left from an earlier run.
    BadTag = 4,
    /// Lengths, magic or sequence fields do not add up.
    Malformed = 5,
    /// The ICMP checksum does not match.
    BadChecksum = 6,
}

impl RejectReason {
    pub const COUNT: usize = 7;
    pub const ALL: [RejectReason; Self::COUNT] = [
        RejectReason::Truncated,
        RejectReason::Fragmented,
        RejectReason::WrongDestination,
        RejectReason::WrongNic,
        RejectReason::BadTag,
        RejectReason::Malformed,
        RejectReason::BadChecksum,
    ];

    /// Label used in views and metrics.
    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::Truncated => "truncated",
            RejectReason::Fragmented => "fragmented",
            RejectReason::WrongDestination => "wrong_destination",
            RejectReason::WrongNic => "wrong_nic",
            RejectReason::BadTag => "bad_tag",
            RejectReason::Malformed => "malformed",
            RejectReason::BadChecksum => "bad_checksum",
        }
    }
}

/// Replies to probes of one target that one NIC may queue on one CPU per
/// [`PROBE_REPLY_WINDOW_NS`]. mpathd's probes bring at most about 150 a second (both families
/// at the shortest FDT), so only a flood (replayed replies, say) meets it: the rest of that
/// NIC's window is dropped, and the ring buffer keeps room for the other NICs' replies.
pub const PROBE_REPLY_BUDGET: u32 = 256;
/// Replies to discovery echoes (to 224.0.0.1 or ff02::1) that one NIC may queue on one CPU
/// per window: a budget of their own, because every host on the link may answer each echo,
/// and they must never spend the budget the target probes' replies depend on. mpathd keeps
/// at most five responders (in.mpathd's `MAX_PROBE_TARGETS`); the rest cost only targets it
/// does not need.
pub const PROBE_DISCOVERY_REPLY_BUDGET: u32 = 64;
pub const PROBE_REPLY_WINDOW_NS: u64 = 1_000_000_000;

/// One NIC's use of its reply budgets on one CPU. Index: the NIC's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyBudget {
    /// When the current window began (bpf_ktime_get_ns).
    pub window_start_ns: u64,
    /// Target probes' replies queued in the current window.
    pub used: u32,
    /// Discovery echoes' replies queued in the current window.
    pub discovery_used: u32,
    /// Matched replies dropped over either budget, ever.
    pub dropped: u64,
}

/// Per-NIC, per-CPU counters. Index: the NIC's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Packets and bytes that left through this NIC after spreading.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets the kernel routed to this NIC that spreading sent out through another one.
    pub redirected_packets: u64,
    pub redirected_bytes: u64,
    /// Everything received on this NIC.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Probe replies matched and handed to mpathd.
    pub probe_replies: u64,
    /// Matched replies that could not be queued because the ring buffer was full.
    pub probe_replies_lost: u64,
    /// Probes whose ICMP checksum could not be fixed up after the send time was written into
    /// them: they leave with a wrong checksum, the target drops them, and mpathd counts them
    /// as lost. Without this count that loss would look like the path's.
    pub probe_checksum_failed: u64,
    /// Link-layer probes of the group's alternates that this NIC answered
    /// ([`transitive`]).
    pub link_probes_answered: u64,
    /// Rejected probe replies, by `RejectReason`.
    pub rejected: [u64; RejectReason::COUNT],
}

impl NicCounters {
    /// Sums the per-CPU copies of one NIC's counters.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a NicCounters>) -> NicCounters {
        let mut total = NicCounters::default();
        for c in per_cpu {
            total.tx_packets += c.tx_packets;
            total.tx_bytes += c.tx_bytes;
            total.redirected_packets += c.redirected_packets;
            total.redirected_bytes += c.redirected_bytes;
            total.rx_packets += c.rx_packets;
            total.rx_bytes += c.rx_bytes;
            total.probe_replies += c.probe_replies;
            total.probe_replies_lost += c.probe_replies_lost;
            total.probe_checksum_failed += c.probe_checksum_failed;
            total.link_probes_answered += c.link_probes_answered;
            for (t, r) in total.rejected.iter_mut().zip(c.rejected.iter()) {
                *t += r;
            }
        }
        total
    }
}

/// Datapath-wide settings written by mpathd. Index 0 of `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The running mpathd's random SipHash key for probe tags ([`probe_tag`]). It never
    /// leaves the host, so no one else can make a tag that the XDP program accepts.
    pub probe_key: [u64; 2],
}

/// The payload of every probe, echoed back by the target. Native byte order: only this
/// host writes and reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbePayload {
    pub magic: u32,
    /// ifindex of the NIC the probe left through.
    pub ifindex: u32,
    /// Full sequence number; the ICMP header carries its low 16 bits.
    pub seq: u32,
    /// A [`ProbeKind`] as its number.
    pub kind: u32,
    /// [`probe_tag`] of `ifindex`, `seq` and `kind`: a host that saw some probes cannot make
    /// a reply to another one, nor turn one NIC's probe into a reply for another NIC, nor a
    /// discovery answer into a target's reply.
    pub tag: u64,
    /// CLOCK_MONOTONIC nanoseconds when mpathd handed the probe to the kernel.
    pub sent_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds when the probe left the host, stamped by the egress
    /// program (0 if it was not): time spent waiting for ARP/ND or in qdiscs is not
    /// network round trip.
    pub wire_ns: u64,
}

impl ProbePayload {
    /// `None` for a kind this build does not know, or one no ICMP probe has (a link-layer
    /// probe's): no probe of this host's.
    #[inline(always)]
    pub fn kind(&self) -> Option<ProbeKind> {
        ProbeKind::from_u32(self.kind).filter(|kind| *kind != ProbeKind::Transitive)
    }
}

/// What a probe asks for, and so which reply budget its answers draw from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// An echo to one probe target.
    Target = 0,
    /// An echo to every host on the link (224.0.0.1, ff02::1) to find targets.
    Discovery = 1,
    /// A link-layer probe of an alternate to an active NIC of its group
    /// ([`transitive::LinkProbe`]).
    Transitive = 2,
}

impl ProbeKind {
    #[inline(always)]
    pub fn from_u32(value: u32) -> Option<ProbeKind> {
        match value {
            0 => Some(ProbeKind::Target),
            1 => Some(ProbeKind::Discovery),
            2 => Some(ProbeKind::Transitive),
            _ => None,
        }
    }
}

/// Offset of [`ProbePayload::wire_ns`] in the ICMP message (after the 8-byte echo header).
pub const PROBE_WIRE_NS_OFFSET: usize = 8 + core::mem::offset_of!(ProbePayload, wire_ns);

/// The tag of probe `seq` of `kind` on NIC `ifindex`: SipHash-2-4 under the run's probe key,
/// over the 8 bytes `ifindex` and `seq` (both little-endian), with the top two bits of
/// `ifindex` (never set in a real one) saying the kind: none for a target's probe, the top
/// one for a discovery echo, the next for a link-layer probe. Both bits set is the answer of
/// a NIC to a link-layer probe ([`transitive::answer_tag`]). Shared by mpathd, which writes
/// it, and the programs, which check it.
#[inline(always)]
pub fn probe_tag(key: [u64; 2], ifindex: u32, seq: u32, kind: ProbeKind) -> u64 {
    let kind_bits = match kind {
        ProbeKind::Target => 0,
        ProbeKind::Discovery => 1 << 31,
        ProbeKind::Transitive => 1 << 30,
    };
    keyed_word(key, ifindex | kind_bits, seq)
}

/// SipHash-2-4 under `key` of `low` and `high` as one little-endian 8-byte word.
#[inline(always)]
fn keyed_word(key: [u64; 2], low: u32, high: u32) -> u64 {
    siphash_2_4_u64(key, u64::from(low) | (u64::from(high) << 32))
}

/// SipHash-2-4 of one 8-byte message `m` (read as a little-endian word). Straight-line
/// code: small and easy for the verifier.
#[inline(always)]
fn siphash_2_4_u64(key: [u64; 2], m: u64) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    // The message block, then the final block: the length (8) in the top byte.
    for block in [m, 8 << 56] {
        v[3] ^= block;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= block;
    }
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// Length of a probe's ICMP message: the 8-byte echo header and the payload.
pub const PROBE_ICMP_LEN: usize = 8 + core::mem::size_of::<ProbePayload>();

/// [`ProbeReply::family`] of a NIC's answer to a link-layer probe ([`transitive`]).
pub const LINK_FAMILY: u32 = 0;

/// A matched probe reply, queued in `PROBE_REPLIES` and kept as `LAST_REPLY` of its NIC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeReply {
    pub ifindex: u32,
    pub seq: u32,
    /// 4 or 6, or [`LINK_FAMILY`] for a NIC's answer to a link-layer probe.
    pub family: u32,
    /// The [`ProbeKind`] of the probe answered, as its number.
    pub kind: u32,
    /// The replying target; IPv4 in the first 4 bytes. For a link-layer answer, the
    /// answering NIC: its MAC in the first 6 bytes, its ifindex in bytes 8 to 11.
    pub target: [u8; 16],
    /// From the payload: when mpathd sent the probe (CLOCK_MONOTONIC ns).
    pub sent_ns: u64,
    /// From the payload: when the probe left through TC egress (0: not stamped).
    pub wire_ns: u64,
    /// When XDP saw the reply (bpf_ktime_get_ns, CLOCK_MONOTONIC ns).
    pub received_ns: u64,
}

impl ProbeReply {
    /// The reply `target` gave to probe `seq` of `ifindex`, as the XDP program records it:
    /// the probe left at `sent_ns`, the reply came at `received_ns` (CLOCK_MONOTONIC).
    pub fn new(ifindex: u32, seq: u32, target: IpAddr, sent_ns: u64, received_ns: u64) -> Self {
        let mut reply = ProbeReply {
            ifindex,
            seq,
            sent_ns,
            received_ns,
            ..Default::default()
        };
        match target {
            IpAddr::V4(v4) => {
                reply.family = 4;
                reply.target[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                reply.family = 6;
                reply.target = v6.octets();
            }
        }
        reply
    }

    /// `None` for a kind this build does not know.
    pub fn kind(&self) -> Option<ProbeKind> {
        ProbeKind::from_u32(self.kind)
    }

    /// The answer of NIC `responder` (MAC `mac`) to link-layer probe `seq` of `ifindex`, as
    /// the ingress program records it.
    #[inline(always)]
    pub fn link_answer(
        ifindex: u32,
        seq: u32,
        responder: u32,
        mac: [u8; 6],
        sent_ns: u64,
        received_ns: u64,
    ) -> Self {
        let mut target = [0; 16];
        target[..6].copy_from_slice(&mac);
        target[8..12].copy_from_slice(&responder.to_ne_bytes());
        ProbeReply {
            ifindex,
            seq,
            family: LINK_FAMILY,
            kind: ProbeKind::Transitive as u32,
            target,
            sent_ns,
            wire_ns: 0,
            received_ns,
        }
    }

    /// The NIC that answered a link-layer probe, its ifindex and MAC; `None` for a reply to
    /// an ICMP probe.
    pub fn responder(&self) -> Option<(u32, [u8; 6])> {
        if self.family != LINK_FAMILY {
            return None;
        }
        let [a, b, c, d, e, f, _, _, i0, i1, i2, i3, ..] = self.target;
        Some((u32::from_ne_bytes([i0, i1, i2, i3]), [a, b, c, d, e, f]))
    }

    /// The target that replied (for a reply to an ICMP probe).
    pub fn target(&self) -> IpAddr {
        if self.family == 4 {
            let [a, b, c, d, ..] = self.target;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.target))
        }
    }

    /// When the probe left: the egress program's stamp when it made one (a probe that
    /// waited for ARP/ND left later than mpathd sent it), else mpathd's send time.
    pub fn left_ns(&self) -> u64 {
        if self.wire_ns != 0 {
            self.wire_ns
        } else {
            self.sent_ns
        }
    }

    /// A record of the `PROBE_REPLIES` ring buffer; `None` when it is not one whole record.
    #[cfg(feature = "user")]
    pub fn from_record(record: &[u8]) -> Option<ProbeReply> {
        if record.len() != core::mem::size_of::<ProbeReply>() {
            return None;
        }
        // SAFETY: the length is checked and every bit pattern is a valid ProbeReply (see
        // the Pod impl below); the read makes no alignment assumption.
        Some(unsafe { record.as_ptr().cast::<ProbeReply>().read_unaligned() })
    }
}

/// A group NIC's carrier went, as the driver said it (`netif_carrier_off`), queued in
/// `CARRIER_EVENTS` before the kernel's own link event, which linkwatch may hold back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarrierEvent {
    pub ifindex: u32,
    pub _pad: u32,
    /// When (bpf_ktime_get_ns, CLOCK_MONOTONIC ns).
    pub time_ns: u64,
}

impl CarrierEvent {
    /// A record of the `CARRIER_EVENTS` ring buffer; `None` when it is not one whole record.
    #[cfg(feature = "user")]
    pub fn from_record(record: &[u8]) -> Option<CarrierEvent> {
        if record.len() != core::mem::size_of::<CarrierEvent>() {
            return None;
        }
        // SAFETY: the length is checked and every bit pattern is a valid CarrierEvent; the
        // read makes no alignment assumption.
        Some(unsafe { record.as_ptr().cast::<CarrierEvent>().read_unaligned() })
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all these types are repr(C), made of integers and byte arrays with explicit
    // padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for NicInfo {}
    unsafe impl aya::Pod for EgressNic {}
    unsafe impl aya::Pod for GroupTests {}
    unsafe impl aya::Pod for Bucket {}
    unsafe impl aya::Pod for NicCounters {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for ProbeReply {}
    unsafe impl aya::Pod for ReplyBudget {}
    unsafe impl aya::Pod for CarrierEvent {}
    unsafe impl aya::Pod for sources::SourceRoute {}
    unsafe impl aya::Pod for sources::SourceSet {}
    unsafe impl aya::Pod for sources::SourceCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<NicInfo>(), 4 * 3 + 4 + 16 + 8);
        assert_eq!(size_of::<Bucket>(), 12);
        assert_eq!(size_of::<EgressNic>(), 8);
        assert_eq!(size_of::<GroupTests>(), 4 + 16 * 4 + 16 * 12);
        assert_eq!(size_of::<NicCounters>(), 8 * (10 + RejectReason::COUNT));
        assert_eq!(size_of::<ProbePayload>(), 40);
        assert_eq!(size_of::<ProbeReply>(), 16 + 16 + 24);
        assert_eq!(size_of::<Settings>(), 16);
        assert_eq!(size_of::<ReplyBudget>(), 24);
        assert_eq!(PROBE_ICMP_LEN, 48);
        assert_eq!(PROBE_WIRE_NS_OFFSET, 40);
    }

    #[test]
    fn test_addresses_are_set_and_cleared_with_their_flag() {
        let v4 = Ipv4Addr::new(192, 0, 2, 10);
        let v6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        let mut info = NicInfo::default();
        assert_eq!((info.ipv4_test(), info.ipv6_test()), (None, None));
        info.set_ipv4_test(Some(v4));
        info.set_ipv6_test(Some(v6));
        assert_eq!(info.flags, NIC_F_TEST_V4 | NIC_F_TEST_V6);
        assert_eq!((info.ipv4_test(), info.ipv6_test()), (Some(v4), Some(v6)));
        info.set_ipv4_test(None);
        assert_eq!((info.ipv4_test(), info.ipv6_test()), (None, Some(v6)));
        assert_eq!((info.flags, info.test_v4), (NIC_F_TEST_V6, [0; 4]));
    }

    #[test]
    fn a_reply_names_its_target_in_its_family_and_prefers_the_wire_stamp() {
        let mut reply = ProbeReply {
            family: 4,
            sent_ns: 100,
            ..Default::default()
        };
        reply.target[..4].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(reply.target(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(ProbeReply::new(0, 0, reply.target(), 100, 0), reply);
        assert_eq!(reply.left_ns(), 100, "not stamped on the wire");
        reply.wire_ns = 150;
        assert_eq!(reply.left_ns(), 150);
        reply.family = 6;
        reply.target = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets();
        assert_eq!(reply.target(), "2001:db8::1".parse::<IpAddr>().unwrap());
        let made = ProbeReply::new(0, 0, reply.target(), 100, 0);
        assert_eq!((made.family, made.target), (6, reply.target));
    }

    #[test]
    fn egress_flags_read_their_own_bit() {
        let nic = |flags| EgressNic {
            flags,
            ..Default::default()
        };
        assert!(!nic(0).is_present() && !nic(0).is_routed());
        assert!(nic(EGRESS_F_PRESENT).is_present() && !nic(EGRESS_F_PRESENT).is_routed());
        let both = nic(EGRESS_F_PRESENT | EGRESS_F_ROUTED);
        assert!(both.is_present() && both.is_routed());
    }

    #[test]
    fn probe_tags_are_siphash_2_4() {
        // The reference implementation's test vector for an 8-byte message: key 00..0f,
        // message 00..07.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        assert_eq!(
            probe_tag(key, 0x0302_0100, 0x0706_0504, ProbeKind::Target),
            0x93f5_f579_9a93_2462
        );
    }

    #[test]
    fn probe_tags_agree_with_the_siphasher_crate() {
        use core::hash::Hasher as _;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            // splitmix64: varied keys and messages without a random source in no_std.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for _ in 0..1000 {
            let key = [next(), next()];
            let (ifindex, seq) = (next() as u32 >> 1, next() as u32);
            let mut hasher = siphasher::sip::SipHasher24::new_with_keys(key[0], key[1]);
            hasher.write(&(u64::from(ifindex) | (u64::from(seq) << 32)).to_le_bytes());
            assert_eq!(
                probe_tag(key, ifindex, seq, ProbeKind::Target),
                hasher.finish()
            );
        }
    }

    #[test]
    fn a_probe_tag_changes_with_every_input() {
        let key = [1, 2];
        let tag = |key, ifindex, seq| probe_tag(key, ifindex, seq, ProbeKind::Target);
        let first = tag(key, 7, 1000);
        assert_ne!(first, tag(key, 8, 1000));
        assert_ne!(first, tag(key, 7, 1001));
        assert_ne!(first, tag([1, 3], 7, 1000));
        assert_ne!(first, tag([2, 2], 7, 1000));
        assert_ne!(first, probe_tag(key, 7, 1000, ProbeKind::Discovery));
        assert_eq!(first, tag(key, 7, 1000));
    }

    #[test]
    fn reject_reasons_index_their_counters() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn counters_sum_over_cpus() {
        let mut a = NicCounters {
            tx_packets: 2,
            rx_bytes: 100,
            ..Default::default()
        };
        a.rejected[RejectReason::BadTag as usize] = 1;
        let mut b = a;
        b.rejected[RejectReason::Truncated as usize] = 3;
        let s = NicCounters::sum([&a, &b]);
        assert_eq!(s.tx_packets, 4);
        assert_eq!(s.rx_bytes, 200);
        assert_eq!(s.rejected[RejectReason::BadTag as usize], 2);
        assert_eq!(s.rejected[RejectReason::Truncated as usize], 3);
    }
}
