//! The maps mpathd and the programs share. All are pinned by name, so a restarted mpathd
//! adopts the running datapath (and its state) instead of building a new one.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use mpath_common::{
    BUCKETS_PER_GROUP, Bucket, CARRIER_RING_BYTES, EgressNic, GroupTests, MAX_GROUPS, MAX_IFINDEX,
    MAX_NICS, NicCounters, NicInfo, PROBE_RING_BYTES, ProbeReply, ReplyBudget, Settings,
    sources::{MAX_SOURCE_ROUTES, SOURCE_SETS, SourceCounters, SourceRoute, SourceSet},
};

/// Group NICs by ifindex, for the probe-reply program. A NIC missing here is not mpath's:
/// its packets are left alone.
#[map(name = "MPATH_NICS")]
pub(crate) static NICS: HashMap<u32, NicInfo> = HashMap::pinned(MAX_NICS, 0);

/// The same NICs for the egress program, indexed by ifindex: an array lookup costs a few ns
/// on every transmitted packet where a hash lookup costs tens. Its `EGRESS_F_ROUTED` bit says
/// the kernel's routes already place the NIC's flows, so its packets skip spreading.
#[map(name = "MPATH_EGRESS_NICS")]
pub(crate) static EGRESS_NICS: Array<EgressNic> = Array::pinned(MAX_IFINDEX, 0);

/// Each group's IPv4 test addresses and their NICs. Packets from a test address must leave
/// through that NIC, whatever the routing or the spreading says.
#[map(name = "MPATH_GROUP_TESTS")]
pub(crate) static GROUP_TESTS: Array<GroupTests> = Array::pinned(MAX_GROUPS, 0);

/// Spreading tables of all groups, `BUCKETS_PER_GROUP` entries per group, indexed by
/// `group * BUCKETS_PER_GROUP + flow hash % BUCKETS_PER_GROUP`. mpathd fills them with the
/// group's usable NICs, moving as few buckets as possible when that set changes.
#[map(name = "MPATH_BUCKETS")]
pub(crate) static BUCKETS: Array<Bucket> = Array::pinned(MAX_GROUPS * BUCKETS_PER_GROUP, 0);

/// Per-NIC counters, per CPU so the hot path needs no atomics. Index: `NicInfo::slot`.
#[map(name = "MPATH_COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<NicCounters> = PerCpuArray::pinned(MAX_NICS, 0);

/// Datapath-wide settings (one entry): the probe key of the running mpathd.
#[map(name = "MPATH_SETTINGS")]
pub(crate) static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Matched probe replies, in arrival order, for mpathd to consume.
#[map(name = "MPATH_PROBE_REPLIES")]
pub(crate) static PROBE_REPLIES: RingBuf = RingBuf::pinned(PROBE_RING_BYTES, 0);

/// Carrier losses of group NICs from the carrier hook, for mpathd to consume. Not pinned:
/// the hook lives and dies with the mpathd that attached it.
#[map(name = "MPATH_CARRIER_EVENTS")]
pub(crate) static CARRIER_EVENTS: RingBuf = RingBuf::with_byte_size(CARRIER_RING_BYTES, 0);

/// The last matched reply of each NIC (index: slot), for inspection with `mpathctl maps`
/// without consuming the ring buffer.
#[map(name = "MPATH_LAST_REPLY")]
pub(crate) static LAST_REPLY: Array<ProbeReply> = Array::pinned(MAX_NICS, 0);

/// Each NIC's reply budget on this CPU (index: slot; see
/// [`mpath_common::PROBE_REPLY_BUDGET`]), so that one NIC's flood cannot fill the ring buffer
/// the others' replies need.
#[map(name = "MPATH_REPLY_BUDGETS")]
pub(crate) static REPLY_BUDGETS: PerCpuArray<ReplyBudget> = PerCpuArray::pinned(MAX_NICS, 0);

/// mpathd's IPv6 routing table as the source hook needs it: by destination prefix, the group
/// whose route serves it, or none where the table throws the lookup on to `main`. Longest
/// match, as the kernel's lookup in that table.
#[map(name = "MPATH_SOURCE_ROUTES")]
pub(crate) static SOURCE_ROUTES: LpmTrie<[u8; 16], SourceRoute> =
    LpmTrie::pinned(MAX_SOURCE_ROUTES, 0);

/// mpathd's IPv4 routing table as the source hook needs it: the group of each on-link prefix
/// a group serves, none for every other prefix (gateways give each NIC's flows its own
/// address already, and `throw` routes go on to `main`).
#[map(name = "MPATH_SOURCE_ROUTES4")]
pub(crate) static SOURCE_ROUTES4: LpmTrie<[u8; 4], SourceRoute> =
    LpmTrie::pinned(MAX_SOURCE_ROUTES, 0);

/// Each group's placed data addresses, one set per source class (index:
/// `sources::set_index`; IPv4 ones IPv4-mapped): the sources the hook picks from.
#[map(name = "MPATH_SOURCES")]
pub(crate) static SOURCES: Array<SourceSet> = Array::pinned(SOURCE_SETS, 0);

/// What the source hook did, per group id and CPU.
#[map(name = "MPATH_SOURCE_COUNTERS")]
pub(crate) static SOURCE_COUNTERS: PerCpuArray<SourceCounters> = PerCpuArray::pinned(MAX_GROUPS, 0);

/// Runs `f` on this CPU's counters of the NIC in `slot`.
#[inline(always)]
pub(crate) fn count(slot: u32, f: impl FnOnce(&mut NicCounters)) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU map value; programs on this CPU do not run concurrently with us.
        f(unsafe { &mut *c });
    }
}
