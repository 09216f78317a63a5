//! Transitive probing's kernel half: the ingress programs (tc and XDP) answer a link-layer
//! probe request of an alternate in place, and match the answer at the alternate, run in the
//! kernel on crafted frames with BPF_PROG_TEST_RUN.

use std::time::{Duration, Instant};

use mpath_common::{
    LINK_FAMILY, NIC_F_ANSWERS_LINK, NicInfo, PROBE_REPLY_BUDGET, ProbeKind, RejectReason,
    Settings,
    transitive::{LINK_PROBE_ETHERTYPE, LINK_PROBE_LEN, LinkProbe, LinkProbeOp},
};
use mpath_ctl::{
    datapath::{Datapath, ProbeRx},
    net::probe_socket::monotonic_ns,
};
use mpath_lab::Lab;
use mpath_tests::{
    PinDir,
    matcher::{IFINDEX, KEY, MAC, MATCHERS, Rig, SLOT, Verdict, assert_rejected},
    packets::link_probe_frame,
};

/// An alternate of the rig NIC's group.
const ALTERNATE: u32 = 7;
const ALTERNATE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
/// An active NIC of the rig NIC's group.
const RESPONDER: u32 = 9;
const RESPONDER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// A rig whose NIC answers link-layer probes, with `ALTERNATE` in its group.
fn answering_rig(matcher: ProbeRx) -> Rig {
    let mut rig = Rig::new(matcher);
    let maps = &mut rig.datapath.maps;
    let mut info = maps.nic(IFINDEX).unwrap();
    info.flags |= NIC_F_ANSWERS_LINK;
    maps.set_nic(IFINDEX, info).unwrap();
    rig.add_nic(ALTERNATE, SLOT + 1);
    rig
}

fn request(seq: u32) -> LinkProbe {
    LinkProbe::request(KEY, ALTERNATE, seq, 1_000_000)
}

#[test]
fn an_active_nic_answers_an_alternate_s_request_in_place_and_sends_it_back() {
    for matcher in MATCHERS {
        let mut rig = answering_rig(matcher);
        let frame = link_probe_frame(MAC, ALTERNATE_MAC, request(42));
        let (verdict, out) = rig.run_out(&frame);
        assert_eq!(verdict, Verdict::SendBack, "{matcher}");
        assert_eq!(&out[..6], &ALTERNATE_MAC, "back to the alternate");
        assert_eq!(&out[6..12], &MAC, "from this NIC");
        assert_eq!(&out[12..14], &LINK_PROBE_ETHERTYPE.to_be_bytes());
        let answer = LinkProbe::from_bytes(out[14..14 + LINK_PROBE_LEN].try_into().unwrap());
        assert_eq!(answer.op(), Some(LinkProbeOp::Answer));
        assert_eq!(
            (answer.ifindex, answer.seq, answer.sent_ns),
            (ALTERNATE, 42, 1_000_000)
        );
        assert_eq!(answer.responder, IFINDEX);
        assert!(answer.tag_is_valid(KEY) && answer.answer_tag_is_valid(KEY));
        assert!(answer.answered_ns > 0, "stamped with kernel time");
        let counters = rig.counters();
        assert_eq!(counters.link_probes_answered, 1);
        assert!(counters.rejected.iter().all(|&n| n == 0));
        assert!(rig.queued().is_empty(), "a request is no reply to mpathd");
    }
}

#[test]
fn a_request_is_answered_only_by_an_answering_nic_of_the_alternate_s_group() {
    for matcher in MATCHERS {
        let mut rig = answering_rig(matcher);
        let good = link_probe_frame(MAC, ALTERNATE_MAC, request(42));

        // To another MAC (the switch flooded it), or forged without the probe key.
        let elsewhere = link_probe_frame(RESPONDER_MAC, ALTERNATE_MAC, request(42));
        assert_rejected(&mut rig, &elsewhere, RejectReason::WrongDestination);
        let forged = LinkProbe::request([KEY[0], KEY[1] ^ 1], ALTERNATE, 42, 1_000_000);
        let forged = link_probe_frame(MAC, ALTERNATE_MAC, forged);
        assert_rejected(&mut rig, &forged, RejectReason::BadTag);
        // A request of a NIC in another group, of no group's, or of this NIC itself.
        let stranger = LinkProbe::request(KEY, 77, 42, 1_000_000);
        let stranger = link_probe_frame(MAC, ALTERNATE_MAC, stranger);
        assert_rejected(&mut rig, &stranger, RejectReason::WrongNic);
        let own = LinkProbe::request(KEY, IFINDEX, 42, 1_000_000);
        assert_rejected(
            &mut rig,
            &link_probe_frame(MAC, ALTERNATE_MAC, own),
            RejectReason::WrongNic,
        );
        let maps = &mut rig.datapath.maps;
        let mut alternate = maps.nic(ALTERNATE).unwrap();
        alternate.group = 1;
        maps.set_nic(ALTERNATE, alternate).unwrap();
        assert_rejected(&mut rig, &good, RejectReason::WrongNic);
        alternate.group = 0;
        rig.datapath.maps.set_nic(ALTERNATE, alternate).unwrap();

        // Cut short, or of an op no build knows.
        assert_rejected(&mut rig, &good[..good.len() - 1], RejectReason::Truncated);
        let mut unknown = request(42);
        unknown.op = 2;
        let unknown = link_probe_frame(MAC, ALTERNATE_MAC, unknown);
        assert_rejected(&mut rig, &unknown, RejectReason::Malformed);

        // A NIC mpathd did not ask to answer (an alternate itself, or a failed one).
        let maps = &mut rig.datapath.maps;
        let mut info = maps.nic(IFINDEX).unwrap();
        info.flags &= !NIC_F_ANSWERS_LINK;
        maps.set_nic(IFINDEX, info).unwrap();
        assert_rejected(&mut rig, &good, RejectReason::WrongDestination);

        assert_eq!(rig.counters().link_probes_answered, 0);
    }
}

#[test]
fn the_alternate_matches_the_answer_with_its_responder_and_a_kernel_time_stamp() {
    for matcher in MATCHERS {
        let mut rig = Rig::new(matcher);
        let answer = LinkProbe::request(KEY, IFINDEX, 42, 1_000_000).answered(KEY, RESPONDER, 5);
        let frame = link_probe_frame(MAC, RESPONDER_MAC, answer);
        assert_eq!(rig.run(&frame), Verdict::Drop, "{matcher}");
        let queued = rig.queued();
        assert_eq!(queued.len(), 1);
        let reply = queued[0];
        assert_eq!((reply.ifindex, reply.seq), (IFINDEX, 42));
        assert_eq!(reply.family, LINK_FAMILY);
        assert_eq!(reply.kind(), Some(ProbeKind::Transitive));
        assert_eq!(reply.responder(), Some((RESPONDER, RESPONDER_MAC)));
        assert_eq!(reply.sent_ns, 1_000_000);
        assert!(reply.received_ns > 0, "stamped with kernel time");
        assert_eq!(rig.counters().probe_replies, 1);
    }
}

#[test]
fn forged_or_misdirected_answers_are_refused_by_reason() {
    for matcher in MATCHERS {
        let mut rig = Rig::new(matcher);
        let request = LinkProbe::request(KEY, IFINDEX, 42, 1_000_000);
        let answer = request.answered(KEY, RESPONDER, 5);

        // A host that saw the request turns it into an answer: it cannot make the answer
        // tag, nor pass the request's own tag off as one, nor name another responder.
        let mut turned = request;
        turned.op = LinkProbeOp::Answer as u32;
        turned.responder = RESPONDER;
        let turned_frame = link_probe_frame(MAC, RESPONDER_MAC, turned);
        assert_rejected(&mut rig, &turned_frame, RejectReason::BadTag);
        turned.answer_tag = turned.tag;
        let turned_frame = link_probe_frame(MAC, RESPONDER_MAC, turned);
        assert_rejected(&mut rig, &turned_frame, RejectReason::BadTag);
        let mut renamed = answer;
        renamed.responder = RESPONDER + 1;
        let renamed = link_probe_frame(MAC, RESPONDER_MAC, renamed);
        assert_rejected(&mut rig, &renamed, RejectReason::BadTag);
        // Another probe's answer with this probe's number.
        let mut renumbered = answer;
        renumbered.seq = 43;
        let renumbered = link_probe_frame(MAC, RESPONDER_MAC, renumbered);
        assert_rejected(&mut rig, &renumbered, RejectReason::BadTag);
        // Another NIC's answer, and an answer to someone else's MAC.
        let other = LinkProbe::request(KEY, IFINDEX + 5, 42, 1).answered(KEY, RESPONDER, 5);
        let other = link_probe_frame(MAC, RESPONDER_MAC, other);
        assert_rejected(&mut rig, &other, RejectReason::WrongNic);
        let misdirected = link_probe_frame(ALTERNATE_MAC, RESPONDER_MAC, answer);
        assert_rejected(&mut rig, &misdirected, RejectReason::WrongDestination);

        // Another local experiment on the same EtherType is not looked at.
        let mut foreign = link_probe_frame(MAC, RESPONDER_MAC, answer);
        foreign[14] ^= 0xff;
        let before = rig.counters();
        assert_eq!(rig.run(&foreign), Verdict::Pass);
        assert_eq!(rig.counters().rejected, before.rejected);
        assert!(rig.queued().is_empty());
    }
}

/// Keeps this thread on one CPU: the reply budgets are per CPU.
fn stay_on_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(result, 0, "sched_setaffinity");
}

#[test]
fn a_replayed_request_is_answered_at_most_the_nic_s_reply_budget_a_second() {
    stay_on_one_cpu();
    for matcher in MATCHERS {
        let mut rig = answering_rig(matcher);
        let frame = link_probe_frame(MAC, ALTERNATE_MAC, request(42));
        // Each run answers a fresh copy of the request (a repeated test run would see its
        // own answer); a few hundred runs take milliseconds, well within one budget window.
        let times = PROBE_REPLY_BUDGET + 64;
        let verdicts: Vec<Verdict> = (0..times).map(|_| rig.run_out(&frame).0).collect();
        let answered = verdicts.iter().filter(|v| **v == Verdict::SendBack).count();
        assert_eq!(answered as u32, PROBE_REPLY_BUDGET, "{matcher}");
        assert_eq!(
            verdicts.last(),
            Some(&Verdict::Drop),
            "over budget, dropped"
        );
        assert_eq!(
            rig.counters().link_probes_answered,
            u64::from(PROBE_REPLY_BUDGET)
        );
        assert_eq!(
            rig.datapath.maps.replies_over_budget(SLOT).unwrap(),
            u64::from(times - PROBE_REPLY_BUDGET)
        );
    }
}

/// Sends `frame` out of NIC `ifindex` through a packet socket, as mpathd sends its requests.
fn send_frame(ifindex: u32, frame: &[u8]) {
    // SAFETY: plain system calls on a socket this function owns; `address` is a zeroed
    // sockaddr_ll with the fields a send needs.
    unsafe {
        let socket = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            socket >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = LINK_PROBE_ETHERTYPE.to_be();
        address.sll_ifindex = ifindex as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            socket,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        let error = std::io::Error::last_os_error();
        libc::close(socket);
        assert_eq!(sent, frame.len() as isize, "sendto: {error}");
    }
}

/// On real NICs and a switch, with no mpathd running: h1, an alternate, sends a request to
/// h0's MAC; h0's tc ingress program answers it and sends it back out of h0 through the
/// switch; h1's matches the answer.
#[test]
fn an_answer_crosses_the_switch_and_back_with_the_kernel_alone() {
    let lab = Lab::new(2).expect("lab");
    let pins = PinDir::new();
    let _inside = lab.host().enter().expect("enter the lab's host");
    let mut datapath = Datapath::open(pins.path()).expect("load the datapath");
    datapath
        .maps
        .set_settings(Settings { probe_key: KEY })
        .unwrap();
    let nic = |name: &str| (lab.host().ifindex(name).unwrap(), lab.mac(name).unwrap());
    let ((h0, h0_mac), (h1, h1_mac)) = (nic("h0"), nic("h1"));
    for (slot, ifindex, mac, flags) in [(0, h0, h0_mac, NIC_F_ANSWERS_LINK), (1, h1, h1_mac, 0)] {
        let info = NicInfo {
            slot,
            flags,
            mac,
            ..NicInfo::default()
        };
        datapath.maps.set_nic(ifindex, info).unwrap();
    }
    for name in ["h0", "h1"] {
        datapath.attach(name, ProbeRx::Tc).expect("attach");
    }

    let sent_ns = monotonic_ns();
    let request = LinkProbe::request(KEY, h1, 42, sent_ns);
    send_frame(h1, &link_probe_frame(h0_mac, h1_mac, request));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut replies = Vec::new();
    while replies.is_empty() && Instant::now() < deadline {
        replies = datapath.maps.queued_probe_replies().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(replies.len(), 1, "one answer matched on h1");
    let reply = replies[0];
    assert_eq!((reply.ifindex, reply.seq), (h1, 42));
    assert_eq!(reply.responder(), Some((h0, h0_mac)));
    assert!(reply.received_ns > sent_ns, "{reply:?}");
    assert_eq!(datapath.maps.counters(0).unwrap().link_probes_answered, 1);
    assert_eq!(datapath.maps.counters(1).unwrap().probe_replies, 1);
}
