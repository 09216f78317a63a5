//! The XDP probe-reply matcher, run in the kernel on crafted frames with BPF_PROG_TEST_RUN.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use mpath_common::{NIC_F_TEST_V4, NIC_F_TEST_V6, NicInfo, ProbeReply, RejectReason, Settings};
use mpath_ctl::datapath::Datapath;
use mpath_tests::{
    PinDir,
    packets::{Reply, add_v6_fragment_header, mark_v4_first_fragment},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The loopback device exists in every namespace, which BPF_PROG_TEST_RUN requires of the
/// ingress ifindex it is given.
const IFINDEX: u32 = 1;
const SLOT: u32 = 3;
const NONCE: u64 = 0x1234_5678_9abc_def0;
const TEST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
const TARGET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const TEST_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x21);
const TARGET_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

struct Rig {
    datapath: Datapath,
    _pins: PinDir,
}

impl Rig {
    fn new() -> Self {
        let pins = PinDir::new();
        let mut datapath = Datapath::open(pins.path()).expect("load datapath");
        datapath
            .maps
            .set_settings(Settings { nonce: NONCE })
            .unwrap();
        datapath
            .maps
            .set_nic(
                IFINDEX,
                NicInfo {
                    slot: SLOT,
                    group: 0,
                    flags: NIC_F_TEST_V4 | NIC_F_TEST_V6,
                    test_v4: TEST_V4.octets(),
                    test_v6: TEST_V6.octets(),
                    mac: [2, 0, 0, 0, 0, 0x21],
                    _pad: [0; 2],
                },
            )
            .unwrap();
        Rig {
            datapath,
            _pins: pins,
        }
    }

    /// Runs the XDP program on `frame` as if received on `ifindex`; returns its verdict.
    fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> u32 {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        self.datapath
            .probe_rx()
            .unwrap()
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        self.run_on(IFINDEX, frame)
    }

    fn queued(&mut self) -> Vec<ProbeReply> {
        let ring = self.datapath.maps.probe_replies.as_mut().unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), size_of::<ProbeReply>());
            // SAFETY: the program writes whole ProbeReply records.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProbeReply>()) });
        }
        out
    }

    /// Asserts that `frame` passes, is counted as rejected for `reason` and nothing else,
    /// and queues no reply.
    fn assert_rejected(&mut self, frame: &[u8], reason: RejectReason) {
        let before = self.datapath.maps.counters(SLOT).unwrap();
        assert_eq!(self.run(frame), XDP_PASS, "{reason:?}: must pass");
        let after = self.datapath.maps.counters(SLOT).unwrap();
        for r in RejectReason::ALL {
            let expected = before.rejected[r as usize] + u64::from(r == reason);
            assert_eq!(
                after.rejected[r as usize], expected,
                "counter {r:?} for {reason:?}"
            );
        }
        assert_eq!(after.probe_replies, before.probe_replies);
        assert!(self.queued().is_empty(), "{reason:?}: nothing queued");
    }
}

#[test]
fn matches_good_ipv4_and_ipv6_replies_and_drops_them() {
    let mut rig = Rig::new();
    assert_eq!(
        rig.run(&Reply::new(IFINDEX, NONCE, 7).v4(TARGET_V4, TEST_V4)),
        XDP_DROP
    );
    assert_eq!(
        rig.run(&Reply::new(IFINDEX, NONCE, 70_001).v6(TARGET_V6, TEST_V6)),
        XDP_DROP
    );
    let queued = rig.queued();
    assert_eq!(queued.len(), 2);
    let (v4, v6) = (queued[0], queued[1]);
    assert_eq!((v4.ifindex, v4.seq, v4.family), (IFINDEX, 7, 4));
    assert_eq!(&v4.target[..4], &TARGET_V4.octets());
    assert_eq!(v4.sent_ns, 1_000_000);
    assert!(v4.received_ns > 0, "stamped with kernel time");
    assert_eq!(
        (v6.seq, v6.family, v6.target),
        (70_001, 6, TARGET_V6.octets())
    );
    assert!(v6.received_ns >= v4.received_ns);

    let counters = rig.datapath.maps.counters(SLOT).unwrap();
    assert_eq!(counters.probe_replies, 2);
    assert_eq!(counters.rx_packets, 2);
    assert!(counters.rejected.iter().all(|&n| n == 0));
    assert_eq!(rig.datapath.maps.last_reply(SLOT).unwrap(), Some(v6));
}

#[test]
fn rejects_every_bad_kind_by_reason() {
    let mut rig = Rig::new();
    let good = || Reply::new(IFINDEX, NONCE, 9);

    let wrong_nonce = Reply::new(IFINDEX, NONCE ^ 1, 9).v4(TARGET_V4, TEST_V4);
    rig.assert_rejected(&wrong_nonce, RejectReason::WrongNonce);

    let wrong_nic = Reply::new(IFINDEX + 5, NONCE, 9).v4(TARGET_V4, TEST_V4);
    rig.assert_rejected(&wrong_nic, RejectReason::WrongNic);

    let data_address = Ipv4Addr::new(192, 0, 2, 19);
    rig.assert_rejected(
        &good().v4(TARGET_V4, data_address),
        RejectReason::WrongDestination,
    );
    let other_v6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
    rig.assert_rejected(
        &good().v6(TARGET_V6, other_v6),
        RejectReason::WrongDestination,
    );

    let full = good().v4(TARGET_V4, TEST_V4);
    rig.assert_rejected(&full[..full.len() - 1], RejectReason::Truncated);
    rig.assert_rejected(&full[..14 + 20 + 8 + 4], RejectReason::Truncated);
    let full6 = good().v6(TARGET_V6, TEST_V6);
    rig.assert_rejected(&full6[..full6.len() - 8], RejectReason::Truncated);

    let mut fragment = full.clone();
    mark_v4_first_fragment(&mut fragment);
    rig.assert_rejected(&fragment, RejectReason::Fragmented);
    rig.assert_rejected(&add_v6_fragment_header(&full6), RejectReason::Fragmented);

    let mut corrupted = full.clone();
    *corrupted.last_mut().unwrap() ^= 0x40;
    rig.assert_rejected(&corrupted, RejectReason::BadChecksum);
    let mut corrupted6 = full6.clone();
    corrupted6[14 + 40 + 12] ^= 1;
    rig.assert_rejected(&corrupted6, RejectReason::BadChecksum);

    let mut bad_magic = good();
    bad_magic.payload.magic ^= 1;
    rig.assert_rejected(&bad_magic.v4(TARGET_V4, TEST_V4), RejectReason::Malformed);
    let mut seq_mismatch = good();
    seq_mismatch.payload.seq += 1;
    rig.assert_rejected(
        &seq_mismatch.v4(TARGET_V4, TEST_V4),
        RejectReason::Malformed,
    );
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 4]);
    padded[14 + 3] += 4; // IPv4 total length claims the 4 extra bytes
    padded[14 + 10] = 0;
    padded[14 + 11] = 0;
    rig.assert_rejected(&padded, RejectReason::Malformed);

    assert_eq!(rig.datapath.maps.counters(SLOT).unwrap().probe_replies, 0);
}

#[test]
fn leaves_everything_else_alone() {
    let mut rig = Rig::new();
    // Someone else's ping: another echo identifier.
    let mut other_ping = Reply::new(IFINDEX, NONCE, 1);
    other_ping.ident = 0x1111;
    // An echo *request* carrying mpathd's identifier.
    let mut request = Reply::new(IFINDEX, NONCE, 1);
    request.icmp_type = 8;
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    let frames = [
        other_ping.v4(TARGET_V4, TEST_V4),
        other_ping.v6(TARGET_V6, TEST_V6),
        request.v4(TARGET_V4, TEST_V4),
        arp,
        vec![0u8; 14],
    ];
    for frame in &frames {
        assert_eq!(rig.run(frame), XDP_PASS);
    }
    let counters = rig.datapath.maps.counters(SLOT).unwrap();
    assert_eq!(counters.rx_packets, frames.len() as u64);
    assert!(counters.rejected.iter().all(|&n| n == 0), "{counters:?}");
    assert_eq!(counters.probe_replies, 0);
    assert!(rig.queued().is_empty());
}

#[test]
fn ignores_nics_outside_any_group() {
    let mut rig = Rig::new();
    rig.datapath.maps.remove_nic(IFINDEX).unwrap();
    let good = Reply::new(IFINDEX, NONCE, 1).v4(TARGET_V4, TEST_V4);
    assert_eq!(rig.run(&good), XDP_PASS);
    assert_eq!(rig.datapath.maps.counters(SLOT).unwrap().rx_packets, 0);
    assert!(rig.queued().is_empty());
}
