//! Probe reply matching: recognises replies to mpathd's probes, stamps them with kernel time,
//! queues them for the daemon and drops them; everything else passes untouched.
//!
//! Two entry points share one matcher. `mpath_probe_rx` runs at tc ingress (tcx, or a cls_bpf
//! filter before 6.6), the default: it sees packets after GRO, asks nothing of the driver and
//! attaches at any MTU. `mpath_probe_rx_xdp` is the opt-in for those who want the earliest
//! drop, at the price native XDP takes from the receive path (no GRO on veth, offloads off on
//! virtio_net, LRO off on several drivers); it is multi-buffer aware (`xdp.frags`), so jumbo
//! MTUs attach, and reads the first buffer only, which holds any reply.
//!
//! A packet is a *candidate* when it is an ICMP/ICMPv6 echo reply carrying mpathd's echo
//! identifier, or a link-layer probe frame ([`mpath_common::transitive`]) with mpathd's
//! magic. A candidate is matched only if every check passes, the keyed tag of its NIC and
//! sequence number among them; otherwise it is counted as rejected by reason and passed on (it
//! may be someone else's reply).
//!
//! A link-layer probe *request* of an alternate, sent to a NIC that answers them
//! (`NIC_F_ANSWERS_LINK`), is answered here: turned around in place and sent back out of the
//! NIC it came in on (a redirect to its egress, or XDP_TX), so that the alternate's probe
//! measures the link and this NIC's driver, not mpathd's scheduling.

use aya_ebpf::{
    bindings::{
        TC_ACT_SHOT, TC_ACT_UNSPEC,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use mpath_common::{
    NIC_F_ANSWERS_LINK, NIC_F_TEST_V4, NIC_F_TEST_V6, NicInfo, PROBE_DISCOVERY_REPLY_BUDGET,
    PROBE_ICMP_ID, PROBE_ICMP_LEN, PROBE_MAGIC, PROBE_REPLY_BUDGET, PROBE_REPLY_WINDOW_NS,
    ProbeKind, ProbePayload, ProbeReply, RejectReason,
    checksum::{add_words, fold, ipv6_pseudo_header},
    probe_tag,
    transitive::{LINK_PROBE_ETHERTYPE, LINK_PROBE_LEN, LinkProbe, LinkProbeOp},
};

use crate::{
    maps::{LAST_REPLY, NICS, PROBE_REPLIES, REPLY_BUDGETS, SETTINGS, count},
    packet::{
        ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPV6_HLEN, IcmpEcho, Ipv6FragHdr, Packet,
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The longest frame a reply can be: an IPv4 header with every option, then the probe. A
/// shorter packet that the driver left partly outside the linear area (virtio_net copies the
/// first 128 bytes) is pulled in; longer ones, bulk traffic above all, are never touched.
const MAX_REPLY_FRAME: u32 = (ETH_HLEN + 60 + PROBE_ICMP_LEN) as u32;

/// What to do with a packet.
enum Verdict {
    /// Not a reply to mpathd: let the kernel have it.
    NotOurs,
    /// Looked like a reply to mpathd but failed a check.
    Rejected(RejectReason),
    /// A valid reply.
    Matched(ProbeReply),
    /// A valid link-layer probe request to this NIC: the Ethernet addresses of its answer
    /// (destination, source) and the request it answers.
    Answer([u8; 12], LinkProbe),
}

/// Whether the packet goes on into the stack, was mpathd's and ends here, or was turned into
/// an answer to send back out.
enum Disposition {
    Pass,
    Drop,
    /// Rewritten in place: out through the NIC it came in on.
    SendBack,
}

/// TC ingress: TC_ACT_UNSPEC lets every packet that is not a matched reply go on (tcx: to the
/// next program, then up the stack).
#[classifier]
pub(crate) fn mpath_probe_rx(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only lookup; mpathd replaces entries whole.
    let Some(nic) = (unsafe { NICS.get(ifindex) }) else {
        return TC_ACT_UNSPEC;
    };
    let len = ctx.len();
    if len <= MAX_REPLY_FRAME && ((ctx.data_end() - ctx.data()) as u32) < len {
        // On failure the checks below see the packet as short, which is no match.
        let _: Result<_, _> = ctx.pull_data(len);
    }
    match handle(Packet::of_tc(&ctx), u64::from(len), ifindex, nic) {
        Disposition::Pass => TC_ACT_UNSPEC,
        Disposition::Drop => TC_ACT_SHOT,
        // SAFETY: plain helper call; TC_ACT_REDIRECT, or TC_ACT_SHOT for a bad ifindex.
        Disposition::SendBack => unsafe { bpf_redirect(ifindex, 0) as i32 },
    }
}

/// XDP (opt-in): the same matcher on the frame's first buffer.
#[xdp(frags)]
pub(crate) fn mpath_probe_rx_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: read-only lookup; mpathd replaces entries whole.
    let Some(nic) = (unsafe { NICS.get(ifindex) }) else {
        return XDP_PASS;
    };
    let packet = Packet::of_xdp(&ctx);
    match handle(packet, packet.len() as u64, ifindex, nic) {
        Disposition::Pass => XDP_PASS,
        Disposition::Drop => XDP_DROP,
        Disposition::SendBack => XDP_TX,
    }
}

/// Counts a packet of `len` bytes received on `nic` and, when it is a valid reply within the
/// NIC's budget, queues it.
#[inline(always)]
fn handle(packet: Packet<'_>, len: u64, ifindex: u32, nic: &NicInfo) -> Disposition {
    count(nic.slot, |c| {
        c.rx_packets += 1;
        c.rx_bytes += len;
    });
    match classify(packet, ifindex, nic) {
        Verdict::NotOurs => Disposition::Pass,
        Verdict::Rejected(reason) => {
            count(nic.slot, |c| {
                if let Some(n) = c.rejected.get_mut(reason as usize) {
                    *n += 1;
                }
            });
            Disposition::Pass
        }
        Verdict::Matched(mut reply) => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            if !within_budget(nic.slot, now, reply.kind == ProbeKind::Discovery as u32) {
                return Disposition::Drop;
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
            Disposition::Drop
        }
        Verdict::Answer(addresses, request) => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            // Answers draw from the NIC's reply budget: a replayed request is answered at
            // most that often, never flooded back onto the link.
            if !within_budget(nic.slot, now, false) {
                return Disposition::Drop;
            }
            let Some(settings) = SETTINGS.get(0) else {
                return Disposition::Pass;
            };
            let answer = request.answered(settings.probe_key, ifindex, now);
            if !packet.write_at(0, addresses) || !packet.write_at(ETH_HLEN, answer.to_bytes()) {
                return Disposition::Drop;
            }
            count(nic.slot, |c| c.link_probes_answered += 1);
            Disposition::SendBack
        }
    }
}

/// Takes one reply from the NIC's budget on this CPU, the discovery budget for a reply to
/// a discovery echo; false (counted) when it is spent for the current window.
#[inline(always)]
fn within_budget(slot: u32, now: u64, discovery: bool) -> bool {
    let Some(budget) = REPLY_BUDGETS.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: per-CPU map value; programs on this CPU do not run concurrently with us.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) >= PROBE_REPLY_WINDOW_NS {
        budget.window_start_ns = now;
        budget.used = 0;
        budget.discovery_used = 0;
    }
    let (used, limit) = if discovery {
        (&mut budget.discovery_used, PROBE_DISCOVERY_REPLY_BUDGET)
    } else {
        (&mut budget.used, PROBE_REPLY_BUDGET)
    };
    if *used >= limit {
        budget.dropped += 1;
        return false;
    }
    *used += 1;
    true
}

#[inline(always)]
fn classify(packet: Packet<'_>, ifindex: u32, nic: &NicInfo) -> Verdict {
    let Some(eth) = packet.ref_at::<EthHdr>(0) else {
        return Verdict::NotOurs;
    };
    match u16::from_be(eth.ether_type) {
        ETH_P_IPV4 => classify_v4(packet, ifindex, nic),
        ETH_P_IPV6 => classify_v6(packet, ifindex, nic),
        LINK_PROBE_ETHERTYPE => classify_link(packet, eth, ifindex, nic),
        _ => Verdict::NotOurs,
    }
}

/// A link-layer probe frame: a request to answer, if this NIC answers its group's
/// alternates, or the answer to a request of this NIC's.
#[inline(always)]
fn classify_link(packet: Packet<'_>, eth: &EthHdr, ifindex: u32, nic: &NicInfo) -> Verdict {
    let Some(magic) = packet.ref_at::<[u8; 4]>(ETH_HLEN) else {
        return Verdict::NotOurs;
    };
    if u32::from_ne_bytes(*magic) != PROBE_MAGIC {
        return Verdict::NotOurs;
    }
    let Some(bytes) = packet.ref_at::<[u8; LINK_PROBE_LEN]>(ETH_HLEN) else {
        return Verdict::Rejected(RejectReason::Truncated);
    };
    let probe = LinkProbe::from_bytes(bytes);
    if eth.dst_addr != nic.mac {
        return Verdict::Rejected(RejectReason::WrongDestination);
    }
    let Some(op) = probe.op() else {
        return Verdict::Rejected(RejectReason::Malformed);
    };
    let Some(settings) = SETTINGS.get(0) else {
        return Verdict::NotOurs;
    };
    if !probe.tag_is_valid(settings.probe_key) {
        return Verdict::Rejected(RejectReason::BadTag);
    }
    match op {
        LinkProbeOp::Request => {
            if nic.flags & NIC_F_ANSWERS_LINK == 0 {
                return Verdict::Rejected(RejectReason::WrongDestination);
            }
            // Only an alternate of this NIC's own group is answered.
            // SAFETY: read-only lookup; mpathd replaces entries whole.
            let same_group = unsafe { NICS.get(probe.ifindex) }
                .is_some_and(|prober| prober.group == nic.group && probe.ifindex != ifindex);
            if !same_group {
                return Verdict::Rejected(RejectReason::WrongNic);
            }
            let mut addresses = [0u8; 12];
            addresses[..6].copy_from_slice(&eth.src_addr);
            addresses[6..].copy_from_slice(&nic.mac);
            Verdict::Answer(addresses, probe)
        }
        LinkProbeOp::Answer => {
            if !probe.answer_tag_is_valid(settings.probe_key) {
                return Verdict::Rejected(RejectReason::BadTag);
            }
            if probe.ifindex != ifindex {
                return Verdict::Rejected(RejectReason::WrongNic);
            }
            Verdict::Matched(ProbeReply::link_answer(
                ifindex,
                probe.seq,
                probe.responder,
                eth.src_addr,
                probe.sent_ns,
                0,
            ))
        }
    }
}

/// Whether an echo header is a reply to one of mpathd's probes.
#[inline(always)]
fn is_candidate(echo: &IcmpEcho, reply_type: u8) -> bool {
    echo.kind == reply_type && echo.code == 0 && u16::from_be_bytes(echo.id) == PROBE_ICMP_ID
}

#[inline(always)]
fn classify_v4(packet: Packet<'_>, ifindex: u32, nic: &NicInfo) -> Verdict {
    let Some(ip) = packet.ref_at::<Ipv4Hdr>(ETH_HLEN) else {
        return Verdict::NotOurs;
    };
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
    let header_intact = ipv4_header_intact(packet, ip, ihl);
    let icmp_at = ETH_HLEN + ihl;
    let Some(echo) = packet.ref_at::<IcmpEcho>(icmp_at) else {
        return Verdict::NotOurs;
    };
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
    let Some(msg) = packet.ref_at::<[u8; PROBE_ICMP_LEN]>(icmp_at) else {
        return Verdict::Rejected(RejectReason::Truncated);
    };
    if fold(add_words(0, msg)) != 0xffff {
        return Verdict::Rejected(RejectReason::BadChecksum);
    }
    let mut target = [0u8; 16];
    target[..4].copy_from_slice(&ip.src_addr);
    check_payload(msg, echo, ifindex, 4, target)
}

#[inline(always)]
fn classify_v6(packet: Packet<'_>, ifindex: u32, nic: &NicInfo) -> Verdict {
    let Some(ip) = packet.ref_at::<Ipv6Hdr>(ETH_HLEN) else {
        return Verdict::NotOurs;
    };
    if ip.vcf[0] >> 4 != 6 {
        return Verdict::NotOurs;
    }
    let icmp_at = ETH_HLEN + IPV6_HLEN;
    if ip.next_hdr == IPPROTO_FRAGMENT {
        // Only the first fragment shows the ICMPv6 header behind the fragment header.
        let Some(frag) = packet.ref_at::<Ipv6FragHdr>(icmp_at) else {
            return Verdict::NotOurs;
        };
        let first = u16::from_be_bytes(frag.offset_flags) & 0xfff8 == 0;
        let Some(echo) = packet.ref_at::<IcmpEcho>(icmp_at + 8) else {
            return Verdict::NotOurs;
        };
        if first && frag.next_header == IPPROTO_ICMPV6 && is_candidate(echo, ICMPV6_ECHO_REPLY) {
            return Verdict::Rejected(RejectReason::Fragmented);
        }
        return Verdict::NotOurs;
    }
    if ip.next_hdr != IPPROTO_ICMPV6 {
        return Verdict::NotOurs;
    }
    let Some(echo) = packet.ref_at::<IcmpEcho>(icmp_at) else {
        return Verdict::NotOurs;
    };
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
    let Some(msg) = packet.ref_at::<[u8; PROBE_ICMP_LEN]>(icmp_at) else {
        return Verdict::Rejected(RejectReason::Truncated);
    };
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
fn ipv4_header_intact(packet: Packet<'_>, ip: &Ipv4Hdr, ihl: usize) -> bool {
    // SAFETY: `Ipv4Hdr` is 20 plain bytes.
    let fixed = unsafe { &*(ip as *const Ipv4Hdr).cast::<[u8; 20]>() };
    let mut sum = add_words(0, fixed);
    // Options: at most 40 bytes, in 4-byte words.
    let mut offset = 20;
    while offset < 60 {
        if offset >= ihl {
            break;
        }
        match packet.ref_at::<[u8; 4]>(ETH_HLEN + offset) {
            Some(word) => sum = add_words(sum, word),
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
    let Some(kind) = payload.kind() else {
        return Verdict::Rejected(RejectReason::Malformed);
    };
    let Some(settings) = SETTINGS.get(0) else {
        return Verdict::NotOurs;
    };
    // The tag first: a wrong NIC is worth telling apart only in a reply mpathd really made.
    if payload.tag != probe_tag(settings.probe_key, payload.ifindex, payload.seq, kind) {
        return Verdict::Rejected(RejectReason::BadTag);
    }
    if payload.ifindex != ifindex {
        return Verdict::Rejected(RejectReason::WrongNic);
    }
    Verdict::Matched(ProbeReply {
        ifindex,
        seq: payload.seq,
        family,
        kind: kind as u32,
        target,
        sent_ns: payload.sent_ns,
        wire_ns: payload.wire_ns,
        received_ns: 0,
    })
}
