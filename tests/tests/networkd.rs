//! mpathd beside a real systemd-networkd that manages the group NICs with the shipped example
//! (dist/networkd/) and a management NIC of its own: starting, reloading, reconfiguring and
//! restarting networkd, and cable flaps, leave mpathd's addresses, routes, nexthops and rule
//! alone. A link managed without KeepConfiguration=yes makes networkd 252 delete mpathd's
//! nexthop groups, which mpathd makes again at once. The netplan example (dist/netplan/),
//! rendered by netplan, does for networkd what the networkd example does.

use std::{process::Command, thread::sleep, time::Duration};

use mpath_lab::{Lab, ROUTER_V4};
use mpath_tests::{
    daemon::{Mpathd, all_ok, h1_failed_back, h1_failed_over, three_nic_config},
    dist_text,
    managed::{Monitor, NICS, Watch, routes_served, snapshot, start_mpathd},
    networkd::Networkd,
};

/// The shipped group NIC file, matching the lab's NICs.
fn group_network() -> String {
    let text = dist_text("networkd/50-mpath.network");
    assert!(text.contains("\nName=eth0 eth1 eth2\n"), "{text}");
    text.replace("\nName=eth0 eth1 eth2\n", "\nName=h0 h1 h2\n")
}

/// A management NIC with a static address, with `KeepConfiguration=yes` as the README asks
/// or as networkd runs one by default.
fn management_network(address: &str, keep: bool) -> String {
    let keep = if keep { "KeepConfiguration=yes\n" } else { "" };
    format!("[Match]\nName=mg0\n\n[Network]\nAddress={address}\nLinkLocalAddressing=no\n{keep}")
}

/// networkd.conf with the shipped drop-in appended (the sandbox has no networkd.conf.d).
fn networkd_conf() -> String {
    format!("[Network]\n\n{}", dist_text("networkd/mpath.conf"))
}

const MANAGED: [&str; 4] = ["h0", "h1", "h2", "mg0"];

/// The lab with a management NIC mg0 for networkd, a veth whose peer stays unmanaged.
fn lab() -> Lab {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let host = lab.host();
    host.ip(&["link", "add", "mg0", "type", "veth", "peer", "name", "mg1"])
        .unwrap();
    host.ip(&["link", "set", "mg1", "up"]).unwrap();
    lab
}

#[test]
fn networkd_starting_reloading_restarting_and_cable_flaps_leave_mpathd_s_configuration_alone() {
    let lab = lab();
    let host = lab.host();
    let mut daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    let before = watch.before();
    for expected in ["192.0.2.19/24", "192.0.2.20/24", "default nhid [h0,h1]"] {
        assert!(before.contains(expected), "{expected} missing:\n{before}");
    }

    let mut networkd = Networkd::sandbox(
        host,
        &[
            ("50-mpath.network", &group_network()),
            (
                "10-mg0.network",
                &management_network("203.0.113.5/24", true),
            ),
        ],
        &networkd_conf(),
    );
    networkd.start(&MANAGED);
    watch.untouched(&networkd.log(), "networkd started");

    // A changed file and `networkctl reload` reconfigure the links that use it.
    networkd.write_network(
        "10-mg0.network",
        &management_network("203.0.113.6/24", true),
    );
    networkd.write_network("50-mpath.network", &(group_network() + "\n# changed\n"));
    networkd.networkctl(&["reload"]);
    daemon.wait_until("networkd to apply the reload to mg0", |_| {
        let mg0 = host.ip(&["-o", "addr", "show", "dev", "mg0"]).unwrap();
        mg0.contains("203.0.113.6/24") && !mg0.contains("203.0.113.5/24")
    });
    networkd.wait_configured(&MANAGED);
    watch.untouched(&networkd.log(), "networkctl reload");

    networkd.networkctl(&["reconfigure", "h0", "h1", "h2", "mg0"]);
    networkd.wait_configured(&MANAGED);
    watch.untouched(&networkd.log(), "networkctl reconfigure");

    networkd.stop();
    networkd.start(&MANAGED);
    watch.untouched(&networkd.log(), "networkd restarted");

    // A cable flap: mpathd moves h1's address to the standby and back; networkd stays out.
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed, its address on the standby h2", h1_failed_over);
    sleep(Duration::from_secs(1));
    let h1 = lab.host_addrs("h1").unwrap();
    assert_eq!(
        h1,
        ["192.0.2.22/32"],
        "h1 without carrier: its test address alone"
    );
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 repaired, its address back", h1_failed_back);
    watch.settled("after the flap");

    let log = networkd.log();
    let removed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Removing foreign"))
        .collect();
    assert!(removed.is_empty(), "networkd removed {removed:#?}");
    assert!(
        log.contains("h1: Lost carrier") && log.contains("h1: Gained carrier"),
        "networkd did not see the flap:\n{log}"
    );
}

/// IPv4 alone: the kernel deletes the routes through a deleted nexthop group without a
/// notification, so only the nexthop's own deletion tells mpathd. (A link with addresses
/// would change main's routes too, which mpathd hears of anyway.)
#[test]
fn nexthop_groups_networkd_deletes_are_made_again_at_once() {
    let lab = lab();
    let host = lab.host();
    let ipv4_only = three_nic_config(700).replace(", \"2001:db8::19/64\"", "")
        + &format!("\n[[group.route]]\nto = \"default\"\nvia = \"{ROUTER_V4}\"\n");
    let mut daemon = Mpathd::start(host, &ipv4_only);
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(&lab, &["-4"])
    });
    let before = snapshot(&lab);
    let mut networkd = Networkd::sandbox(
        host,
        &[
            ("50-mpath.network", &group_network()),
            (
                "10-mg0.network",
                "[Match]\nName=mg0\n\n[Network]\nLinkLocalAddressing=no\n",
            ),
        ],
        &networkd_conf(),
    );
    networkd.start(&MANAGED);
    let monitor = Monitor::start(&lab);
    networkd.networkctl(&["reconfigure", "mg0"]);
    networkd.wait_configured(&MANAGED);
    sleep(Duration::from_secs(1));
    let deletions = monitor.deletions();
    assert!(
        deletions.iter().any(|d| d.contains(" group ")),
        "networkd deleted no nexthop group: {deletions:#?}"
    );
    assert_eq!(
        snapshot(&lab),
        before,
        "mpathd did not make its routes again"
    );
}

/// The netplan example, rendered by netplan itself for the lab's NICs, gives networkd what
/// the networkd example does: mpathd's configuration survives networkd's start, a
/// reconfigure and a restart.
#[test]
fn the_netplan_example_renders_networks_that_leave_mpathd_s_configuration_alone() {
    let root = std::env::temp_dir().join(format!("mpath-netplan-{}", std::process::id()));
    let _: Result<_, _> = std::fs::remove_dir_all(&root);
    let yaml_dir = root.join("etc/netplan");
    std::fs::create_dir_all(&yaml_dir).unwrap();
    let yaml = dist_text("netplan/60-mpath.yaml")
        .replace("eth0", "h0")
        .replace("eth1", "h1")
        .replace("eth2", "h2");
    let yaml_path = yaml_dir.join("60-mpath.yaml");
    std::fs::write(&yaml_path, yaml).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&yaml_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let generated = Command::new("netplan")
        .args(["generate", "--root-dir"])
        .arg(&root)
        .output()
        .expect("netplan (package netplan.io, installed by `cargo xtask setup`)");
    assert!(generated.status.success(), "{generated:?}");
    let rendered: Vec<(String, String)> = NICS
        .iter()
        .map(|nic| {
            let name = format!("10-netplan-{nic}.network");
            let text =
                std::fs::read_to_string(root.join("run/systemd/network").join(&name)).unwrap();
            (name, text)
        })
        .collect();
    std::fs::remove_dir_all(&root).unwrap();
    for (name, text) in &rendered {
        for line in [
            "LinkLocalAddressing=ipv6",
            "IPv6AcceptRA=no",
            "RequiredForOnline=no",
            "CriticalConnection=true",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} not in {name}:\n{text}"
            );
        }
        assert!(!text.contains("Address="), "{name}:\n{text}");
    }

    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let _daemon = start_mpathd(&lab);
    let watch = Watch::start(&lab);
    let networks: Vec<(&str, &str)> = rendered
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let mut networkd = Networkd::sandbox(lab.host(), &networks, &networkd_conf());
    networkd.start(&NICS);
    watch.untouched(&networkd.log(), "networkd started");
    networkd.networkctl(&["reconfigure", "h0", "h1", "h2"]);
    networkd.wait_configured(&NICS);
    watch.untouched(&networkd.log(), "networkctl reconfigure");
    networkd.stop();
    networkd.start(&NICS);
    watch.untouched(&networkd.log(), "networkd restarted");
}

/// What not to do, as the README describes it: a data address in a `.network`. networkd
/// removes it on carrier loss and adds it back to its NIC when the carrier returns, before
/// mpathd has repaired the NIC; mpathd removes that copy, and after the repair the address is
/// on its NIC once.
#[test]
fn a_data_address_in_a_network_file_comes_back_early_and_mpathd_removes_the_copy() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let mut daemon = start_mpathd(&lab);
    let h1 = group_network()
        .replace("\nName=h0 h1 h2\n", "\nName=h1\n")
        .replace("[Network]\n", "[Network]\nAddress=192.0.2.20/24\n");
    let mut networkd = Networkd::sandbox(
        lab.host(),
        &[
            ("40-h1.network", &h1),
            ("50-mpath.network", &group_network()),
        ],
        &networkd_conf(),
    );
    networkd.start(&NICS);
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed, its address on h2", h1_failed_over);
    let monitor = Monitor::start(&lab);
    let logged = networkd.log().len();
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 repaired, its address back", h1_failed_back);
    assert!(
        monitor
            .deletions()
            .iter()
            .any(|d| d.contains("192.0.2.20/24") && d.contains(" h1")),
        "mpathd did not remove networkd's early copy on h1"
    );
    let log = daemon.log();
    assert!(
        log.contains(
            "data address 192.0.2.20/24 was added to h1 behind mpathd's back; it lives on h2: \
             removing this copy"
        ),
        "{log}"
    );
    let since_restore = networkd.log()[logged..].to_string();
    assert!(
        since_restore
            .lines()
            .any(|l| l.starts_with("h1: Configuring static address") && l.contains("192.0.2.20/24")),
        "networkd did not add it back:\n{since_restore}"
    );
    sleep(Duration::from_secs(1));
    let holders: Vec<&str> = NICS
        .iter()
        .copied()
        .filter(|nic| {
            lab.host_addrs(nic)
                .unwrap()
                .iter()
                .any(|a| a == "192.0.2.20/24")
        })
        .collect();
    assert_eq!(holders, ["h1"]);
}
