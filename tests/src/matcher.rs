//! The probe-reply matchers (tc ingress and XDP) loaded into the kernel on a private pin
//! directory, with one NIC configured, so tests can run either on crafted frames with
//! BPF_PROG_TEST_RUN and read what it counted and queued.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use mpath_common::{
    NIC_F_TEST_V4, NIC_F_TEST_V6, NicCounters, NicInfo, ProbeReply, RejectReason, Settings,
};
use mpath_ctl::datapath::{Datapath, ProbeRx};

use crate::PinDir;

/// Both matchers, for tests that hold each to the same rules.
pub const MATCHERS: [ProbeRx; 2] = [ProbeRx::Tc, ProbeRx::Xdp];

/// What a matcher did with a frame, whichever program type said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On into the stack (XDP_PASS, TC_ACT_UNSPEC).
    Pass,
    /// A reply to mpathd, taken (XDP_DROP, TC_ACT_SHOT).
    Drop,
    /// Turned around in place and sent back out of the NIC it came in on (XDP_TX,
    /// TC_ACT_REDIRECT).
    SendBack,
    /// Anything else: no matcher should say it.
    Other(u32),
}

impl Verdict {
    fn of(matcher: ProbeRx, code: u32) -> Verdict {
        const XDP_DROP: u32 = 1;
        const XDP_PASS: u32 = 2;
        const XDP_TX: u32 = 3;
        const TC_ACT_UNSPEC: u32 = -1i32 as u32;
        const TC_ACT_SHOT: u32 = 2;
        const TC_ACT_REDIRECT: u32 = 7;
        match (matcher, code) {
            (ProbeRx::Xdp, XDP_PASS) | (ProbeRx::Tc, TC_ACT_UNSPEC) => Verdict::Pass,
            (ProbeRx::Xdp, XDP_DROP) | (ProbeRx::Tc, TC_ACT_SHOT) => Verdict::Drop,
            (ProbeRx::Xdp, XDP_TX) | (ProbeRx::Tc, TC_ACT_REDIRECT) => Verdict::SendBack,
            _ => Verdict::Other(code),
        }
    }
}
/// The loopback device exists in every namespace, which BPF_PROG_TEST_RUN requires of the
/// ingress ifindex it is given.
pub const IFINDEX: u32 = 1;
/// Counter slot of the configured NIC.
pub const SLOT: u32 = 3;
/// The probe key of the pretend mpathd run.
pub const KEY: [u64; 2] = [0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321];
/// The configured NIC's MAC.
pub const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x21];
pub const TEST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
pub const TARGET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const TEST_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x21);
pub const TARGET_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// A loaded datapath whose NIC `IFINDEX` (slot `SLOT`) probes from `TEST_V4` and `TEST_V6`
/// with key `KEY`, with one of its matchers under test.
pub struct Rig {
    pub datapath: Datapath,
    pub matcher: ProbeRx,
    _pins: PinDir,
}

impl Rig {
    pub fn new(matcher: ProbeRx) -> Self {
        let pins = PinDir::new();
        let mut datapath = Datapath::open(pins.path()).expect("load datapath");
        datapath
            .maps
            .set_settings(Settings { probe_key: KEY })
            .expect("write settings");
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
                    mac: MAC,
                    _pad: [0; 2],
                },
            )
            .expect("write NIC");
        Rig {
            datapath,
            matcher,
            _pins: pins,
        }
    }

    /// Runs the matcher on `frame` as if received on `IFINDEX`; the kernel refuses some
    /// frames (those shorter than an Ethernet header) before the program sees them.
    pub fn try_run(&mut self, frame: &[u8]) -> Result<Verdict, ProgramError> {
        self.try_run_on(IFINDEX, frame, 1)
    }

    /// Runs the matcher `times` times in a row (in one call, so within microseconds) on
    /// `frame` as if received on `ifindex`, which must exist in this network namespace;
    /// returns the last verdict.
    pub fn try_run_on(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        times: u32,
    ) -> Result<Verdict, ProgramError> {
        self.try_run_out(ifindex, frame, times, &mut [])
    }

    /// Runs the matcher on `frame` as if received on `IFINDEX`: its verdict and the frame
    /// as the program left it.
    pub fn run_out(&mut self, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut out = vec![0; frame.len() + 256];
        let verdict = self
            .try_run_out(IFINDEX, frame, 1, &mut out)
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(frame.len());
        (verdict, out)
    }

    fn try_run_out(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        times: u32,
        out: &mut [u8],
    ) -> Result<Verdict, ProgramError> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = times;
        if !out.is_empty() {
            opts.data_out = Some(out);
        }
        let code = match self.matcher {
            ProbeRx::Tc => {
                // struct __sk_buff, of which the kernel takes only a few fields: the device
                // the packet arrives on is `ifindex`, at byte 40.
                let mut ctx = [0u8; 192];
                ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                opts.ctx_in = Some(&ctx);
                let program = self.datapath.probe_rx().expect("tc matcher loaded");
                program.test_run(opts)?.return_value
            }
            ProbeRx::Xdp => {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
                // egress_ifindex.
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                opts.ctx_in = Some(&ctx);
                let program = self.datapath.probe_rx_xdp().expect("XDP matcher loaded");
                program.test_run(opts)?.return_value
            }
        };
        Ok(Verdict::of(self.matcher, code))
    }

    /// Configures another NIC, `ifindex` in counter slot `slot`, with the same test addresses.
    pub fn add_nic(&mut self, ifindex: u32, slot: u32) {
        let mut info = self.datapath.maps.nic(IFINDEX).expect("the rig's NIC");
        info.slot = slot;
        self.datapath
            .maps
            .set_nic(ifindex, info)
            .expect("write NIC");
    }

    /// Runs the matcher on `frame`; returns its verdict.
    pub fn run(&mut self, frame: &[u8]) -> Verdict {
        self.try_run(frame).expect("BPF_PROG_TEST_RUN")
    }

    /// Takes every reply queued in the ring buffer since the last call.
    pub fn queued(&mut self) -> Vec<ProbeReply> {
        self.datapath
            .maps
            .queued_probe_replies()
            .expect("ring buffer of probe replies")
    }

    /// The NIC's counters, summed over CPUs.
    pub fn counters(&self) -> NicCounters {
        self.datapath.maps.counters(SLOT).expect("read counters")
    }
}

/// Asserts that `frame` passes untouched, is counted as rejected for `reason` and nothing
/// else, and neither queues a reply nor is answered.
pub fn assert_rejected(rig: &mut Rig, frame: &[u8], reason: RejectReason) {
    let before = rig.counters();
    let (verdict, out) = rig.run_out(frame);
    assert_eq!(
        verdict,
        Verdict::Pass,
        "{}: {reason:?}: must pass",
        rig.matcher
    );
    assert_eq!(out, frame, "{reason:?}: the frame is left as it was");
    let after = rig.counters();
    for r in RejectReason::ALL {
        let expected = before.rejected[r as usize] + u64::from(r == reason);
        assert_eq!(
            after.rejected[r as usize], expected,
            "counter {r:?} for {reason:?}"
        );
    }
    assert_eq!(after.probe_replies, before.probe_replies);
    assert_eq!(after.link_probes_answered, before.link_probes_answered);
    assert!(rig.queued().is_empty(), "{reason:?}: nothing queued");
}
