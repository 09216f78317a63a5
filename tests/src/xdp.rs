//! The XDP probe-reply matcher loaded into the kernel on a private pin directory, with one
//! NIC configured, so tests can run it on crafted frames with BPF_PROG_TEST_RUN and read what
//! it counted and queued.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use mpath_common::{NIC_F_TEST_V4, NIC_F_TEST_V6, NicCounters, NicInfo, ProbeReply, Settings};
use mpath_ctl::datapath::Datapath;

use crate::PinDir;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// The loopback device exists in every namespace, which BPF_PROG_TEST_RUN requires of the
/// ingress ifindex it is given.
pub const IFINDEX: u32 = 1;
/// Counter slot of the configured NIC.
pub const SLOT: u32 = 3;
/// The probe key of the pretend mpathd run.
pub const KEY: [u64; 2] = [0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321];
pub const TEST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
pub const TARGET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const TEST_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x21);
pub const TARGET_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// A loaded datapath whose NIC `IFINDEX` (slot `SLOT`) probes from `TEST_V4` and `TEST_V6`
/// with key `KEY`.
pub struct Rig {
    pub datapath: Datapath,
    _pins: PinDir,
}

impl Rig {
    pub fn new() -> Self {
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
                    mac: [2, 0, 0, 0, 0, 0x21],
                    _pad: [0; 2],
                },
            )
            .expect("write NIC");
        Rig {
            datapath,
            _pins: pins,
        }
    }

    /// Runs the XDP program on `frame` as if received on `IFINDEX`; the kernel refuses some
    /// frames (those shorter than an Ethernet header) before the program sees them.
    pub fn try_run(&mut self, frame: &[u8]) -> Result<u32, ProgramError> {
        self.try_run_on(IFINDEX, frame, 1)
    }

    /// Runs the XDP program `times` times in a row (in one call, so within microseconds) on
    /// `frame` as if received on `ifindex`, which must exist in this network namespace;
    /// returns the last verdict.
    pub fn try_run_on(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        times: u32,
    ) -> Result<u32, ProgramError> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = times;
        Ok(self
            .datapath
            .probe_rx()
            .expect("probe program loaded")
            .test_run(opts)?
            .return_value)
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

    /// Runs the XDP program on `frame`; returns its verdict.
    pub fn run(&mut self, frame: &[u8]) -> u32 {
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

impl Default for Rig {
    fn default() -> Self {
        Self::new()
    }
}
