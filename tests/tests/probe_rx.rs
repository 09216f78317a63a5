//! The probe-reply matchers (tc ingress and XDP), each run in the kernel on crafted frames
//! with BPF_PROG_TEST_RUN and held to the same rules.

use std::net::{Ipv4Addr, Ipv6Addr};

use mpath_common::{PROBE_DISCOVERY_REPLY_BUDGET, PROBE_REPLY_BUDGET, ProbeKind, RejectReason};
use mpath_lab::Lab;
use mpath_tests::{
    matcher::{
        IFINDEX, KEY, MATCHERS, Rig, SLOT, TARGET_V4, TARGET_V6, TEST_V4, TEST_V6, Verdict,
        assert_rejected,
    },
    packets::{Reply, add_v6_fragment_header, mark_v4_first_fragment, reseal_ipv4_header},
};

#[test]
fn matches_good_ipv4_and_ipv6_replies_and_drops_them() {
    for matcher in MATCHERS {
        let mut rig = Rig::new(matcher);
        assert_eq!(
            rig.run(&Reply::new(IFINDEX, KEY, 7).v4(TARGET_V4, TEST_V4)),
            Verdict::Drop
        );
        assert_eq!(
            rig.run(&Reply::new(IFINDEX, KEY, 70_001).v6(TARGET_V6, TEST_V6)),
            Verdict::Drop
        );
        let queued = rig.queued();
        assert_eq!(queued.len(), 2);
        let (v4, v6) = (queued[0], queued[1]);
        assert_eq!((v4.ifindex, v4.seq, v4.family), (IFINDEX, 7, 4));
        assert_eq!(&v4.target[..4], &TARGET_V4.octets());
        assert_eq!((v4.sent_ns, v4.wire_ns), (1_000_000, 1_000_500));
        assert!(v4.received_ns > 0, "stamped with kernel time");
        assert_eq!(
            (v6.seq, v6.family, v6.target),
            (70_001, 6, TARGET_V6.octets())
        );
        assert!(v6.received_ns >= v4.received_ns);

        let counters = rig.counters();
        assert_eq!(counters.probe_replies, 2);
        assert_eq!(counters.rx_packets, 2);
        assert!(counters.rejected.iter().all(|&n| n == 0));
        assert_eq!(rig.datapath.maps.last_reply(SLOT).unwrap(), Some(v6));
    }
}

#[test]
fn a_flood_of_valid_replies_on_one_nic_is_capped_and_the_other_nics_keep_their_share() {
    for matcher in MATCHERS {
        const OTHER_SLOT: u32 = SLOT + 1;
        let lab = Lab::new(1).expect("lab");
        // The other NIC must exist where BPF_PROG_TEST_RUN looks its ifindex up.
        let _inside = lab.host().enter().expect("enter the lab's host");
        let mut rig = Rig::new(matcher);
        let other = lab.host().ifindex("h0").expect("h0");
        rig.add_nic(other, OTHER_SLOT);
        // One valid reply replayed, far faster than mpathd could read the ring buffer.
        let flood = Reply::new(IFINDEX, KEY, 7).v4(TARGET_V4, TEST_V4);
        let times = 3 * PROBE_REPLY_BUDGET;
        assert_eq!(
            rig.try_run_on(IFINDEX, &flood, times).unwrap(),
            Verdict::Drop
        );
        assert_eq!(rig.queued().len() as u32, PROBE_REPLY_BUDGET);
        let maps = &rig.datapath.maps;
        assert_eq!(
            maps.replies_over_budget(SLOT).unwrap(),
            u64::from(times - PROBE_REPLY_BUDGET)
        );
        assert_eq!(rig.counters().probe_replies, u64::from(PROBE_REPLY_BUDGET));
        // The other NIC's replies in the same window still reach mpathd, every one of them.
        for seq in 0..10 {
            let reply = Reply::new(other, KEY, seq).v4(TARGET_V4, TEST_V4);
            assert_eq!(rig.try_run_on(other, &reply, 1).unwrap(), Verdict::Drop);
        }
        let queued = rig.queued();
        assert_eq!(queued.len(), 10);
        assert!(queued.iter().all(|r| r.ifindex == other));
        assert_eq!(
            rig.datapath.maps.replies_over_budget(OTHER_SLOT).unwrap(),
            0
        );
    }
}

#[test]
fn answers_to_discovery_echoes_have_a_budget_of_their_own_that_never_costs_a_targets_reply() {
    for matcher in MATCHERS {
        let mut rig = Rig::new(matcher);
        // Every host of a big link answers one discovery echo, within the same window.
        let answers = Reply::of_kind(IFINDEX, KEY, 9, ProbeKind::Discovery).v4(TARGET_V4, TEST_V4);
        let hosts = 3 * PROBE_DISCOVERY_REPLY_BUDGET;
        assert_eq!(
            rig.try_run_on(IFINDEX, &answers, hosts).unwrap(),
            Verdict::Drop
        );
        let queued = rig.queued();
        assert_eq!(queued.len() as u32, PROBE_DISCOVERY_REPLY_BUDGET);
        assert!(
            queued
                .iter()
                .all(|r| r.kind() == Some(ProbeKind::Discovery))
        );
        let over = u64::from(hosts - PROBE_DISCOVERY_REPLY_BUDGET);
        assert_eq!(rig.datapath.maps.replies_over_budget(SLOT).unwrap(), over);
        // The target probes' replies of that window all reach mpathd: the whole budget.
        let reply = Reply::new(IFINDEX, KEY, 10).v4(TARGET_V4, TEST_V4);
        assert_eq!(
            rig.try_run_on(IFINDEX, &reply, PROBE_REPLY_BUDGET).unwrap(),
            Verdict::Drop
        );
        let queued = rig.queued();
        assert_eq!(queued.len() as u32, PROBE_REPLY_BUDGET);
        assert!(queued.iter().all(|r| r.kind() == Some(ProbeKind::Target)));
        assert_eq!(rig.datapath.maps.replies_over_budget(SLOT).unwrap(), over);
    }
}

#[test]
fn rejects_every_bad_kind_by_reason() {
    for matcher in MATCHERS {
        let mut rig = Rig::new(matcher);
        let good = || Reply::new(IFINDEX, KEY, 9);

        let other_key = Reply::new(IFINDEX, [KEY[0], KEY[1] ^ 1], 9).v4(TARGET_V4, TEST_V4);
        assert_rejected(&mut rig, &other_key, RejectReason::BadTag);
        // A host that saw probe 9 cannot make a reply to probe 10 out of it...
        let mut next = good();
        next.seq = 10;
        next.payload.seq = 10;
        assert_rejected(&mut rig, &next.v4(TARGET_V4, TEST_V4), RejectReason::BadTag);
        // ...nor turn another NIC's probe into a reply for this one.
        let mut moved = Reply::new(IFINDEX + 5, KEY, 9);
        moved.payload.ifindex = IFINDEX;
        assert_rejected(
            &mut rig,
            &moved.v6(TARGET_V6, TEST_V6),
            RejectReason::BadTag,
        );

        // ...nor pass a host's answer to a discovery echo off as the target's reply, or
        // the other way round, to draw from the other budget.
        let mut promoted = Reply::of_kind(IFINDEX, KEY, 9, ProbeKind::Discovery);
        promoted.payload.kind = ProbeKind::Target as u32;
        assert_rejected(
            &mut rig,
            &promoted.v4(TARGET_V4, TEST_V4),
            RejectReason::BadTag,
        );
        let mut demoted = good();
        demoted.payload.kind = ProbeKind::Discovery as u32;
        assert_rejected(
            &mut rig,
            &demoted.v4(TARGET_V4, TEST_V4),
            RejectReason::BadTag,
        );
        let mut unknown = good();
        unknown.payload.kind = 3;
        assert_rejected(
            &mut rig,
            &unknown.v4(TARGET_V4, TEST_V4),
            RejectReason::Malformed,
        );
        // A link-layer probe's kind and tag in an ICMP reply: no ICMP probe has them.
        let link_kind = Reply::of_kind(IFINDEX, KEY, 9, ProbeKind::Transitive);
        assert_rejected(
            &mut rig,
            &link_kind.v4(TARGET_V4, TEST_V4),
            RejectReason::Malformed,
        );

        let wrong_nic = Reply::new(IFINDEX + 5, KEY, 9).v4(TARGET_V4, TEST_V4);
        assert_rejected(&mut rig, &wrong_nic, RejectReason::WrongNic);

        let data_address = Ipv4Addr::new(192, 0, 2, 19);
        assert_rejected(
            &mut rig,
            &good().v4(TARGET_V4, data_address),
            RejectReason::WrongDestination,
        );
        let other_v6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
        assert_rejected(
            &mut rig,
            &good().v6(TARGET_V6, other_v6),
            RejectReason::WrongDestination,
        );

        let full = good().v4(TARGET_V4, TEST_V4);
        assert_rejected(&mut rig, &full[..full.len() - 1], RejectReason::Truncated);
        assert_rejected(&mut rig, &full[..14 + 20 + 8 + 4], RejectReason::Truncated);
        let full6 = good().v6(TARGET_V6, TEST_V6);
        assert_rejected(&mut rig, &full6[..full6.len() - 8], RejectReason::Truncated);

        let mut fragment = full.clone();
        mark_v4_first_fragment(&mut fragment);
        assert_rejected(&mut rig, &fragment, RejectReason::Fragmented);
        assert_rejected(
            &mut rig,
            &add_v6_fragment_header(&full6),
            RejectReason::Fragmented,
        );

        let mut corrupted = full.clone();
        *corrupted.last_mut().unwrap() ^= 0x40;
        assert_rejected(&mut rig, &corrupted, RejectReason::BadChecksum);
        let mut corrupted6 = full6.clone();
        corrupted6[14 + 40 + 12] ^= 1;
        assert_rejected(&mut rig, &corrupted6, RejectReason::BadChecksum);

        let mut bad_magic = good();
        bad_magic.payload.magic ^= 1;
        assert_rejected(
            &mut rig,
            &bad_magic.v4(TARGET_V4, TEST_V4),
            RejectReason::Malformed,
        );
        let mut seq_mismatch = good();
        seq_mismatch.payload.seq += 1;
        assert_rejected(
            &mut rig,
            &seq_mismatch.v4(TARGET_V4, TEST_V4),
            RejectReason::Malformed,
        );
        let mut padded = full.clone();
        padded.extend_from_slice(&[0; 4]);
        padded[14 + 3] += 4; // IPv4 total length claims the 4 extra bytes
        reseal_ipv4_header(&mut padded);
        assert_rejected(&mut rig, &padded, RejectReason::Malformed);

        // A source address corrupted on the way: the ICMP checksum cannot tell (IPv4 has no
        // pseudo-header), the IP header checksum does.
        let mut spoiled = full.clone();
        spoiled[14 + 15] ^= 0x08;
        assert_rejected(&mut rig, &spoiled, RejectReason::BadChecksum);

        assert_eq!(rig.counters().probe_replies, 0);
    }
}

#[test]
fn leaves_everything_else_alone() {
    for matcher in MATCHERS {
        let mut rig = Rig::new(matcher);
        // Someone else's ping: another echo identifier.
        let mut other_ping = Reply::new(IFINDEX, KEY, 1);
        other_ping.ident = 0x1111;
        // An echo *request* carrying mpathd's identifier.
        let mut request = Reply::new(IFINDEX, KEY, 1);
        request.icmp_type = 8;
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        // A good reply in a frame whose IP version is not 6: the kernel would drop it.
        let mut not_v6 = Reply::new(IFINDEX, KEY, 1).v6(TARGET_V6, TEST_V6);
        not_v6[14] = 0x40;
        let frames = [
            other_ping.v4(TARGET_V4, TEST_V4),
            other_ping.v6(TARGET_V6, TEST_V6),
            request.v4(TARGET_V4, TEST_V4),
            arp,
            vec![0u8; 14],
            not_v6,
        ];
        for frame in &frames {
            assert_eq!(rig.run(frame), Verdict::Pass);
        }
        let counters = rig.counters();
        assert_eq!(counters.rx_packets, frames.len() as u64);
        assert!(counters.rejected.iter().all(|&n| n == 0), "{counters:?}");
        assert_eq!(counters.probe_replies, 0);
        assert!(rig.queued().is_empty());
    }
}

#[test]
fn ignores_nics_outside_any_group() {
    for matcher in MATCHERS {
        let mut rig = Rig::new(matcher);
        rig.datapath.maps.remove_nic(IFINDEX).unwrap();
        let good = Reply::new(IFINDEX, KEY, 1).v4(TARGET_V4, TEST_V4);
        assert_eq!(rig.run(&good), Verdict::Pass);
        assert_eq!(rig.counters().rx_packets, 0);
        assert!(rig.queued().is_empty());
    }
}
