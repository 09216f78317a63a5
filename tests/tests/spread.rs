//! Outbound load spreading end to end: the TC program on real veth NICs in a lab, UDP flows
//! from the host, and a sniffer at the router telling which NIC carried each packet.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use mpath_common::{NIC_F_TEST_V4, NicInfo};
use mpath_ctl::{
    core::spread::{Table, rebalance},
    datapath::Datapath,
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
                let ifindex = datapath.attach(&name).expect("attach");
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
        flows.send_round(per_flow);
        let log: FlowLog = sniffer.finish();
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
    let mut info = rig.datapath.maps.nics.get(&h3, 0).unwrap();
    info.flags |= NIC_F_TEST_V4;
    info.test_v4 = test_address.octets();
    rig.datapath.maps.set_nic(h3, info).unwrap();
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
