//! XDP: recognises replies to mpathd's probes, stamps them with kernel time, queues them for
//! the daemon and drops them; everything else passes untouched.
//!
//! A packet is a *candidate* when it is an ICMP/ICMPv6 echo reply carrying mpathd's echo
//! identifier. A candidate is matched only if every check passes, the keyed tag of its NIC
//! and sequence number among them; otherwise it is counted as rejected by reason and passed
//! on (it may be someone else's reply).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use mpath_common::{
    NIC_F_TEST_V4, NIC_F_TEST_V6, NicInfo, PROBE_ICMP_ID, PROBE_ICMP_LEN, PROBE_MAGIC,
    PROBE_REPLY_BUDGET, PROBE_REPLY_WINDOW_NS, ProbePayload, ProbeReply, RejectReason,
    checksum::{add_words, fold, ipv6_pseudo_header},
    probe_tag,
};

use crate::{
    maps::{LAST_REPLY, NICS, PROBE_REPLIES, REPLY_BUDGETS, SETTINGS, count},
    packet::{
        ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPV6_HLEN, IcmpEcho, Ipv6FragHdr, at,
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// What to do with a packet.
enum Verdict {
    /// Not a reply to mpathd: let the kernel have it.
    NotOurs,
    /// Looked like a reply to mpathd but failed a check.
    Rejected(RejectReason),
    /// A valid reply.
    Matched(ProbeReply),
}

#[xdp]
pub fn mpath_probe_rx(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: read-only lookup; mpathd replaces entries whole.
    let Some(nic) = (unsafe { NICS.get(ifindex) }) else {
        return XDP_PASS;
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    count(nic.slot, |c| {
        c.rx_packets += 1;
        c.rx_bytes += len;
    });
    match classify(&ctx, ifindex, nic) {
        Verdict::NotOurs => XDP_PASS,
        Verdict::Rejected(reason) => {
            count(nic.slot, |c| {
                if let Some(n) = c.rejected.get_mut(reason as usize) {
                    *n += 1;
                }
            });
            XDP_PASS
        }
        Verdict::Matched(mut reply) => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            if !within_budget(nic.slot, now) {
                return XDP_DROP;
            }
            reply.received_ns = now;
            let queued = PROBE_REPLIES.output::<ProbeReply>(&reply, 0).is_ok();
            if let Some(last) = LAST_REPLY.get_ptr_mut(nic.slot) {
                // SAFETY: array value of this NIC; a torn read by `mpathctl maps` is harmless.
                unsafe { *last = reply };
            }
            count(nic.slot, |c| {
                if queued {
                    c.probe_replies += 1;
                } else {
                    c.probe_replies_lost += 1;
                }
            });
            XDP_DROP
        }
    }
}

/// Takes one reply from the NIC's budget on this CPU; false (counted) when it is spent for
/// the current window.
#[inline(always)]
fn within_budget(slot: u32, now: u64) -> bool {
    let Some(budget) = REPLY_BUDGETS.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: per-CPU map value; programs on this CPU do not run concurrently with us.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) >= PROBE_REPLY_WINDOW_NS {
        budget.window_start_ns = now;
        budget.used = 0;
    }
    if budget.used >= PROBE_REPLY_BUDGET {
        budget.dropped += 1;
        return false;
    }
    budget.used += 1;
    true
}

#[inline(always)]
fn classify(ctx: &XdpContext, ifindex: u32, nic: &NicInfo) -> Verdict {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = at::<EthHdr>(start, end, 0) else {
        return Verdict::NotOurs;
    };
    // SAFETY: bounds checked by `at`.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IPV4 => classify_v4(start, end, ifindex, nic),
        ETH_P_IPV6 => classify_v6(start, end, ifindex, nic),
        _ => Verdict::NotOurs,
    }
}

/// Whether an echo header is a reply to one of mpathd's probes.
#[inline(always)]
fn is_candidate(echo: &IcmpEcho, reply_type: u8) -> bool {
    echo.kind == reply_type && echo.code == 0 && u16::from_be_bytes(echo.id) == PROBE_ICMP_ID
}

#[inline(always)]
fn classify_v4(start: usize, end: usize, ifindex: u32, nic: &NicInfo) -> Verdict {
    let Some(ip) = at::<Ipv4Hdr>(start, end, ETH_HLEN) else {
        return Verdict::NotOurs;
    };
    // SAFETY: bounds checked by `at`.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ip.proto != IPPROTO_ICMP || ip.vihl >> 4 != 4 || ihl < 20 {
        return Verdict::NotOurs;
    }
    let frag = u16::from_be_bytes(ip.frags);
    // A fragment after the first shows no ICMP header: nothing tells it is ours.
    if frag & 0x1fff != 0 {
        return Verdict::NotOurs;
    }
    // Summed before the ICMP header is read: otherwise the compiler drops the bounds checks
    // of the option words, which the ICMP header's check implies, and the verifier refuses.
    let header_intact = ipv4_header_intact(start, end, ip, ihl);
    let icmp_at = ETH_HLEN + ihl;
    let Some(echo) = at::<IcmpEcho>(start, end, icmp_at) else {
        return Verdict::NotOurs;
    };
    // SAFETY: bounds checked by `at`.
    let echo = unsafe { &*echo };
    if !is_candidate(echo, ICMP_ECHO_REPLY) {
        return Verdict::NotOurs;
    }
    if frag & 0x2000 != 0 {
        return Verdict::Rejected(RejectReason::Fragmented);
    }
    // The ICMP checksum does not cover the IP header (no pseudo-header in IPv4): a reply
    // whose source address was corrupted on the way would be credited to the wrong target.
    if !header_intact {
        return Verdict::Rejected(RejectReason::BadChecksum);
    }
    if nic.flags & NIC_F_TEST_V4 == 0 || ip.dst_addr != nic.test_v4 {
        return Verdict::Rejected(RejectReason::WrongDestination);
    }
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if tot_len < ihl + PROBE_ICMP_LEN {
        return Verdict::Rejected(RejectReason::Truncated);
    }
    if tot_len != ihl + PROBE_ICMP_LEN {
        return Verdict::Rejected(RejectReason::Malformed);
    }
    let Some(msg) = at::<[u8; PROBE_ICMP_LEN]>(start, end, icmp_at) else {
        return Verdict::Rejected(RejectReason::Truncated);
    };
    // SAFETY: bounds checked by `at`.
    let msg = unsafe { &*msg };
    if fold(add_words(0, msg)) != 0xffff {
        return Verdict::Rejected(RejectReason::BadChecksum);
    }
    let mut target = [0u8; 16];
    target[..4].copy_from_slice(&ip.src_addr);
    check_payload(msg, echo, ifindex, 4, target)
}

#[inline(always)]
fn classify_v6(start: usize, end: usize, ifindex: u32, nic: &NicInfo) -> Verdict {
    let Some(ip) = at::<Ipv6Hdr>(start, end, ETH_HLEN) else {
        return Verdict::NotOurs;
    };
    // SAFETY: bounds checked by `at`.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Verdict::NotOurs;
    }
    let icmp_at = ETH_HLEN + IPV6_HLEN;
    if ip.next_hdr == IPPROTO_FRAGMENT {
        // Only the first fragment shows the ICMPv6 header behind the fragment header.
        let Some(frag) = at::<Ipv6FragHdr>(start, end, icmp_at) else {
            return Verdict::NotOurs;
        };
        // SAFETY: bounds checked by `at`.
        let frag = unsafe { &*frag };
        let first = u16::from_be_bytes(frag.offset_flags) & 0xfff8 == 0;
        let Some(echo) = at::<IcmpEcho>(start, end, icmp_at + 8) else {
            return Verdict::NotOurs;
        };
        // SAFETY: bounds checked by `at`.
        if first
            && frag.next_header == IPPROTO_ICMPV6
            && is_candidate(unsafe { &*echo }, ICMPV6_ECHO_REPLY)
        {
            return Verdict::Rejected(RejectReason::Fragmented);
        }
        return Verdict::NotOurs;
    }
    if ip.next_hdr != IPPROTO_ICMPV6 {
        return Verdict::NotOurs;
    }
    let Some(echo) = at::<IcmpEcho>(start, end, icmp_at) else {
        return Verdict::NotOurs;
    };
    // SAFETY: bounds checked by `at`.
    let echo = unsafe { &*echo };
    if !is_candidate(echo, ICMPV6_ECHO_REPLY) {
        return Verdict::NotOurs;
    }
    if nic.flags & NIC_F_TEST_V6 == 0 || ip.dst_addr != nic.test_v6 {
        return Verdict::Rejected(RejectReason::WrongDestination);
    }
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if payload_len < PROBE_ICMP_LEN {
        return Verdict::Rejected(RejectReason::Truncated);
    }
    if payload_len != PROBE_ICMP_LEN {
        return Verdict::Rejected(RejectReason::Malformed);
    }
    let Some(msg) = at::<[u8; PROBE_ICMP_LEN]>(start, end, icmp_at) else {
        return Verdict::Rejected(RejectReason::Truncated);
    };
    // SAFETY: bounds checked by `at`.
    let msg = unsafe { &*msg };
    let pseudo = ipv6_pseudo_header(
        &ip.src_addr,
        &ip.dst_addr,
        PROBE_ICMP_LEN as u32,
        IPPROTO_ICMPV6,
    );
    if fold(add_words(pseudo, msg)) != 0xffff {
        return Verdict::Rejected(RejectReason::BadChecksum);
    }
    check_payload(msg, echo, ifindex, 6, ip.src_addr)
}

/// Whether the IPv4 header checksum (fixed part and options) is right.
#[inline(always)]
fn ipv4_header_intact(start: usize, end: usize, ip: &Ipv4Hdr, ihl: usize) -> bool {
    // SAFETY: `Ipv4Hdr` is 20 plain bytes.
    let fixed = unsafe { &*(ip as *const Ipv4Hdr).cast::<[u8; 20]>() };
    let mut sum = add_words(0, fixed);
    // Options: at most 40 bytes, in 4-byte words.
    let mut offset = 20;
    while offset < 60 {
        if offset >= ihl {
            break;
        }
        match at::<[u8; 4]>(start, end, ETH_HLEN + offset) {
            // SAFETY: bounds checked by `at`.
            Some(word) => sum = add_words(sum, unsafe { &*word }),
            None => return false,
        }
        offset += 4;
    }
    fold(sum) == 0xffff
}

/// Checks the echoed payload of an ICMP message `msg` whose headers and checksum are known
/// good. The payload is read through `msg`, whose bounds the verifier already knows.
#[inline(always)]
fn check_payload(
    msg: &[u8; PROBE_ICMP_LEN],
    echo: &IcmpEcho,
    ifindex: u32,
    family: u32,
    target: [u8; 16],
) -> Verdict {
    // SAFETY: the payload fills bytes 8.. of the message exactly; it may be unaligned.
    let payload = unsafe { msg.as_ptr().add(8).cast::<ProbePayload>().read_unaligned() };
    if payload.magic != PROBE_MAGIC || payload.seq as u16 != u16::from_be_bytes(echo.seq) {
        return Verdict::Rejected(RejectReason::Malformed);
    }
    let Some(settings) = SETTINGS.get(0) else {
        return Verdict::NotOurs;
    };
    // The tag first: a wrong NIC is worth telling apart only in a reply mpathd really made.
    if payload.tag != probe_tag(settings.probe_key, payload.ifindex, payload.seq) {
        return Verdict::Rejected(RejectReason::BadTag);
    }
    if payload.ifindex != ifindex {
        return Verdict::Rejected(RejectReason::WrongNic);
    }
    Verdict::Matched(ProbeReply {
        ifindex,
        seq: payload.seq,
        family,
        _pad: 0,
        target,
        sent_ns: payload.sent_ns,
        wire_ns: payload.wire_ns,
        received_ns: 0,
    })
}
