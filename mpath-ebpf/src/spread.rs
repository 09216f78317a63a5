//! TC egress (tcx): spreads a group's outbound flows over its usable NICs.
//!
//! The kernel routes a packet to one group NIC; this program looks up the flow's bucket in the
//! group's table and, when the bucket belongs to another NIC, rewrites the source MAC and
//! redirects the packet there. A flow always hashes to the same bucket, so its packets keep
//! their order. The redirected packet runs this program again on the chosen NIC, which finds
//! itself in the bucket and lets the packet go.
//!
//! In routes mode the kernel spreads flows itself (a resilient nexthop group over the usable
//! NICs) and marks those NICs `EGRESS_F_ROUTED`: their packets stay put, with no flow hash and
//! no bucket lookup. Only packets leaving an unusable NIC (traffic that bypassed the group's
//! routes, or sent just before a route update) still move to their flow's bucket NIC, and
//! those leaving a NIC the carrier hook marked `EGRESS_F_NO_CARRIER`: its driver lost the
//! carrier and neither mpathd nor the kernel's routes know yet.
//!
//! Probes never spread (they leave from a test address or a link-local one); this program
//! stamps them with the time they leave, for the kernel-measured round trip.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use mpath_common::{
    BUCKETS_PER_GROUP, EgressNic, MAX_TEST_ADDRESSES_PER_GROUP, PROBE_ICMP_ID, PROBE_ICMP_LEN,
    PROBE_MAGIC, PROBE_WIRE_NS_OFFSET, flow_hash,
};

use crate::{
    maps::{BUCKETS, EGRESS_NICS, GROUP_TESTS, count},
    packet::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV6_HLEN, Packet},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// ICMPv6 router solicitation .. redirect: neighbour discovery stays on its NIC.
const ND_TYPES: core::ops::RangeInclusive<u8> = 133..=137;

/// The NIC a packet must leave through, when not the one the kernel chose.
struct Egress {
    ifindex: u32,
    mac: [u8; 6],
}

/// Marks a packet in `cb[0]` as redirected by this program, so that its second pass on the
/// chosen NIC's egress skips the choice made already. A clobbered mark only costs that second
/// pass the full path, which picks the same NIC.
const REDIRECTED: u32 = 0x4d50_5244;

/// TC_ACT_UNSPEC lets the packet continue (tcx: on to the next program, then out).
#[classifier]
pub(crate) fn mpath_spread(mut ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(nic) = EGRESS_NICS.get(ifindex).filter(|n| n.is_present()) else {
        return TC_ACT_UNSPEC;
    };
    let len = u64::from(ctx.len());
    let already_spread = ctx.cb()[0] == REDIRECTED;
    if already_spread {
        ctx.cb_mut()[0] = 0;
    } else if let Some(to) = choose_egress(&ctx, nic, ifindex)
        && to.ifindex != ifindex
        && ctx.store(6, &to.mac, 0).is_ok()
    {
        count(u32::from(nic.slot), |c| {
            c.redirected_packets += 1;
            c.redirected_bytes += len;
        });
        ctx.cb_mut()[0] = REDIRECTED;
        // SAFETY: plain helper call; flags 0 sends the packet out of `to`'s egress.
        return unsafe { bpf_redirect(to.ifindex, 0) } as i32;
    }
    count(u32::from(nic.slot), |c| {
        c.tx_packets += 1;
        c.tx_bytes += len;
    });
    TC_ACT_UNSPEC
}

/// Picks the NIC a packet must leave through; `None` keeps it where the kernel routed it
/// (also when it cannot be parsed). On a routed NIC only test addresses move, and probes are
/// stamped: the flow hash and the bucket are for packets the routes did not place.
#[inline(always)]
fn choose_egress(ctx: &TcContext, nic: &EgressNic, ifindex: u32) -> Option<Egress> {
    let packet = Packet::of_tc(ctx);
    let eth: &EthHdr = packet.ref_at(0)?;
    // Broadcast and multicast (ARP, ND, MLD, IGMP...) belong to the link they were sent on.
    if eth.dst_addr[0] & 1 != 0 {
        return None;
    }
    // The socket's flow hash when it set one (TCP, connected UDP): free and stable per flow.
    // SAFETY: the context pointer is valid for the duration of the program.
    let mut hash = unsafe { (*ctx.skb.skb).hash };
    match u16::from_be(eth.ether_type) {
        ETH_P_IPV4 => {
            let ip: &Ipv4Hdr = packet.ref_at(ETH_HLEN)?;
            let ihl = usize::from(ip.vihl & 0x0f) * 4;
            if let Some(owner) = test_address_owner(u32::from(nic.group), ip.src_addr) {
                if ip.proto == IPPROTO_ICMP {
                    stamp_probe(ctx, nic.slot, ETH_HLEN + ihl, ICMP_ECHO_REQUEST);
                }
                return Some(owner);
            }
            if nic.is_routed() && nic.has_carrier() {
                return None;
            }
            if hash == 0 {
                // Ports only when the packet is not a fragment: all pieces of a datagram
                // must go the same way.
                let whole = u16::from_be_bytes(ip.frags) & 0x3fff == 0;
                let ports = if whole && has_ports(ip.proto) {
                    ports_at(packet, ETH_HLEN + ihl)
                } else {
                    [0; 4]
                };
                hash = flow_hash::v4(ip.src_addr, ip.dst_addr, ip.proto, ports);
            }
        }
        ETH_P_IPV6 => {
            let ip: &Ipv6Hdr = packet.ref_at(ETH_HLEN)?;
            // Link-local sources (IPv6 probes among them) are bound to their link.
            if ip.src_addr[0] == 0xfe && ip.src_addr[1] & 0xc0 == 0x80 {
                if ip.next_hdr == IPPROTO_ICMPV6 {
                    stamp_probe(ctx, nic.slot, ETH_HLEN + IPV6_HLEN, ICMPV6_ECHO_REQUEST);
                }
                return None;
            }
            if nic.is_routed() && nic.has_carrier() {
                return None;
            }
            if ip.next_hdr == IPPROTO_ICMPV6 {
                let kind: &u8 = packet.ref_at(ETH_HLEN + IPV6_HLEN)?;
                if ND_TYPES.contains(kind) {
                    return None;
                }
            }
            if hash == 0 {
                let ports = if has_ports(ip.next_hdr) {
                    ports_at(packet, ETH_HLEN + IPV6_HLEN)
                } else {
                    [0; 4]
                };
                hash = flow_hash::v6(&ip.src_addr, &ip.dst_addr, ip.next_hdr, ports);
            }
        }
        _ => return None,
    }
    bucket_nic(nic, ifindex, hash)
}

/// Buckets tried, the flow's own first, when NICs have lost their carrier (before mpathd has
/// rewritten the table): spread evenly over the table, they meet every NIC whose share is
/// one run of at least `BUCKETS_PER_GROUP / CARRIER_DETOUR_BUCKETS` buckets, as a fresh
/// table gives each NIC (runs of 128 for 2 NICs, 16 for 16).
const CARRIER_DETOUR_BUCKETS: u32 = 16;
const CARRIER_DETOUR_STRIDE: u32 = BUCKETS_PER_GROUP / CARRIER_DETOUR_BUCKETS;

/// The NIC of the flow's bucket. When that NIC has no carrier (the carrier hook's mark, set
/// before mpathd rewrote the table), the flow goes to the first of the buckets
/// `CARRIER_DETOUR_STRIDE` apart whose NIC has one: the same choice for every packet of the
/// flow, until mpathd's table replaces it.
#[inline(always)]
fn bucket_nic(nic: &EgressNic, ifindex: u32, hash: u32) -> Option<Egress> {
    let first = u32::from(nic.group) * BUCKETS_PER_GROUP;
    for step in 0..CARRIER_DETOUR_BUCKETS {
        let detour = step * CARRIER_DETOUR_STRIDE;
        let bucket = BUCKETS.get(first + hash.wrapping_add(detour) % BUCKETS_PER_GROUP)?;
        if bucket.ifindex == 0 {
            return None;
        }
        // The usual case costs no second lookup: the flow stays on a NIC with carrier.
        let has_carrier = if bucket.ifindex == ifindex {
            nic.has_carrier()
        } else {
            EGRESS_NICS
                .get(bucket.ifindex)
                .is_some_and(EgressNic::has_carrier)
        };
        if has_carrier {
            return Some(Egress {
                ifindex: bucket.ifindex,
                mac: bucket.mac,
            });
        }
    }
    None
}

/// Writes the kernel time into the payload of one of mpathd's probes (an echo request of
/// `request` type at `icmp_at` carrying mpathd's identifier and magic) and fixes the ICMP
/// checksum, so the round trip excludes the time the probe waited for ARP/ND or a qdisc.
/// Anything else is left alone. A fix-up that fails is counted on the NIC in `slot`.
#[inline(always)]
fn stamp_probe(ctx: &TcContext, slot: u16, icmp_at: usize, request: u8) {
    let Some(msg) = Packet::of_tc(ctx).ref_at::<[u8; PROBE_ICMP_LEN]>(icmp_at) else {
        return;
    };
    let magic = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
    if msg[0] != request
        || msg[1] != 0
        || u16::from_be_bytes([msg[4], msg[5]]) != PROBE_ICMP_ID
        || magic != PROBE_MAGIC
    {
        return;
    }
    let mut old = [0u8; 8];
    old.copy_from_slice(&msg[PROBE_WIRE_NS_OFFSET..PROBE_WIRE_NS_OFFSET + 8]);
    // SAFETY: plain helper call.
    let new = unsafe { bpf_ktime_get_ns() }.to_ne_bytes();
    if ctx.store(icmp_at + PROBE_WIRE_NS_OFFSET, &new, 0).is_err() {
        return;
    }
    // The checksum follows the 8 bytes as two 4-byte words, each 16-bit aligned in the
    // message. A probe whose checksum is left wrong is dropped by its target: counted lost.
    let mut fixed = true;
    for half in [0, 4] {
        let word =
            |b: &[u8; 8]| u32::from_ne_bytes([b[half], b[half + 1], b[half + 2], b[half + 3]]);
        fixed &= ctx
            .l4_csum_replace(icmp_at + 2, u64::from(word(&old)), u64::from(word(&new)), 4)
            .is_ok();
    }
    if !fixed {
        count(u32::from(slot), |c| c.probe_checksum_failed += 1);
    }
}

/// TCP, UDP, UDP-Lite and SCTP: protocols whose first four bytes are the port pair.
#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

/// The port pair at `offset`, or zeros when the packet ends before it.
#[inline(always)]
fn ports_at(packet: Packet<'_>, offset: usize) -> [u8; 4] {
    packet.ref_at(offset).copied().unwrap_or([0; 4])
}

/// The NIC owning `src` when it is one of the group's test addresses.
#[inline(always)]
fn test_address_owner(group: u32, src: [u8; 4]) -> Option<Egress> {
    let tests = GROUP_TESTS.get(group)?;
    for i in 0..MAX_TEST_ADDRESSES_PER_GROUP {
        if i as u32 >= tests.count {
            break;
        }
        if tests.addrs[i] == src {
            let owner = tests.owners[i];
            return Some(Egress {
                ifindex: owner.ifindex,
                mac: owner.mac,
            });
        }
    }
    None
}
