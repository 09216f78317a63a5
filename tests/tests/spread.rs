//! Outbound load spreading end to end: the TC program on real veth NICs in a lab, UDP flows
//! from the host, and a sniffer at the router telling which NIC carried each packet. In every
//! lab the kernel routes all traffic to h0 (the data address's NIC), so whatever leaves
//! another NIC got there through the program.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use mpath_common::{
    BUCKETS_PER_GROUP, EGRESS_F_NO_CARRIER, EgressNic, NicInfo, flow_hash, map_names,
};
use mpath_ctl::{
    core::spread::{Table, rebalance},
    datapath::{Datapath, ProbeRx, maps::MapsError},
};
use mpath_lab::{Lab, ROUTER_NIC};
use mpath_tests::{
    PinDir,
    flows::{FlowLog, Flows, Sniffer},
};

const GROUP: u32 = 5;
const DATA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 19);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Enough flows that an even spread is within 25% by a wide margin (over 4 standard
/// deviations of the binomial spread), whatever the sockets' random flow hashes.
const FLOWS: usize = 1024;

/// A lab whose host NICs all carry the datapath, in one group.
struct Rig {
    datapath: Datapath,
    /// (name, ifindex, mac) of each host NIC.
    nics: Vec<(String, u32, [u8; 6])>,
    lab: Lab,
    _pins: PinDir,
}

impl Rig {
    fn new(nic_count: u32) -> Self {
        let lab = Lab::builder()
            .nics(nic_count)
            .host_addr("h0", "192.0.2.19/24")
            .build()
            .expect("lab");
        let pins = PinDir::new();
        let (datapath, nics) = {
            let _inside = lab.host().enter().expect("enter host namespace");
            let mut datapath = Datapath::open(pins.path()).expect("load datapath");
            let mut nics = Vec::new();
            for (slot, name) in lab.nics().into_iter().enumerate() {
                let ifindex = datapath.attach(&name, ProbeRx::Tc).expect("attach").ifindex;
                let mac = lab.mac(&name).expect("mac");
                let info = NicInfo {
                    slot: slot as u32,
                    group: GROUP,
                    mac,
                    ..Default::default()
                };
                datapath.maps.set_nic(ifindex, info).expect("register NIC");
                nics.push((name, ifindex, mac));
            }
            (datapath, nics)
        };
        Rig {
            datapath,
            nics,
            lab,
            _pins: pins,
        }
    }

    fn ifindex(&self, name: &str) -> u32 {
        self.nics.iter().find(|n| n.0 == name).unwrap().1
    }

    fn nic_of_mac(&self, mac: [u8; 6]) -> String {
        self.nics
            .iter()
            .find(|n| n.2 == mac)
            .map(|n| n.0.clone())
            .unwrap_or_else(|| format!("unknown MAC {mac:02x?}"))
    }

    /// Makes the NICs named in `usable` the group's table, moving as few buckets as possible.
    fn spread_over(&mut self, usable: &[&str]) -> Table {
        let current = self.datapath.maps.table(GROUP).unwrap();
        let ifindexes: Vec<u32> = usable.iter().map(|n| self.ifindex(n)).collect();
        let table = rebalance(&current, &ifindexes);
        let macs: BTreeMap<u32, [u8; 6]> = self.nics.iter().map(|n| (n.1, n.2)).collect();
        self.datapath
            .maps
            .write_table(GROUP, &table, |i| macs[&i])
            .unwrap();
        assert_eq!(self.datapath.maps.table(GROUP).unwrap(), table);
        table
    }

    /// Sends a round on `flows` and returns, per flow, the one NIC that carried it, after
    /// checking that each flow arrived whole, in order, through a single NIC.
    fn round(&self, flows: &mut Flows, per_flow: u32) -> BTreeMap<(Ipv4Addr, u16), String> {
        let sniffer = Sniffer::start(self.lab.router(), ROUTER_NIC);
        let sent = flows.send_round(per_flow, &sniffer);
        let log: FlowLog = sniffer.finish(sent);
        let mut carrier = BTreeMap::new();
        for key in flows.keys() {
            let seen = log
                .get(&key)
                .unwrap_or_else(|| panic!("flow {key:?} never arrived"));
            assert_eq!(seen.len(), per_flow as usize, "flow {key:?} lost packets");
            assert!(
                seen.windows(2).all(|w| w[0].seq < w[1].seq),
                "flow {key:?} reordered: {seen:?}"
            );
            let macs: BTreeSet<[u8; 6]> = seen.iter().map(|s| s.src_mac).collect();
            assert_eq!(macs.len(), 1, "flow {key:?} left through several NICs");
            carrier.insert(key, self.nic_of_mac(seen[0].src_mac));
        }
        carrier
    }
}

fn flows_per_nic(carrier: &BTreeMap<(Ipv4Addr, u16), String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for nic in carrier.values() {
        *m.entry(nic.clone()).or_default() += 1;
    }
    m
}

fn assert_even(carrier: &BTreeMap<(Ipv4Addr, u16), String>, nics: &[&str]) {
    let per_nic = flows_per_nic(carrier);
    let even = carrier.len() as f64 / nics.len() as f64;
    for nic in nics {
        let n = per_nic.get(*nic).copied().unwrap_or(0) as f64;
        assert!(
            (n - even).abs() <= 0.25 * even,
            "{nic} carried {n} flows, even would be {even}: {per_nic:?}"
        );
    }
    let unexpected: Vec<_> = per_nic
        .keys()
        .filter(|k| !nics.contains(&k.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "flows on NICs outside the table: {unexpected:?}"
    );
}

fn spreads_evenly_in_order(nic_count: u32) {
    let mut rig = Rig::new(nic_count);
    let names: Vec<String> = rig.nics.iter().map(|n| n.0.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    rig.spread_over(&names);
    let mut flows = Flows::open(rig.lab.host(), DATA, ROUTER, FLOWS);
    let carrier = rig.round(&mut flows, 4);
    assert_even(&carrier, &names);

    // The kernel routes everything to h0 (the data address's NIC); the others got their
    // share by redirection, and the per-NIC counters say so.
    let h0 = rig.datapath.maps.counters(0).unwrap();
    assert!(h0.redirected_packets > 0, "{h0:?}");
    for slot in 1..nic_count {
        let c = rig.datapath.maps.counters(slot).unwrap();
        assert!(
            c.tx_packets >= 4,
            "NIC slot {slot} transmitted nothing: {c:?}"
        );
        assert_eq!(
            c.redirected_packets, 0,
            "slot {slot} redirected again: {c:?}"
        );
    }
}

#[test]
fn spreads_flows_over_two_nics_evenly_and_in_order() {
    spreads_evenly_in_order(2);
}

#[test]
fn spreads_flows_over_four_nics_evenly_and_in_order() {
    spreads_evenly_in_order(4);
}

#[test]
fn a_leaving_nic_moves_only_its_own_flows() {
    let mut rig = Rig::new(4);
    rig.spread_over(&["h0", "h1", "h2", "h3"]);
    let mut flows = Flows::open(rig.lab.host(), DATA, ROUTER, FLOWS);
    let before = rig.round(&mut flows, 2);

    rig.spread_over(&["h0", "h1", "h2"]);
    let after = rig.round(&mut flows, 2);
    for (flow, nic) in &before {
        if nic == "h3" {
            assert_ne!(after[flow], "h3", "flow {flow:?} still on the removed NIC");
        } else {
            assert_eq!(
                &after[flow], nic,
                "flow {flow:?} moved although its NIC stayed"
            );
        }
    }
    assert_even(&after, &["h0", "h1", "h2"]);
}

#[test]
fn test_address_traffic_leaves_through_its_own_nic() {
    let mut rig = Rig::new(4);
    let test_address = Ipv4Addr::new(192, 0, 2, 23);
    rig.lab.add_host_addr("h3", "192.0.2.23/24").unwrap();
    let h3 = rig.ifindex("h3");
    rig.datapath
        .maps
        .update_nic(h3, |info| info.set_ipv4_test(Some(test_address)))
        .unwrap();
    rig.datapath
        .maps
        .set_test_address(test_address, h3)
        .unwrap();
    // h3 has failed: it is out of the table, yet its test address must keep using it.
    rig.spread_over(&["h0", "h1", "h2"]);

    let mut probes = Flows::open(rig.lab.host(), test_address, ROUTER, 64);
    let mut data = Flows::open(rig.lab.host(), DATA, ROUTER, FLOWS);
    let probe_carrier = rig.round(&mut probes, 2);
    assert!(
        probe_carrier.values().all(|nic| nic == "h3"),
        "test-address traffic left through {:?}",
        flows_per_nic(&probe_carrier)
    );
    assert_even(&rig.round(&mut data, 2), &["h0", "h1", "h2"]);
}

/// Makes `test_address` (on `nic`) one of the group's test addresses.
fn add_test_address(rig: &mut Rig, nic: &str, test_address: Ipv4Addr) {
    rig.lab
        .add_host_addr(nic, &format!("{test_address}/24"))
        .unwrap();
    let ifindex = rig.ifindex(nic);
    rig.datapath
        .maps
        .update_nic(ifindex, |info| info.set_ipv4_test(Some(test_address)))
        .unwrap();
    rig.datapath
        .maps
        .set_test_address(test_address, ifindex)
        .unwrap();
}

#[test]
fn routed_nics_keep_their_flows_and_test_addresses_still_move() {
    let mut rig = Rig::new(2);
    let (h0, h1) = (rig.ifindex("h0"), rig.ifindex("h1"));
    let test_address = Ipv4Addr::new(192, 0, 2, 22);
    add_test_address(&mut rig, "h1", test_address);
    // Without the flag this table would send about half of the flows to h1.
    rig.spread_over(&["h0", "h1"]);
    for ifindex in [h0, h1] {
        rig.datapath.maps.set_routed(ifindex, true).unwrap();
    }
    // Rewriting a NIC (as mpathd does when its test address changes) keeps the bit.
    rig.datapath.maps.update_nic(h0, |_| {}).unwrap();
    assert!(rig.datapath.maps.egress_nic(h0).unwrap().is_routed());

    let mut data = Flows::open(rig.lab.host(), DATA, ROUTER, FLOWS);
    let mut probes = Flows::open(rig.lab.host(), test_address, ROUTER, 64);
    let carrier = rig.round(&mut data, 2);
    assert_eq!(
        flows_per_nic(&carrier),
        BTreeMap::from([("h0".to_string(), FLOWS)]),
        "routed NICs keep the flows the kernel gave them"
    );
    let h0_counters = rig.datapath.maps.counters(0).unwrap();
    assert_eq!(h0_counters.redirected_packets, 0, "{h0_counters:?}");
    assert!(
        h0_counters.tx_packets >= 2 * FLOWS as u64,
        "routed packets are still counted: {h0_counters:?}"
    );

    // The kernel routes the test address's packets to h0 too; they still go to h1.
    let probe_carrier = rig.round(&mut probes, 2);
    assert!(
        probe_carrier.values().all(|nic| nic == "h1"),
        "test-address traffic left through {:?}",
        flows_per_nic(&probe_carrier)
    );
    let h0_counters = rig.datapath.maps.counters(0).unwrap();
    assert_eq!(h0_counters.redirected_packets, 2 * 64, "{h0_counters:?}");
}

#[test]
fn an_unusable_nic_sends_its_packets_to_the_bucket_nic() {
    let mut rig = Rig::new(2);
    let (h0, h1) = (rig.ifindex("h0"), rig.ifindex("h1"));
    for ifindex in [h0, h1] {
        rig.datapath.maps.set_routed(ifindex, true).unwrap();
    }
    // h0 became unusable: out of the routes and of the table; the kernel still routes to it.
    rig.datapath.maps.set_routed(h0, false).unwrap();
    rig.spread_over(&["h1"]);
    let egress = rig.datapath.maps.egress_nic(h0).unwrap();
    assert!(egress.is_present() && !egress.is_routed(), "{egress:?}");

    let mut flows = Flows::open(rig.lab.host(), DATA, ROUTER, FLOWS);
    let carrier = rig.round(&mut flows, 2);
    assert_eq!(
        flows_per_nic(&carrier),
        BTreeMap::from([("h1".to_string(), FLOWS)])
    );
    let (c0, c1) = (
        rig.datapath.maps.counters(0).unwrap(),
        rig.datapath.maps.counters(1).unwrap(),
    );
    assert!(c0.redirected_packets >= 2 * FLOWS as u64, "{c0:?}");
    assert_eq!(c1.redirected_packets, 0, "{c1:?}");
    assert!(c1.tx_packets >= 2 * FLOWS as u64, "{c1:?}");
}

#[test]
fn set_routed_refuses_a_nic_the_datapath_does_not_have() {
    let mut rig = Rig::new(1);
    let unknown = rig.ifindex("h0") + 100;
    let error = rig.datapath.maps.set_routed(unknown, true).unwrap_err();
    assert!(
        matches!(error, MapsError::UnknownNic(i) if i == unknown),
        "{error}"
    );
    assert!(error.to_string().contains(&unknown.to_string()), "{error}");
    assert!(!rig.datapath.maps.egress_nic(unknown).unwrap().is_present());
}

/// struct __sk_buff offset of `ifindex`: where BPF_PROG_TEST_RUN takes the egress NIC from.
const SKB_IFINDEX: usize = 40;
const TC_ACT_UNSPEC: u32 = -1i32 as u32;
const TC_ACT_REDIRECT: u32 = 7;

/// The loopback device: in every namespace, never a group NIC.
const LOOPBACK_IFINDEX: u32 = 1;

/// Source and destination ports of [`run_on`]'s frame.
const FRAME_PORTS: [u8; 4] = [0x9c, 0x40, 0x27, 0x0f];

/// The program alone on a UDP frame from h0 leaving `ifindex` (BPF_PROG_TEST_RUN): its
/// verdict, with `repeat` above 1 the kernel's average ns per run, printed for comparison
/// (not asserted: timing on a shared machine proves nothing), and the frame's source MAC
/// after the program (a redirect writes the chosen NIC's).
fn run_on(rig: &mut Rig, ifindex: u32, repeat: u32) -> (u32, f64, [u8; 6]) {
    let mut frame = vec![0u8; 14 + 20 + 8 + 4];
    frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[6..12].copy_from_slice(&rig.nics[0].2);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&(20u16 + 8 + 4).to_be_bytes());
    frame[22] = 64;
    frame[23] = 17;
    frame[26..30].copy_from_slice(&DATA.octets());
    frame[30..34].copy_from_slice(&ROUTER.octets());
    frame[34..38].copy_from_slice(&FRAME_PORTS);
    let mut ctx = [0u8; 192];
    ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    // The ifindex must name a device of the running thread's namespace.
    let _inside = rig.lab.host().enter().unwrap();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat;
    let mut out = vec![0u8; frame.len()];
    opts.data_out = Some(&mut out);
    let result = rig.datapath.spread().unwrap().test_run(opts).unwrap();
    let mut source = [0u8; 6];
    source.copy_from_slice(&out[6..12]);
    (
        result.return_value,
        result.duration.as_nanos() as f64,
        source,
    )
}

#[test]
fn the_program_alone_redirects_only_what_is_not_routed() {
    let mut rig = Rig::new(2);
    let (h0, h1) = (rig.ifindex("h0"), rig.ifindex("h1"));
    let macs: BTreeMap<u32, [u8; 6]> = rig.nics.iter().map(|n| (n.1, n.2)).collect();
    let table_on = |rig: &mut Rig, owner: u32| {
        rig.datapath
            .maps
            .write_table(GROUP, &[owner; BUCKETS_PER_GROUP as usize], |i| macs[&i])
            .unwrap();
    };

    table_on(&mut rig, h1);
    assert_eq!(run_on(&mut rig, h0, 1).0, TC_ACT_REDIRECT);
    rig.datapath.maps.set_routed(h0, true).unwrap();
    assert_eq!(run_on(&mut rig, h0, 1).0, TC_ACT_UNSPEC);

    // Cost with every packet staying on h0: full path (hash and bucket) versus routed, and
    // the floor (test-run overhead, one array lookup) on a NIC that is not mpath's.
    const RUNS: u32 = 1_000_000;
    table_on(&mut rig, h0);
    rig.datapath.maps.set_routed(h0, false).unwrap();
    let (verdict, bucket_ns, _) = run_on(&mut rig, h0, RUNS);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    rig.datapath.maps.set_routed(h0, true).unwrap();
    let (verdict, routed_ns, _) = run_on(&mut rig, h0, RUNS);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    let (verdict, floor_ns, _) = run_on(&mut rig, LOOPBACK_IFINDEX, RUNS);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    eprintln!(
        "mpath_spread per packet: bucket path {bucket_ns:.0} ns, routed {routed_ns:.0} ns, \
         not a group NIC {floor_ns:.0} ns"
    );
}

/// Sets or clears `EGRESS_F_NO_CARRIER` on `ifindex` in the pinned egress map, as the carrier
/// hook does in the kernel (this machine's kernel refuses tracing programs; the virtio guest
/// runs the hook itself).
fn mark_carrier_lost(rig: &Rig, ifindex: u32, lost: bool) {
    let path = rig.datapath.pins().maps().join(map_names::EGRESS_NICS);
    let mut egress: Array<MapData, EgressNic> =
        Array::try_from(Map::Array(MapData::from_pin(path).unwrap())).unwrap();
    let mut nic = egress.get(&ifindex, 0).unwrap();
    if lost {
        nic.flags |= EGRESS_F_NO_CARRIER;
    } else {
        nic.flags &= !EGRESS_F_NO_CARRIER;
    }
    egress.set(ifindex, nic, 0).unwrap();
}

/// The egress half of the carrier hook: a NIC marked without carrier sends even the packets
/// the routes put on it to their flow's bucket NIC, and past buckets whose NIC lost its
/// carrier too; mpathd's own writes keep the mark, and a new mpathd clears it.
#[test]
fn a_nic_without_carrier_sends_its_routed_packets_to_the_next_bucket_nic_with_carrier() {
    let mut rig = Rig::new(3);
    let [h0, h1, h2] = ["h0", "h1", "h2"].map(|n| rig.ifindex(n));
    let macs: BTreeMap<u32, [u8; 6]> = rig.nics.iter().map(|n| (n.1, n.2)).collect();
    let b = (flow_hash::v4(DATA.octets(), ROUTER.octets(), 17, FRAME_PORTS) % BUCKETS_PER_GROUP)
        as usize;
    let at = |steps: usize| (b + steps * 16) % BUCKETS_PER_GROUP as usize;

    // A fresh table gives each NIC one run of buckets: the frame's flow, whose bucket `b` is
    // in the run of a NIC that lost its carrier, finds the other NIC's run.
    let fresh = rebalance(&[0; BUCKETS_PER_GROUP as usize], &[h0, h1]);
    rig.datapath
        .maps
        .write_table(GROUP, &fresh, |i| macs[&i])
        .unwrap();
    let (owner, other) = if fresh[b] == h0 { (h0, h1) } else { (h1, h0) };
    rig.datapath.maps.set_routed(owner, true).unwrap();
    mark_carrier_lost(&rig, owner, true);
    let (verdict, _, source) = run_on(&mut rig, owner, 1);
    assert_eq!((verdict, source), (TC_ACT_REDIRECT, macs[&other]));
    mark_carrier_lost(&rig, owner, false);

    // The flow's bucket `b` is h1's, the next one tried h0's, all others h2's.
    let mut table = [h2; BUCKETS_PER_GROUP as usize];
    table[at(0)] = h1;
    table[at(1)] = h0;
    rig.datapath
        .maps
        .write_table(GROUP, &table, |i| macs[&i])
        .unwrap();
    for nic in [h0, h1, h2] {
        rig.datapath.maps.set_routed(nic, true).unwrap();
    }
    assert_eq!(run_on(&mut rig, h1, 1).0, TC_ACT_UNSPEC, "routed: it stays");

    mark_carrier_lost(&rig, h1, true);
    let (verdict, _, source) = run_on(&mut rig, h1, 1);
    assert_eq!(
        (verdict, source),
        (TC_ACT_REDIRECT, macs[&h0]),
        "to the next bucket's h0"
    );
    mark_carrier_lost(&rig, h0, true);
    let (verdict, _, source) = run_on(&mut rig, h1, 1);
    assert_eq!(
        (verdict, source),
        (TC_ACT_REDIRECT, macs[&h2]),
        "past h0, to h2"
    );
    assert_eq!(
        run_on(&mut rig, h2, 1).0,
        TC_ACT_UNSPEC,
        "h2, routed with carrier, keeps it"
    );

    // mpathd's writes (a NIC set up again, its routed bit) keep the hook's mark.
    let info = rig.datapath.maps.nic(h1).unwrap();
    rig.datapath.maps.set_nic(h1, info).unwrap();
    rig.datapath.maps.set_routed(h1, false).unwrap();
    assert!(!rig.datapath.maps.egress_nic(h1).unwrap().has_carrier());
    // The carrier back (the hook on netif_carrier_on): h0 takes its flows again.
    mark_carrier_lost(&rig, h0, false);
    assert_eq!(run_on(&mut rig, h1, 1).2, macs[&h0]);
    // A new mpathd starts with no stale mark.
    rig.datapath.maps.clear_carrier_marks().unwrap();
    for nic in [h0, h1, h2] {
        assert!(rig.datapath.maps.egress_nic(nic).unwrap().has_carrier());
    }
    rig.datapath.maps.set_routed(h1, true).unwrap();
    assert_eq!(run_on(&mut rig, h1, 1).0, TC_ACT_UNSPEC);
}
