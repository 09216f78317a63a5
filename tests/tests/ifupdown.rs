//! mpathd beside Debian 12's ifupdown (0.8) with the shipped example (dist/ifupdown/mpath in
//! /etc/network/interfaces.d): `ifup -a` brings the group NICs up with no address and leaves
//! mpathd's configuration alone; `ifdown` of a group NIC is a failure to mpathd, and `ifup`
//! its repair.

use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::Lab;
use mpath_tests::{
    daemon::{h1_failed_back, inbound, state_of},
    dist_text,
    ifupdown::Ifupdown,
    managed::{NICS, Watch, start_mpathd},
};

/// The shipped stanzas for the lab's NICs.
fn stanzas() -> String {
    let text = dist_text("ifupdown/mpath");
    for nic in ["eth0", "eth1", "eth2"] {
        assert!(
            text.contains(&format!("iface {nic} inet manual\n")),
            "{text}"
        );
    }
    text.replace("eth0", "h0")
        .replace("eth1", "h1")
        .replace("eth2", "h2")
}

/// The lab's NICs down, as at boot, until `ifup -a` brings them up.
fn lab_brought_up() -> (Lab, Ifupdown) {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    for nic in NICS {
        lab.host().ip(&["link", "set", nic, "down"]).unwrap();
    }
    let ifupdown = Ifupdown::sandbox(lab.host(), &[("mpath", &stanzas())]);
    ifupdown.ifup(&["-a"]);
    (lab, ifupdown)
}

#[test]
fn ifup_brings_the_group_nics_up_with_no_address_and_leaves_mpathd_s_configuration_alone() {
    let (lab, ifupdown) = lab_brought_up();
    let state = ifupdown.state();
    for nic in NICS {
        assert!(
            state.lines().any(|l| l == format!("{nic}={nic}")),
            "{state}"
        );
        assert_eq!(lab.host().operstate(nic).unwrap(), "UP", "{nic}");
        assert!(
            lab.host_addrs(nic).unwrap().is_empty(),
            "{nic} has an address"
        );
    }
    let _daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    // As a second run of networking.service or an administrator would.
    let out = ifupdown.ifup(&["-a"]);
    watch.untouched(&out, "ifup -a");
    let out = ifupdown.ifup(&["--force", "--verbose", "h0", "h1", "h2"]);
    watch.untouched(&out, "ifup --force");
}

/// As the README says: `ifdown` takes the link down, which fails the NIC over, and flushes
/// its IPv4 addresses, of which mpathd puts the test address back; `ifup` brings the link up,
/// mpathd repairs the NIC and its data address returns.
#[test]
fn ifdown_of_a_group_nic_fails_it_over_and_ifup_repairs_it() {
    let (lab, ifupdown) = lab_brought_up();
    let mut daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    ifupdown.ifdown(&["h1"]);
    assert!(!ifupdown.state().contains("h1="), "{}", ifupdown.state());
    assert_eq!(lab.host().operstate("h1").unwrap(), "DOWN");
    daemon.wait_until("h1 failed, its address on h2, its test address back", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") == Some("h2")
        }) && lab.host_addrs("h1").unwrap() == ["192.0.2.22/32"]
    });
    let h2 = lab.host_addrs("h2").unwrap();
    assert!(h2.iter().any(|a| a == "192.0.2.20/24"), "{h2:?}");
    let log = daemon.log();
    assert!(
        log.contains("test address 192.0.2.22/32 was removed from h1 behind mpathd's back"),
        "ifdown did not flush h1's test address:\n{log}"
    );
    ifupdown.ifup(&["h1"]);
    assert!(ifupdown.state().contains("h1=h1"), "{}", ifupdown.state());
    daemon.wait_until("h1 repaired, its address back", h1_failed_back);
    watch.settled("after ifup h1");
}
