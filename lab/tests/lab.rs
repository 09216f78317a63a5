//! Labs built for real (root only): connectivity, faults, NIC churn, isolation, cleanup.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mpath_lab::{Lab, ROUTER_V4, ROUTER_V6, leftover_namespaces, remove_stale_namespaces};

const HOST_V4: &str = "192.0.2.21/24";
const HOST_V6: &str = "2001:db8::21/64";

/// One echo from `nic` to `target`, waiting at most a second.
fn ping(lab: &Lab, nic: &str, target: &str) -> bool {
    lab.host()
        .run(&["ping", "-c1", "-W1", "-I", nic, target])
        .is_ok()
}

/// After a repaired fault: the neighbour entry for `target` may still be mid-resolution from
/// the failed attempts, and its next ARP/ND retransmission can be up to a second away.
fn ping_after_repair(lab: &Lab, nic: &str, target: &str) -> bool {
    lab.host()
        .run(&["ping", "-c1", "-W3", "-I", nic, target])
        .is_ok()
}

fn lab_with_h0_address() -> Lab {
    Lab::builder()
        .nics(2)
        .host_addr("h0", HOST_V4)
        .build()
        .expect("build lab")
}

fn carrier_changes(lab: &Lab, nic: &str) -> u64 {
    let path = format!("/sys/class/net/{nic}/carrier_changes");
    lab.host()
        .run(&["cat", &path])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn namespace_names(lab: &Lab) -> Vec<String> {
    vec![
        lab.host().name().to_string(),
        lab.switch().name().to_string(),
        lab.router().name().to_string(),
    ]
}

fn assert_gone(names: &[String]) {
    let leftover = leftover_namespaces();
    for name in names {
        assert!(!leftover.contains(name), "{name} still exists");
        assert!(!std::path::Path::new("/run/netns").join(name).exists());
    }
}

#[test]
fn built_lab_has_the_promised_shape() {
    let lab = Lab::builder()
        .nics(3)
        .router_addrs(&["192.0.2.2/24", "192.0.2.3/24"])
        .host_addr("h1", "198.51.100.7/24")
        .build()
        .unwrap();
    assert_eq!(lab.nics(), ["h0", "h1", "h2"]);
    for name in namespace_names(&lab) {
        assert!(
            name.starts_with(&format!("mpl-{}-", std::process::id())),
            "{name}"
        );
        assert!(leftover_namespaces().contains(&name));
    }
    for nic in lab.nics() {
        assert!(
            lab.host().has_carrier(&nic).unwrap(),
            "{nic} has no carrier"
        );
        let port = lab.switch_port(&nic).unwrap();
        let line = lab
            .switch()
            .ip(&["-o", "link", "show", "dev", &port])
            .unwrap();
        assert!(line.contains("master br0"), "{line}");
    }
    assert_eq!(lab.host_addrs("h0").unwrap(), Vec::<String>::new());
    assert_eq!(lab.host_addrs("h1").unwrap(), ["198.51.100.7/24"]);
    let router_addrs = lab
        .router()
        .ip(&["-o", "addr", "show", "dev", "r0"])
        .unwrap();
    for cidr in [
        "192.0.2.1/24",
        "192.0.2.2/24",
        "192.0.2.3/24",
        "2001:db8::1/64",
    ] {
        assert!(
            router_addrs.contains(cidr),
            "{cidr} missing: {router_addrs}"
        );
    }
    let bridge = lab.switch().ip(&["-d", "link", "show", "br0"]).unwrap();
    assert!(bridge.contains("stp_state 0"), "{bridge}");
    assert!(bridge.contains("forward_delay 0"), "{bridge}");

    let dad = lab
        .host()
        .run(&["cat", "/proc/sys/net/ipv6/conf/h0/accept_dad"])
        .unwrap();
    assert_eq!(dad.trim(), "0");
    let ifindex = lab.host().ifindex("h0").unwrap();
    let sysfs_ifindex = lab
        .host()
        .run(&["cat", "/sys/class/net/h0/ifindex"])
        .unwrap();
    assert_eq!(sysfs_ifindex.trim(), ifindex.to_string());
    let mac = lab.mac("h2").unwrap();
    let sysfs_mac = lab
        .host()
        .run(&["cat", "/sys/class/net/h2/address"])
        .unwrap();
    let mac_text = mac.map(|octet| format!("{octet:02x}")).join(":");
    assert_eq!(sysfs_mac.trim(), mac_text);
}

#[test]
fn host_nic_reaches_router_over_ipv4_and_ipv6() {
    let lab = lab_with_h0_address();
    lab.add_host_addr("h0", HOST_V6).unwrap();
    assert_eq!(lab.host_addrs("h0").unwrap(), [HOST_V4, HOST_V6]);

    assert!(ping(&lab, "h0", ROUTER_V4));
    // Usable at once: no DAD on the host address nor on the router's.
    assert!(ping(&lab, "h0", ROUTER_V6));

    lab.del_host_addr("h0", HOST_V6).unwrap();
    assert_eq!(lab.host_addrs("h0").unwrap(), [HOST_V4]);
}

#[test]
fn switch_port_rx_counts_what_left_the_host_nic() {
    let lab = lab_with_h0_address();
    // Frames to a MAC nobody owns: they leave h0, get flooded and draw no reply, so only
    // the switch's receive counter on h0's port can account for them.
    lab.host()
        .ip(&[
            "neigh",
            "add",
            "192.0.2.99",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "h0",
        ])
        .unwrap();
    let h0_before = lab.switch_port_rx_packets("h0").unwrap();
    let h1_before = lab.switch_port_rx_packets("h1").unwrap();
    let unanswered = lab
        .host()
        .run(&["ping", "-c20", "-i0.01", "-w1", "-I", "h0", "192.0.2.99"]);
    assert!(unanswered.is_err(), "nobody should answer 192.0.2.99");

    let h0_sent = lab.switch_port_rx_packets("h0").unwrap() - h0_before;
    let h1_sent = lab.switch_port_rx_packets("h1").unwrap() - h1_before;
    assert!(h0_sent >= 20, "switch saw {h0_sent} packets from h0");
    // h1 only sends its own few IPv6 link-up messages (MLD, router solicitation).
    assert!(h1_sent < 10, "switch saw {h1_sent} packets from h1");
}

#[test]
fn cut_removes_carrier_and_restore_brings_it_back() {
    let lab = lab_with_h0_address();
    assert!(ping(&lab, "h0", ROUTER_V4));

    lab.cut("h0").unwrap();
    assert!(!lab.host().has_carrier("h0").unwrap());
    let link = lab.host().ip(&["-o", "link", "show", "dev", "h0"]).unwrap();
    assert!(link.contains("NO-CARRIER"), "{link}");
    assert!(lab.host().has_carrier("h1").unwrap(), "cut touched h1");
    assert!(!ping(&lab, "h0", ROUTER_V4));

    lab.restore("h0").unwrap();
    assert!(lab.host().has_carrier("h0").unwrap());
    assert!(ping_after_repair(&lab, "h0", ROUTER_V4));
}

#[test]
fn silent_drop_loses_traffic_while_carrier_stays_up() {
    let lab = lab_with_h0_address();
    lab.add_host_addr("h1", "192.0.2.22/24").unwrap();
    assert!(ping(&lab, "h0", ROUTER_V4));

    lab.drop_silently("h0").unwrap();
    assert!(lab.host().has_carrier("h0").unwrap());
    assert!(!ping(&lab, "h0", ROUTER_V4));
    assert!(ping(&lab, "h1", ROUTER_V4), "drop of h0 hit h1");
    let twice = lab.drop_silently("h0").unwrap_err().to_string();
    assert!(twice.contains("already"), "{twice}");

    lab.undrop("h0").unwrap();
    assert!(ping_after_repair(&lab, "h0", ROUTER_V4));
    let not_dropped = lab.undrop("h0").unwrap_err().to_string();
    assert!(not_dropped.contains("not dropped"), "{not_dropped}");
}

#[test]
fn flap_toggles_carrier_and_ends_up() {
    let lab = Lab::new(1).unwrap();
    let before = carrier_changes(&lab, "h0");
    lab.flap("h0", 3, Duration::from_millis(20)).unwrap();
    assert_eq!(carrier_changes(&lab, "h0"), before + 6);
    assert!(lab.host().has_carrier("h0").unwrap());
}

#[test]
fn nics_come_and_go_while_running() {
    let mut lab = Lab::new(2).unwrap();
    let added = lab.add_nic().unwrap();
    assert_eq!(added, "h2");
    assert!(lab.host().has_carrier("h2").unwrap());
    lab.add_host_addr("h2", "192.0.2.23/24").unwrap();
    assert!(ping(&lab, "h2", ROUTER_V4));

    lab.drop_silently("h1").unwrap();
    lab.remove_nic("h1").unwrap();
    assert_eq!(lab.nics(), ["h0", "h2"]);
    assert!(lab.host().ifindex("h1").is_err());
    assert!(lab.switch().ifindex("s1").is_err());
    let gone = lab.cut("h1").unwrap_err().to_string();
    assert!(
        gone.contains("\"h1\" is not a NIC of this lab (NICs: h0, h2)"),
        "{gone}"
    );

    // Re-added under its old name, and not silently dropped any more.
    assert_eq!(lab.add_nic().unwrap(), "h1");
    lab.add_host_addr("h1", "192.0.2.22/24").unwrap();
    assert!(ping(&lab, "h1", ROUTER_V4));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let bad_router = Lab::builder()
        .router_addrs(&["192.0.2.2"])
        .build()
        .unwrap_err();
    assert!(format!("{bad_router:#}").contains("CIDR"), "{bad_router:#}");
    let bad_host = Lab::builder()
        .host_addr("h0", "2001:db8::x/64")
        .build()
        .unwrap_err();
    assert!(
        format!("{bad_host:#}").contains("host NIC h0"),
        "{bad_host:#}"
    );

    let lab = Lab::new(1).unwrap();
    for result in [lab.cut("eth0"), lab.drop_silently("h7"), lab.restore("h")] {
        let message = result.unwrap_err().to_string();
        assert!(message.contains("is not a NIC of this lab"), "{message}");
    }
    let failed = lab
        .host()
        .run(&["ip", "link", "show", "dev", "nope0"])
        .unwrap_err();
    let message = failed.to_string();
    assert!(message.contains("ip link show dev nope0"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
}

#[test]
fn parallel_labs_are_isolated() {
    let labs: Vec<Lab> = std::thread::scope(|scope| {
        let builders: Vec<_> = (0..4).map(|_| scope.spawn(lab_with_h0_address)).collect();
        builders
            .into_iter()
            .map(|lab| lab.join().unwrap())
            .collect()
    });
    let mut names: Vec<String> = labs.iter().flat_map(namespace_names).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 12);

    // The same addresses in every lab, and a fault in one lab stays there.
    labs[0].cut("h0").unwrap();
    assert!(!ping(&labs[0], "h0", ROUTER_V4));
    std::thread::scope(|scope| {
        for lab in &labs[1..] {
            scope.spawn(|| assert!(ping(lab, "h0", ROUTER_V4)));
        }
    });
    drop(labs);
    assert_gone(&names);
}

/// Waits until `pid` runs inside the lab's host namespace: `ip netns exec` enters it only
/// some time after it was spawned, and a process still on its way in is not the lab's yet.
fn wait_until_inside(lab: &Lab, pid: u32) {
    let name = lab.host().name().to_owned();
    for _ in 0..500 {
        let pids = Command::new("ip")
            .args(["netns", "pids", &name])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&pids.stdout)
            .lines()
            .any(|line| line.trim() == pid.to_string())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} never entered {name}");
}

#[test]
fn namespaces_and_their_processes_go_away_when_a_test_panics() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let lab = Lab::new(1).unwrap();
        let sleeper = lab
            .host()
            .cmd("sleep")
            .arg("60")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until_inside(&lab, sleeper.id());
        sender.send((namespace_names(&lab), sleeper)).unwrap();
        panic!("test failure inside a lab");
    })
    .join();
    assert!(panicked.is_err());
    let (names, mut sleeper) = receiver.recv().unwrap();
    assert_gone(&names);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "process in the lab was not killed");

    let unwound = std::panic::catch_unwind(|| {
        let lab = Lab::new(1).unwrap();
        let names = namespace_names(&lab);
        std::panic::panic_any(names);
    })
    .unwrap_err();
    assert_gone(unwound.downcast_ref::<Vec<String>>().unwrap());
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    let mut exited = Command::new("true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    let stale = format!("mpl-{dead_pid}-0-stale");
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    let own = Lab::new(1).unwrap();

    let removed = remove_stale_namespaces().unwrap();
    assert!(removed.contains(&stale), "{removed:?}");
    assert_gone(std::slice::from_ref(&stale));
    let leftover = leftover_namespaces();
    for name in namespace_names(&own) {
        assert!(
            leftover.contains(&name),
            "live lab namespace {name} was removed"
        );
    }
}

#[test]
fn enter_moves_only_this_thread_and_returns() {
    let lab = Lab::new(1).unwrap();
    let own_namespace = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let before = own_namespace();
    let lab_namespace = std::fs::metadata(lab.host().path()).unwrap().ino();
    let (ask, asked) = std::sync::mpsc::channel::<()>();
    let (answer, answered) = std::sync::mpsc::channel();
    let bystander = std::thread::spawn(move || {
        while asked.recv().is_ok() {
            answer.send(own_namespace()).unwrap();
        }
    });
    {
        let _inside = lab.host().enter().unwrap();
        assert_eq!(own_namespace(), lab_namespace);
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"h0".as_ptr()) };
        assert_eq!(ifindex, lab.host().ifindex("h0").unwrap());
        ask.send(()).unwrap();
        assert_eq!(answered.recv().unwrap(), before, "another thread moved too");
    }
    assert_eq!(own_namespace(), before);
    drop(ask);
    bystander.join().unwrap();
}

#[test]
fn daemon_command_sees_lab_network_and_host_bpffs() {
    let lab = Lab::new(1).unwrap();
    let marker = format!("mpath-lab-test-{}", std::process::id());
    // ensure_bpffs ran inside daemon_command; create the marker after that.
    let mut command = lab.host().daemon_command("sh").unwrap();
    let host_dir = std::path::Path::new("/sys/fs/bpf").join(&marker);
    std::fs::create_dir(&host_dir).unwrap();
    let script = format!(
        "stat -f -c %T /sys/fs/bpf; cat /sys/class/net/h0/ifindex; test -d /sys/fs/bpf/{marker} && echo seen"
    );
    let started = Instant::now();
    let output = command.args(["-c", &script]).output().unwrap();
    std::fs::remove_dir(&host_dir).unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let ifindex = lab.host().ifindex("h0").unwrap().to_string();
    assert_eq!(lines, ["bpf_fs", ifindex.as_str(), "seen"]);
    assert!(started.elapsed() < Duration::from_secs(5));

    let temp_dirs: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(lab.host().name()))
        .collect();
    assert!(
        temp_dirs.is_empty(),
        "temporary mount dirs left: {temp_dirs:?}"
    );
}

/// Also run by `ensure_bpffs_mounts_a_missing_bpffs_once` in a mount namespace without bpffs.
#[test]
fn ensure_bpffs_leaves_one_bpffs_mounted() {
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| mpath_lab::ensure_bpffs().unwrap());
        }
    });
    let kind = Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&kind.stdout).trim(), "bpf_fs");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bpffs_mounts = mounts
        .lines()
        .filter(|line| line.split_whitespace().nth(4) == Some("/sys/fs/bpf"))
        .count();
    println!("bpffs mounts: {bpffs_mounts}");
}

#[test]
fn ensure_bpffs_mounts_a_missing_bpffs_once() {
    let this_test_binary = std::env::current_exe().unwrap();
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            r#"while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done
stat -f -c "before: %T" /sys/fs/bpf
exec "$0" --exact ensure_bpffs_leaves_one_bpffs_mounted --nocapture --test-threads 1"#,
        )
        .arg(this_test_binary)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("before: sysfs"), "{stdout}");
    assert!(stdout.contains("bpffs mounts: 1\n"), "{stdout}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}
