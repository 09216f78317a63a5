//! TC egress (tcx): spreads a group's outbound flows over its usable NICs.
//!
//! The kernel routes a packet to one group NIC; this program looks up the flow's bucket in the
//! group's table and, when the bucket belongs to another NIC, rewrites the source MAC and
//! redirects the packet there. A flow always hashes to the same bucket, so its packets keep
//! their order. The redirected packet runs this program again on the chosen NIC, which finds
//! itself in the bucket and lets the packet go.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_get_hash_recalc, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use mpath_common::{BUCKETS_PER_GROUP, NicInfo};

use crate::{
    maps::{BUCKETS, NICS, TEST_ADDRS, count},
    packet::{
        ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_ICMPV6, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, at,
    },
};

/// ICMPv6 router solicitation .. redirect: neighbour discovery stays on its NIC.
const ND_TYPES: core::ops::RangeInclusive<u8> = 133..=137;

/// The NIC a packet must leave through, when not the one the kernel chose.
struct Egress {
    ifindex: u32,
    mac: [u8; 6],
}

/// TC_ACT_UNSPEC lets the packet continue (tcx: on to the next program, then out).
#[classifier]
pub fn mpath_spread(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only lookup; mpathd replaces entries whole.
    let Some(nic) = (unsafe { NICS.get(ifindex) }) else {
        return TC_ACT_UNSPEC;
    };
    let len = u64::from(ctx.len());
    if let Some(to) = choose_egress(&ctx, nic)
        && to.ifindex != ifindex
        && ctx.store(6, &to.mac, 0).is_ok()
    {
        count(nic.slot, |c| {
            c.redirected_packets += 1;
            c.redirected_bytes += len;
        });
        // SAFETY: plain helper call; flags 0 sends the packet out of `to`'s egress.
        return unsafe { bpf_redirect(to.ifindex, 0) } as i32;
    }
    count(nic.slot, |c| {
        c.tx_packets += 1;
        c.tx_bytes += len;
    });
    TC_ACT_UNSPEC
}

/// Picks the NIC a packet must leave through; `None` keeps it where the kernel routed it
/// (also when it cannot be parsed).
#[inline(always)]
fn choose_egress(ctx: &TcContext, nic: &NicInfo) -> Option<Egress> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let eth: *const EthHdr = at(start, end, 0)?;
    // SAFETY: `at` checked that the header lies inside the packet.
    let eth = unsafe { &*eth };
    // Broadcast and multicast (ARP, ND, MLD, IGMP...) belong to the link they were sent on.
    if eth.dst[0] & 1 != 0 {
        return None;
    }
    match u16::from_be_bytes(eth.proto) {
        ETH_P_IPV4 => {
            let ip: *const Ipv4Hdr = at(start, end, ETH_HLEN)?;
            // SAFETY: bounds checked by `at`; read-only lookups.
            if let Some(owner) = unsafe { TEST_ADDRS.get((*ip).src) } {
                let owner_nic = unsafe { NICS.get(*owner) }?;
                return Some(Egress {
                    ifindex: *owner,
                    mac: owner_nic.mac,
                });
            }
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = at(start, end, ETH_HLEN)?;
            // SAFETY: bounds checked by `at`.
            let ip = unsafe { &*ip };
            // Link-local sources (IPv6 probes among them) are bound to their link.
            if ip.src[0] == 0xfe && ip.src[1] & 0xc0 == 0x80 {
                return None;
            }
            if ip.next_header == IPPROTO_ICMPV6 {
                let kind: *const u8 = at(start, end, ETH_HLEN + IPV6_HLEN)?;
                // SAFETY: bounds checked by `at`.
                if ND_TYPES.contains(unsafe { &*kind }) {
                    return None;
                }
            }
        }
        _ => return None,
    }
    // SAFETY: the context pointer is valid for the duration of the program.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let bucket = BUCKETS.get(nic.group * BUCKETS_PER_GROUP + hash % BUCKETS_PER_GROUP)?;
    (bucket.ifindex != 0).then_some(Egress {
        ifindex: bucket.ifindex,
        mac: bucket.mac,
    })
}
