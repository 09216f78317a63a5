//! mpathd beside a real NetworkManager (Debian 12's 1.42) that manages the group NICs with the
//! shipped example (dist/NetworkManager/): it brings the links up and adds nothing, and its
//! start, reloads, restart and cable flaps leave mpathd's addresses, routes, nexthops and rule
//! alone, with no default route of its own.

use std::{thread::sleep, time::Duration};

use mpath_lab::Lab;
use mpath_tests::{
    daemon::{Mpathd, h1_failed_back, h1_failed_over},
    dist_text,
    managed::{NICS, Watch, start_mpathd},
    network_manager::NetworkManager,
};

/// The shipped profile for each lab NIC, as the README says to adapt it.
fn profiles() -> Vec<(String, String)> {
    let text = dist_text("NetworkManager/mpath-eth0.nmconnection");
    for line in ["id=mpath-eth0", "interface-name=eth0"] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    NICS.iter()
        .map(|nic| {
            (
                format!("mpath-{nic}.nmconnection"),
                text.replace("eth0", nic),
            )
        })
        .collect()
}

/// The shipped conf.d file, naming the lab's NICs.
fn conf() -> String {
    let text = dist_text("NetworkManager/mpath.conf");
    assert!(text.contains("interface-name:eth2"), "{text}");
    text.replace("eth0", "h0")
        .replace("eth1", "h1")
        .replace("eth2", "h2")
}

fn sandbox(lab: &Lab) -> NetworkManager {
    let profiles = profiles();
    let connections: Vec<(&str, &str)> = profiles
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    NetworkManager::sandbox(lab.host(), &[("mpath.conf", &conf())], &connections)
}

/// Default routes in main of either family, which NetworkManager must not add.
fn main_defaults(lab: &Lab) -> String {
    ["-4", "-6"]
        .iter()
        .map(|family| {
            lab.host()
                .ip(&[family, "route", "show", "default"])
                .unwrap()
        })
        .collect()
}

/// mpathd fails h1 over when its cable is pulled and repairs it when it is back; for longer
/// than NetworkManager's 6 s carrier wait, after which it would take a NIC it has activated
/// down to nothing (with `ignore-carrier`, it does not). Nothing but mpathd's own moves of
/// h1's data address is deleted: h1's test address and link-local address stay.
fn cable_flap(lab: &Lab, daemon: &mut Mpathd, watch: &Watch, nm: &NetworkManager) {
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed, its address on h2", h1_failed_over);
    sleep(Duration::from_secs(8));
    assert_eq!(
        lab.host_addrs("h1").unwrap(),
        ["192.0.2.22/32"],
        "h1 without carrier: its test address alone\nNetworkManager's log:\n{}",
        nm.log()
    );
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 repaired, its address back", h1_failed_back);
    sleep(Duration::from_secs(1));
    let deleted: Vec<String> = watch
        .deletions()
        .into_iter()
        .filter(|l| !l.contains("192.0.2.20"))
        .filter(|l| l.contains("192.0.2.22") || l.contains("inet6 fe80"))
        .collect();
    assert!(
        deleted.is_empty(),
        "deleted in the flap: {deleted:#?}\nNetworkManager's log:\n{}",
        nm.log()
    );
    let log = daemon.log();
    assert!(
        !log.contains("behind mpathd's back"),
        "mpathd repaired what NetworkManager did:\n{log}"
    );
}

/// As at a boot where NetworkManager comes first: it brings the (down) group NICs up with its
/// profiles and no address; mpathd then configures them, and NetworkManager's reloads,
/// restart and a cable flap change nothing of it.
#[test]
fn network_manager_brings_the_links_up_then_leaves_mpathd_s_configuration_alone() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let host = lab.host();
    for nic in NICS {
        host.ip(&["link", "set", nic, "down"]).unwrap();
    }
    let mut nm = sandbox(&lab);
    nm.start();
    for nic in NICS {
        nm.wait_activated(nic, &format!("mpath-{nic}"));
        assert!(
            lab.host_addrs(nic).unwrap().is_empty(),
            "NetworkManager put addresses on {nic}"
        );
    }

    let mut daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    nm.nmcli(&["general", "reload"]);
    watch.untouched(&nm.log(), "nmcli general reload");
    nm.nmcli(&["connection", "reload"]);
    watch.untouched(&nm.log(), "nmcli connection reload");
    nm.stop();
    nm.start();
    for nic in NICS {
        nm.wait_activated(nic, &format!("mpath-{nic}"));
    }
    watch.untouched(&nm.log(), "NetworkManager restarted");

    cable_flap(&lab, &mut daemon, &watch, &nm);
    nm.wait_activated("h1", "mpath-h1");
    watch.settled("after the flap");
    assert_eq!(main_defaults(&lab), "", "a default route in main");
    let profiles = nm.nmcli(&["--get-values", "NAME", "connection", "show"]);
    let mut profiles: Vec<&str> = profiles.lines().filter(|p| *p != "lo").collect();
    profiles.sort();
    assert_eq!(profiles, ["mpath-h0", "mpath-h1", "mpath-h2"]);
}

/// NetworkManager started while mpathd runs takes the group NICs, which carry mpathd's
/// addresses, as configured outside it, and leaves them so through a reload, a restart and a
/// cable flap.
#[test]
fn network_manager_started_beside_mpathd_leaves_its_configuration_alone() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let mut daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    let mut nm = sandbox(&lab);
    nm.start();
    watch.untouched(&nm.log(), "NetworkManager started");
    nm.nmcli(&["general", "reload"]);
    nm.nmcli(&["connection", "reload"]);
    watch.untouched(&nm.log(), "nmcli reloads");
    nm.stop();
    nm.start();
    watch.untouched(&nm.log(), "NetworkManager restarted");
    cable_flap(&lab, &mut daemon, &watch, &nm);
    watch.settled("after the flap");
    assert_eq!(main_defaults(&lab), "", "a default route in main");
}
