//! Group routes end to end: a host whose DHCP client and router advertisements put its
//! default routes on h1, traffic to networks behind the router, and h1 failing under it.
//! The group, not the NIC, must carry that traffic: through mpathd's table, its rule and the
//! resilient nexthop groups over the usable NICs.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::LazyLock,
    time::Duration,
};

use mpath_ctl::config::DEFAULT_ROUTE_TABLE;
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{BEHIND_ROUTER_V4, BEHIND_ROUTER_V6, Lab};
use mpath_tests::{
    daemon::{
        Mpathd, all_ok, h1_failed_back, inbound, ipv6_only_config, state_of, three_nic_config,
    },
    flows::{Flows, Sniffer},
    hooks::hooks,
    managed::{routes_served, table},
};

/// The lab group at FDT 700 ms (probe interval 100 ms).
static CONFIG: LazyLock<String> = LazyLock::new(|| three_nic_config(700));

/// The addresses applications may use as sources: the group's data addresses.
const DATA_ADDRESSES: [&str; 3] = ["192.0.2.19", "192.0.2.20", "2001:db8::19"];

/// Three NICs, a router with networks behind it, and what a DHCP client and router
/// advertisements leave on h1 before mpathd starts: h1's lease 192.0.2.20/24 (h1's data
/// address in [`CONFIG`]) and the default routes of both families through h1.
fn dhcp_lab() -> Lab {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    lab.add_host_addr("h1", "192.0.2.20/24").unwrap();
    add_dhcp_default_route(&lab);
    lab.add_ra_default_route("h1").unwrap();
    lab
}

/// The IPv4 default route through h1 as a DHCP client adds it.
fn add_dhcp_default_route(lab: &Lab) {
    lab.host()
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
            "dev",
            "h1",
            "proto",
            "dhcp",
            "metric",
            "100",
        ])
        .unwrap();
}

/// The nexthop group id mpathd's default route of `family` uses.
fn default_group(lab: &Lab, family: &str) -> u32 {
    let text = table(lab, family);
    let line = text
        .lines()
        .find(|l| l.starts_with("default nhid "))
        .unwrap_or_else(|| panic!("no default route in mpathd's table:\n{text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The NICs of a nexthop group's members, by member id.
fn members(lab: &Lab, group: u32) -> BTreeMap<u32, String> {
    let text = lab
        .host()
        .ip(&["nexthop", "show", "id", &group.to_string()])
        .unwrap();
    let list = word_after(&text, "group").unwrap_or_else(|| panic!("not a group: {text}"));
    list.split('/')
        .map(|member| {
            let id: u32 = member.parse().unwrap();
            let text = lab.host().ip(&["nexthop", "show", "id", member]).unwrap();
            (id, word_after(&text, "dev").unwrap())
        })
        .collect()
}

/// The NIC behind each bucket of a resilient group.
fn buckets(lab: &Lab, group: u32) -> BTreeMap<u32, String> {
    let nics = members(lab, group);
    let text = lab
        .host()
        .ip(&["nexthop", "bucket", "show", "id", &group.to_string()])
        .unwrap();
    text.lines()
        .map(|l| {
            let index = word_after(l, "index").unwrap().parse().unwrap();
            let member: u32 = word_after(l, "nhid").unwrap().parse().unwrap();
            (index, nics[&member].clone())
        })
        .collect()
}

fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(str::to_string)
}

/// Sends `count` pings from the host to `to`, 20 ms apart; returns how many were answered.
fn pings(lab: &Lab, to: &str, count: u32) -> u32 {
    let out = lab
        .host()
        .cmd("ping")
        .args(["-q", "-i", "0.02", "-W", "1", "-c", &count.to_string(), to])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| {
            let tables = [table(lab, "-4"), table(lab, "-6")].join("");
            panic!("no ping summary from ping {to}: {out:?}\nmpathd's table:\n{tables}")
        });
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .nth(1)
        .unwrap()
}

/// Every ping to the networks behind the router, IPv4 and IPv6, is answered.
fn assert_off_link_reachable(lab: &Lab, when: &str) {
    for to in [BEHIND_ROUTER_V4, BEHIND_ROUTER_V6] {
        assert_eq!(pings(lab, to, 20), 20, "pings to {to} {when}");
    }
}

/// The unspecified address of a family, to bind a socket the kernel then picks a source for.
fn unspecified(v4: bool) -> IpAddr {
    if v4 {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    }
}

/// The source the kernel gives a new connection to `to`: never a test address.
fn assert_sources_are_data_addresses(lab: &Lab, when: &str) {
    let _inside = lab.host().enter().unwrap();
    // Behind the router and on the link (where the kernel would take a NIC's first address).
    for to in [
        BEHIND_ROUTER_V4,
        BEHIND_ROUTER_V6,
        "198.51.100.77",
        "2001:db8:ff::77",
        "192.0.2.77",
        "2001:db8::77",
    ] {
        let to: IpAddr = to.parse().unwrap();
        let any = unspecified(to.is_ipv4());
        let socket = UdpSocket::bind((any, 0)).unwrap();
        socket.connect((to, 9)).unwrap();
        let source = socket.local_addr().unwrap().ip().to_string();
        assert!(
            DATA_ADDRESSES.contains(&source.as_str()),
            "{when}: a connection to {to} gets source {source}"
        );
    }
}

/// A TCP connection from the host to the network behind the router, and a way to check it
/// still carries data both ways.
struct Connection {
    client: TcpStream,
    server: TcpStream,
}

impl Connection {
    /// Connects from the host to `to` (a host behind the router) on port 5002.
    fn open(lab: &Lab, to: &str) -> Connection {
        let to = SocketAddr::new(to.parse().unwrap(), 5002);
        let listener = {
            let _inside = lab.router().enter().unwrap();
            TcpListener::bind(to).unwrap()
        };
        let client = {
            let _inside = lab.host().enter().unwrap();
            TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap()
        };
        let (server, _) = listener.accept().unwrap();
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let source = client.local_addr().unwrap().ip().to_string();
        assert!(DATA_ADDRESSES.contains(&source.as_str()), "source {source}");
        Connection { client, server }
    }

    fn exchange(&mut self, round: u8) {
        let mut buf = [0u8; 1000];
        self.client.write_all(&[round; 1000]).unwrap();
        self.server.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == round));
        self.server.write_all(&[round + 100; 1000]).unwrap();
        self.client.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == round + 100));
    }
}

/// A UDP exchange between the host and a host behind the router: each datagram one way and
/// back, as a stream of requests and answers would go.
struct Datagrams {
    host: UdpSocket,
    far: UdpSocket,
}

impl Datagrams {
    fn open(lab: &Lab, to: &str) -> Datagrams {
        let to = SocketAddr::new(to.parse().unwrap(), 5003);
        let far = {
            let _inside = lab.router().enter().unwrap();
            UdpSocket::bind(to).unwrap()
        };
        let host = {
            let _inside = lab.host().enter().unwrap();
            let any = unspecified(to.is_ipv4());
            let socket = UdpSocket::bind((any, 0)).unwrap();
            socket.connect(to).unwrap();
            socket
        };
        for s in [&host, &far] {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        Datagrams { host, far }
    }

    /// Sends `count` datagrams each way; all must arrive.
    fn exchange(&self, count: u8) {
        let mut buf = [0u8; 64];
        for n in 0..count {
            self.host.send(&[n; 64]).unwrap();
            let (len, from) = self.far.recv_from(&mut buf).unwrap();
            assert_eq!((len, buf[0]), (64, n));
            self.far.send_to(&buf[..len], from).unwrap();
            let len = self.host.recv(&mut buf).unwrap();
            assert_eq!((len, buf[0]), (64, n));
        }
    }
}

fn started(lab: &Lab) -> Mpathd {
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(lab, &["-4", "-6"])
    });
    daemon
}

#[test]
fn off_link_traffic_survives_carrier_loss_of_the_nic_the_default_route_named() {
    let lab = dhcp_lab();
    let mut daemon = started(&lab);
    assert_off_link_reachable(&lab, "with every NIC up");
    assert_sources_are_data_addresses(&lab, "with every NIC up");
    let mut connections = [BEHIND_ROUTER_V4, BEHIND_ROUTER_V6].map(|to| Connection::open(&lab, to));
    connections.iter_mut().for_each(|c| c.exchange(1));

    let datagrams = [BEHIND_ROUTER_V4, BEHIND_ROUTER_V6].map(|to| Datagrams::open(&lab, to));
    datagrams.iter().for_each(|d| d.exchange(10));

    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed and its address moved", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") != Some("h1")
        })
    });
    // The per-NIC default routes still name h1 (marked linkdown); the group's do not.
    assert!(
        lab.host()
            .ip(&["route", "show", "default"])
            .unwrap()
            .contains("dev h1"),
        "main keeps the DHCP client's route"
    );
    for family in ["-4", "-6"] {
        let nics = members(&lab, default_group(&lab, family));
        assert!(
            !nics.values().any(|n| n == "h1"),
            "{family}: h1 still serves the default route: {nics:?}"
        );
    }
    assert_off_link_reachable(&lab, "after h1's cable was cut");
    assert_sources_are_data_addresses(&lab, "after h1's cable was cut");
    connections.iter_mut().for_each(|c| c.exchange(2));
    datagrams.iter().for_each(|d| d.exchange(10));

    lab.restore("h1").unwrap();
    daemon.wait_until("h1 repaired with its address back", h1_failed_back);
    for family in ["-4", "-6"] {
        let nics = members(&lab, default_group(&lab, family));
        assert!(
            nics.values().any(|n| n == "h1"),
            "{family}: h1 serves the default route again: {nics:?}"
        );
    }
    assert_off_link_reachable(&lab, "after h1 came back");
    connections.iter_mut().for_each(|c| c.exchange(3));
}

#[test]
fn off_link_traffic_survives_a_silent_failure_of_the_nic_the_default_route_named() {
    let lab = dhcp_lab();
    let mut daemon = started(&lab);
    let mut connections = [BEHIND_ROUTER_V4, BEHIND_ROUTER_V6].map(|to| Connection::open(&lab, to));
    connections.iter_mut().for_each(|c| c.exchange(1));

    let datagrams = [BEHIND_ROUTER_V4, BEHIND_ROUTER_V6].map(|to| Datagrams::open(&lab, to));
    datagrams.iter().for_each(|d| d.exchange(10));

    lab.drop_silently("h1").unwrap();
    daemon.wait_until("h1 failed by its probes", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h1") == Some(InterfaceStatus::Failed))
    });
    for family in ["-4", "-6"] {
        let nics = members(&lab, default_group(&lab, family));
        assert_eq!(
            nics.values().collect::<Vec<_>>(),
            ["h0", "h2"],
            "{family}: h0 and the standby that took over from h1"
        );
    }
    assert_off_link_reachable(&lab, "while h1 drops everything");
    assert_sources_are_data_addresses(&lab, "while h1 drops everything");
    connections.iter_mut().for_each(|c| c.exchange(2));
    datagrams.iter().for_each(|d| d.exchange(10));
}

#[test]
fn routed_flows_spread_over_the_usable_nics_and_only_a_leaving_nic_s_buckets_move() {
    let lab = dhcp_lab();
    let mut daemon = started(&lab);
    let group = default_group(&lab, "-4");
    let before = buckets(&lab, group);
    let count = |nic: &str, b: &BTreeMap<u32, String>| b.values().filter(|n| *n == nic).count();
    assert_eq!(before.len(), 256);
    assert_eq!((count("h0", &before), count("h1", &before)), (128, 128));

    // Flows from one source to one destination differ in their ports only: they spread
    // because mpathd hashes on layer 4 (fib_multipath_hash_policy 1).
    let per_nic = flows_per_nic(&lab);
    for (nic, flows) in ["h0", "h1"].iter().zip(per_nic) {
        assert!(
            (192..=320).contains(&flows),
            "{nic} carried {flows} of 512 flows: not within 25% of even"
        );
    }

    // Offline h1: the standby h2 takes its place, and exactly h1's buckets with it.
    let offline = daemon.ctl(lab.host(), &["offline", "h1"]);
    assert!(offline.status.success(), "{offline:?}");
    daemon.wait_until("h1's nexthops gone from the group", |_| {
        !members(&lab, group).values().any(|n| n == "h1")
    });
    let during = buckets(&lab, group);
    for (index, nic) in &before {
        let expected = if nic == "h1" { "h2" } else { nic.as_str() };
        assert_eq!(during[index], expected, "bucket {index}");
    }

    // Back online, h1 takes its buckets back from the standby, which leaves.
    let online = daemon.ctl(lab.host(), &["online", "h1"]);
    assert!(online.status.success(), "{online:?}");
    daemon.wait_until("every bucket where it was", |_| {
        buckets(&lab, group) == before
    });
}

#[test]
fn routes_outlive_a_killed_mpathd_follow_main_and_leave_with_teardown() {
    let lab = dhcp_lab();
    let mut daemon = started(&lab);
    let group = default_group(&lab, "-4");
    let nexthops = lab.host().ip(&["nexthop", "show"]).unwrap();

    // A route added later through a group NIC is served too.
    lab.host()
        .ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "h0",
        ])
        .unwrap();
    daemon.wait_until("the new route served", |_| {
        table(&lab, "-4").contains("203.0.113.0/24 nhid")
    });
    // Deleting the administrator's route takes its group route along.
    lab.host()
        .ip(&[
            "route",
            "del",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "h0",
        ])
        .unwrap();
    daemon.wait_until("the deleted route gone", |_| {
        !table(&lab, "-4").contains("203.0.113.0/24")
    });

    daemon.kill();
    assert_eq!(
        default_group(&lab, "-4"),
        group,
        "routes stay after kill -9"
    );
    assert_off_link_reachable(&lab, "with mpathd killed");
    daemon.spawn(lab.host());
    daemon.wait_until("the restarted mpathd ready", |d| {
        all_ok(d) && routes_served(&lab, &["-4", "-6"])
    });
    assert_eq!(
        lab.host().ip(&["nexthop", "show"]).unwrap(),
        nexthops,
        "a restart adopts the nexthops as they are"
    );
    assert_eq!(default_group(&lab, "-4"), group);

    // The DHCP client's lease ends: its route goes, and the group's with it.
    lab.host()
        .ip(&["route", "del", "default", "via", "192.0.2.1", "dev", "h1"])
        .unwrap();
    daemon.wait_until("the IPv4 default route gone from mpathd's table", |_| {
        !table(&lab, "-4").lines().any(|l| l.starts_with("default"))
    });
    assert!(
        table(&lab, "-6")
            .lines()
            .any(|l| l.starts_with("default nhid ")),
        "the IPv6 default route stays"
    );

    assert!(
        lab.host_addrs("h0")
            .unwrap()
            .contains(&"192.0.2.21/32".to_string())
    );
    // Not while mpathd runs: it would take the routes and programs the daemon is using.
    let refused = daemon.teardown(lab.host());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("mpathd is running with pin directory"),
        "{refused:?}"
    );
    assert!(table(&lab, "-6").contains("default nhid"), "routes kept");
    assert!(hooks(lab.host(), "h0").has_tc_programs(), "programs kept");

    daemon.stop();
    let teardown = daemon.teardown(lab.host());
    assert!(teardown.status.success(), "{teardown:?}");
    assert_eq!(table(&lab, "-4"), "");
    assert_eq!(table(&lab, "-6"), "");
    assert_eq!(lab.host().ip(&["nexthop", "show"]).unwrap(), "");
    let rules = lab.host().ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains(&DEFAULT_ROUTE_TABLE.to_string()), "{rules}");
    // The test addresses are mpathd's and go; the data addresses stay for their users.
    let h0 = lab.host_addrs("h0").unwrap();
    assert!(
        !h0.contains(&"192.0.2.21/32".to_string()) && h0.contains(&"192.0.2.19/24".to_string()),
        "{h0:?}"
    );
    // Traffic follows main's routes alone now.
    assert_eq!(pings(&lab, BEHIND_ROUTER_V6, 5), 5);
}

/// The lab group with `spread` set, and without a route in main: mpathd's configuration
/// alone gives the host its default routes.
fn config(spread: &str, routes: &str) -> String {
    let group = three_nic_config(700).replace(
        "name = \"g0\"\n",
        &format!("name = \"g0\"\nspread = \"{spread}\"\n"),
    );
    group + routes
}

/// Which of h0 and h1 each of 512 flows from 192.0.2.19 to the network behind the router
/// left through, as the router saw them (by source MAC); panics on a flow that changed NIC
/// or came from another one.
fn flows_per_nic(lab: &Lab) -> [usize; 2] {
    let sniffer = Sniffer::start(lab.router(), "r0");
    let mut flows = Flows::open(
        lab.host(),
        "192.0.2.19".parse().unwrap(),
        BEHIND_ROUTER_V4.parse().unwrap(),
        512,
    );
    let sent = flows.send_round(4, &sniffer);
    let log = sniffer.finish(sent);
    let macs = [lab.mac("h0").unwrap(), lab.mac("h1").unwrap()];
    let mut per_nic = [0usize; 2];
    for (key, seen) in &log {
        let mac = seen[0].src_mac;
        assert!(
            seen.iter().all(|s| s.src_mac == mac),
            "flow {key:?} changed NIC"
        );
        let nic = macs
            .iter()
            .position(|m| *m == mac)
            .unwrap_or_else(|| panic!("flow {key:?} left through neither active NIC ({mac:02x?})"));
        per_nic[nic] += 1;
    }
    assert_eq!(per_nic.iter().sum::<usize>(), 512, "every flow arrived");
    per_nic
}

#[test]
fn configured_routes_reach_the_networks_behind_the_router_through_any_usable_nic() {
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    // A router that ignores echoes to 224.0.0.1, as Linux does by default: only the
    // configured route names it as an IPv4 probe target.
    lab.router()
        .run(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=1"])
        .unwrap();
    let routes = r#"
[[group.route]]
to = "default"
via = "192.0.2.1"

[[group.route]]
to = "2001:db8:ff::/64"
via = "fe80::1"
"#;
    // No `targets`: the configured route's gateway is the IPv4 router to probe.
    let without_targets = config("routes", routes).replace("targets = [\"192.0.2.1\"]\n", "");
    assert!(!without_targets.contains("targets ="));
    let mut daemon = Mpathd::start(lab.host(), &without_targets);
    daemon.wait_until("all NICs ok and the configured routes served", |d| {
        all_ok(d)
            && table(&lab, "-4").contains("default nhid")
            && table(&lab, "-6").contains("2001:db8:ff::/64 nhid")
    });
    assert_eq!(
        lab.host().ip(&["route", "show", "default"]).unwrap(),
        "",
        "main has no default route: the configuration is the only one"
    );
    // Each NIC probes the configured route's gateway, a router, from its IPv4 test address.
    daemon.wait_until(
        "the gateway an IPv4 probe target of every NIC",
        gateway_probed_by_every_nic,
    );
    assert_off_link_reachable(&lab, "with every NIC up");
    lab.cut("h0").unwrap();
    daemon.wait_until("h0 failed", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h0") == Some(InterfaceStatus::Failed))
    });
    assert_off_link_reachable(&lab, "after h0's cable was cut");
    assert_sources_are_data_addresses(&lab, "after h0's cable was cut");
    lab.restore("h0").unwrap();
    daemon.wait_until("h0 repaired", all_ok);

    // Nothing in the kernel changes at a restart or a reload: the probers must take the
    // gateway from the configuration itself.
    daemon.kill();
    daemon.spawn(lab.host());
    daemon.wait_until(
        "the gateway probed by every NIC after kill -9 and a restart",
        gateway_probed_by_every_nic,
    );
    daemon.reload(&without_targets.replace(
        "failure_detection_time_ms = 700",
        "failure_detection_time_ms = 800",
    ));
    daemon.wait_until(
        "the gateway probed by every NIC after a reload that rebuilt the group",
        |d| {
            d.log().contains("failure_detection_time_ms 700 -> 800")
                && gateway_probed_by_every_nic(d)
        },
    );
    assert!(
        !daemon.log().contains("has had no IPv4 probe target"),
        "{}",
        daemon.log()
    );
}

/// Every lab NIC probes 192.0.2.1 over IPv4, as a router, and has had an answer.
fn gateway_probed_by_every_nic(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        ["h0", "h1", "h2"].iter().all(|nic| {
            s.targets.iter().any(|t| {
                t.interface == *nic
                    && t.test_address.is_some_and(|a| a.is_ipv4())
                    && t.targets == ["192.0.2.1".parse::<IpAddr>().unwrap()]
                    && t.health.iter().any(|h| {
                        h.answered > 0 && h.source == mpath_ctl::core::target::TargetSource::Router
                    })
            })
        })
    })
}

#[test]
fn with_datapath_spreading_the_routes_use_one_nic_and_the_egress_program_spreads() {
    let lab = dhcp_lab();
    let mut daemon = Mpathd::start(lab.host(), &config("datapath", ""));
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(&lab, &["-4", "-6"])
    });
    for family in ["-4", "-6"] {
        let nics = members(&lab, default_group(&lab, family));
        assert_eq!(nics.values().collect::<Vec<_>>(), ["h0"], "{family}");
    }
    let per_nic = flows_per_nic(&lab);
    for (nic, flows) in ["h0", "h1"].iter().zip(per_nic) {
        assert!(
            (192..=320).contains(&flows),
            "{nic} carried {flows} of 512 flows: not within 25% of even"
        );
    }
    let mut connection = Connection::open(&lab, BEHIND_ROUTER_V4);
    connection.exchange(1);

    lab.drop_silently("h0").unwrap();
    daemon.wait_until("h0 failed by its probes", |d| {
        d.try_status()
            .is_some_and(|s| state_of(&s, "h0") == Some(InterfaceStatus::Failed))
    });
    for family in ["-4", "-6"] {
        let nics = members(&lab, default_group(&lab, family));
        assert_eq!(
            nics.values().collect::<Vec<_>>(),
            ["h1"],
            "{family}: the routes moved to the first usable NIC"
        );
    }
    assert_off_link_reachable(&lab, "while h0 drops everything");
    connection.exchange(2);
}

/// Deletes the default routes through h1 as systemd-networkd does when h1 loses its carrier.
fn delete_h1_default_routes(lab: &Lab) {
    for family in ["-4", "-6"] {
        lab.host()
            .ip(&[family, "route", "del", "default", "dev", "h1"])
            .unwrap();
    }
}

#[test]
fn the_group_keeps_the_routes_the_kernel_or_a_network_manager_deleted_with_a_nic() {
    let lab = dhcp_lab();
    let mut daemon = started(&lab);

    // A network manager that drops its routes on carrier loss.
    lab.cut("h1").unwrap();
    delete_h1_default_routes(&lab);
    daemon.wait_until("the default routes held by the group", |d| {
        d.log()
            .matches("group g0 keeps the route default via")
            .count()
            == 2
    });
    assert!(default_group(&lab, "-4") > 0 && default_group(&lab, "-6") > 0);
    assert_off_link_reachable(&lab, "after h1 lost its carrier and its routes");
    // `mpathctl groups --json` shows what the group holds.
    let held = daemon.status().groups[0].held_routes.clone();
    assert!(
        held.contains(&"default via 192.0.2.1 metric 100".to_string())
            && held.iter().any(|r| r.starts_with("default via fe80::1")),
        "{held:?}"
    );

    // It adds them back once h1 has its address again: the group gives them up.
    lab.restore("h1").unwrap();
    daemon.wait_until("h1 repaired with its address back", h1_failed_back);
    add_dhcp_default_route(&lab);
    daemon.wait_until("the IPv4 default route back in main", |d| {
        d.log()
            .contains("the route default via 192.0.2.1 metric 100 is back in the main table")
    });

    // The kernel deletes every route of a NIC that leaves the host.
    let mut lab = lab;
    lab.remove_nic("h1").unwrap();
    daemon.wait_until("the IPv4 default route held again", |d| {
        d.log()
            .matches("group g0 keeps the route default via 192.0.2.1 metric 100")
            .count()
            == 2
    });
    assert_off_link_reachable(&lab, "after h1 left the host");
    assert_sources_are_data_addresses(&lab, "after h1 left the host");
}

/// A DHCP client renewing its lease while h1 is failed deletes the default route and adds it
/// again through h1, which holds only its test address: the kernel accepts it because mpathd
/// keeps the group's subnets on-link through every NIC (as a Solaris test address's netmask
/// does), and the group serves it. A group left without a default route says so.
#[test]
fn a_default_route_renewed_through_a_failed_nic_is_accepted_and_served() {
    let lab = dhcp_lab();
    let mut daemon = started(&lab);
    // The inactive standby h2 holds only its test address: a route through it is accepted.
    lab.host()
        .ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "h2",
            "metric",
            "5",
        ])
        .unwrap();
    lab.drop_silently("h1").unwrap();
    daemon.wait_until("h1 failed, its address moved", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") != Some("h1")
        })
    });
    let on_h1 = lab.host_addrs("h1").unwrap();
    assert!(
        !on_h1.iter().any(|a| a.starts_with("192.0.2.20/")),
        "only the test address left on h1: {on_h1:?}"
    );
    // What dhclient-script does on RENEW: the old route goes, the new one comes.
    lab.host()
        .ip(&["-4", "route", "del", "default", "dev", "h1"])
        .unwrap();
    daemon.wait_until("the group's loss of its default route said", |d| {
        d.log()
            .contains("group g0 has no IPv4 default route any more")
    });
    add_dhcp_default_route(&lab);
    daemon.wait_until("the default route served again", |d| {
        d.log()
            .matches("group g0 serves an IPv4 default route")
            .count()
            == 2
            && routes_served(&lab, &["-4"])
    });
    assert_off_link_reachable(&lab, "with the default route renewed through the failed h1");
    assert_sources_are_data_addresses(&lab, "with the default route renewed through h1");
    // A lookup bound to the failed NIC does not take its test address as the source.
    let bound = lab
        .host()
        .ip(&["-4", "route", "get", "192.0.2.50", "oif", "h1"])
        .unwrap();
    assert!(bound.contains("src 192.0.2."), "{bound}");
    assert!(
        !bound.contains("src 192.0.2.22"),
        "test address as source: {bound}"
    );

    // --teardown takes mpathd's on-link routes away with the rest.
    daemon.stop();
    let teardown = daemon.teardown(lab.host());
    assert!(teardown.status.success(), "{teardown:?}");
    for family in ["-4", "-6"] {
        let main = lab
            .host()
            .ip(&[family, "route", "show", "proto", "109"])
            .unwrap();
        assert!(main.trim().is_empty(), "{family}: {main}");
    }
}

/// [`CONFIG`] with an IPv6 data address on h1 too, so that the group has two.
fn two_ipv6_addresses() -> String {
    CONFIG.replace(
        "data_addresses = [\"192.0.2.20/24\"]",
        "data_addresses = [\"192.0.2.20/24\", \"2001:db8::20/64\"]",
    )
}

/// The source a connecting socket gets for `to`, as most clients connect: without binding
/// first (std's UdpSocket cannot do that).
fn connected_source(to: IpAddr, kind: socket2::Type) -> IpAddr {
    let domain = if to.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, kind, None).unwrap();
    socket.set_nonblocking(true).unwrap();
    // A TCP connect to a port nobody listens on is refused later; the source is set now.
    let _: Result<_, _> = socket.connect(&SocketAddr::new(to, 9).into());
    let local = socket.local_addr().unwrap().as_socket().unwrap();
    local.ip()
}

#[test]
fn connections_to_many_destinations_take_their_source_from_the_nic_they_leave() {
    let lab = dhcp_lab();
    let mut daemon = Mpathd::start(lab.host(), &two_ipv6_addresses());
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(&lab, &["-4", "-6"])
    });
    let _inside = lab.host().enter().unwrap();
    let mut sources = BTreeMap::<String, usize>::new();
    for host in 1..=64u8 {
        let destinations: [IpAddr; 2] = [
            Ipv4Addr::new(198, 51, 100, host).into(),
            format!("2001:db8:ff::{host:x}").parse().unwrap(),
        ];
        for to in destinations {
            let source = connected_source(to, socket2::Type::DGRAM);
            *sources.entry(source.to_string()).or_default() += 1;
        }
    }
    // IPv4: each active NIC's flows use its own data address, so the replies come back
    // spread over the NICs too (IPMP's inbound load spreading). IPv6: the source hook picks
    // one of the group's data addresses per destination, where the kernel would take the
    // first member's for all. Never a test or link-local address either way.
    let (v4, v6): (Vec<&String>, Vec<&String>) = sources.keys().partition(|a| !a.contains(':'));
    assert_eq!(v4, ["192.0.2.19", "192.0.2.20"], "{sources:?}");
    assert_eq!(v6, ["2001:db8::19", "2001:db8::20"], "{sources:?}");
}

/// The source hook's counters of group id 0, from `mpathctl maps --json`.
fn hook_counters(daemon: &Mpathd, lab: &Lab) -> (u64, u64) {
    let out = daemon.ctl(lab.host(), &["--json", "maps"]);
    assert!(out.status.success(), "{out:?}");
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let group = maps["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["group"] == 0)
        .unwrap_or_else(|| panic!("no sources of group 0: {maps}"));
    let count = |key: &str| group[key].as_u64().unwrap();
    (count("chosen"), count("bind_failed"))
}

/// Asserts that the hook chose at least `more` sources since its counters read `before`
/// (chosen, refused), and that the kernel refused none.
fn assert_hook_chose_since(daemon: &Mpathd, lab: &Lab, before: (u64, u64), more: u64) {
    let (chosen, failed) = before;
    let (chosen_after, failed_after) = hook_counters(daemon, lab);
    assert!(
        chosen_after >= chosen + more,
        "{chosen} then {chosen_after}"
    );
    assert_eq!(
        (failed, failed_after),
        (0, 0),
        "no chosen source was refused"
    );
}

/// A listener in the router's namespace on `port` of every address of `any` (the unspecified
/// address of a family), for [`sources_of_real_connections`]: one for the whole test, as
/// the connections it accepted may still be closing when the next round starts.
fn far_listener(lab: &Lab, any: IpAddr, port: u16) -> TcpListener {
    let _inside = lab.router().enter().unwrap();
    TcpListener::bind((any, port)).unwrap()
}

/// The IPv6 destinations behind the router the IPv6 source test connects to.
fn behind_router_v6() -> Vec<IpAddr> {
    (1..=16u16)
        .map(|host| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, host)))
        .collect()
}

/// Connects over TCP from the host to each of `destinations`, where `listener` accepts on
/// all of them, exchanges a message on each connection and returns the source of each by
/// destination, as the client and the server both saw it.
fn sources_of_real_connections(
    lab: &Lab,
    listener: &TcpListener,
    destinations: &[IpAddr],
) -> BTreeMap<IpAddr, IpAddr> {
    let port = listener.local_addr().unwrap().port();
    let _inside = lab.host().enter().unwrap();
    let mut sources = BTreeMap::new();
    for &to in destinations {
        let mut client =
            TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        let (mut server, peer) = listener.accept().unwrap();
        let source = client.local_addr().unwrap().ip();
        assert_eq!(
            peer.ip(),
            source,
            "the router sees the source the client got"
        );
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        server.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        sources.insert(to, source);
    }
    sources
}

/// [`sources_of_real_connections`] to [`behind_router_v6`].
fn ipv6_sources_of_real_connections(lab: &Lab, listener: &TcpListener) -> BTreeMap<IpAddr, IpAddr> {
    sources_of_real_connections(lab, listener, &behind_router_v6())
}

#[test]
fn ipv6_connections_spread_their_sources_and_keep_them_through_a_failover() {
    let lab = dhcp_lab();
    // The router answers for the whole network behind it.
    lab.router()
        .ip(&[
            "-6",
            "route",
            "add",
            "local",
            "2001:db8:ff::/64",
            "dev",
            "lo",
        ])
        .unwrap();
    // A NIC outside the group, with a network of its own inside the group's default route.
    let mut lab = lab;
    let outside = lab.add_nic().unwrap();
    lab.add_host_addr(&outside, "2001:db8:77::5/64").unwrap();
    let mut daemon = Mpathd::start(lab.host(), &two_ipv6_addresses());
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(&lab, &["-4", "-6"])
    });
    let log = daemon.log();
    assert!(
        log.contains("sources spread over each group's data addresses"),
        "{log}"
    );

    let listener = far_listener(&lab, Ipv6Addr::UNSPECIFIED.into(), 5003);
    let before = ipv6_sources_of_real_connections(&lab, &listener);
    let used: std::collections::BTreeSet<String> =
        before.values().map(ToString::to_string).collect();
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["2001:db8::19", "2001:db8::20"],
        "{before:?}"
    );
    assert_eq!(
        ipv6_sources_of_real_connections(&lab, &listener),
        before,
        "each destination keeps its source"
    );
    let (chosen, failed) = hook_counters(&daemon, &lab);
    assert!(chosen >= 32, "the hook chose {chosen} sources");
    // The table view: group id 0 offers both addresses for its routes, the default among them.
    let out = daemon.ctl(lab.host(), &["maps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .skip_while(|l| !l.starts_with("GROUPID") || !l.contains("SOURCES"))
        .nth(1)
        .unwrap_or_else(|| panic!("no source row in mpathctl maps:\n{text}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields[..2],
        ["0", "192.0.2.19,192.0.2.20,2001:db8::19,2001:db8::20"],
        "{text}"
    );
    assert!(fields[4..].contains(&"::/0"), "{text}");

    {
        let _inside = lab.host().enter().unwrap();
        // An application's own bind is kept: to a port and address, or to an address alone
        // with IP_BIND_ADDRESS_NO_PORT, whose port the kernel picks at connect.
        let (to, theirs) = before
            .iter()
            .find(|(_, s)| s.to_string() == "2001:db8::20")
            .unwrap();
        for no_port in [false, true] {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
            if no_port {
                let on: libc::c_int = 1;
                // SAFETY: setsockopt reads one c_int from `on`.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&socket),
                        libc::IPPROTO_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        (&raw const on).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0);
            }
            let mine: IpAddr = "2001:db8::19".parse().unwrap();
            socket.bind(&SocketAddr::new(mine, 0).into()).unwrap();
            socket
                .connect_timeout(&SocketAddr::new(*to, 5003).into(), Duration::from_secs(5))
                .unwrap();
            let local = socket.local_addr().unwrap().as_socket().unwrap().ip();
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(
                (local, peer.ip()),
                (mine, mine),
                "bound to {mine} (no port: {no_port}), hook's would be {theirs}"
            );
        }
        // A destination the group's routes do not serve keeps the kernel's choice: the
        // outside NIC's network, which mpathd's table throws on to main.
        let to: IpAddr = "2001:db8:77::9".parse().unwrap();
        assert_eq!(
            connected_source(to, socket2::Type::DGRAM).to_string(),
            "2001:db8:77::5"
        );
    }
    {
        // Sockets of other network namespaces are not the hook's: the router's connections
        // to the host get the router's source, and no bind of a host address is attempted.
        let _inside = lab.router().enter().unwrap();
        let source = connected_source("2001:db8::19".parse().unwrap(), socket2::Type::DGRAM);
        assert_eq!(source.to_string(), "2001:db8::1");
    }

    // h0 fails: its address moves to h1, and every destination keeps its source.
    lab.cut("h0").unwrap();
    daemon.wait_until("h0 failed, its addresses moved", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "2001:db8::19/64").is_some_and(|n| n != "h0")
        })
    });
    assert_eq!(ipv6_sources_of_real_connections(&lab, &listener), before);
    assert_hook_chose_since(&daemon, &lab, (chosen, failed), 16);

    // sources = "kernel": the kernel's choice again, one address for all; and back.
    let kernel = two_ipv6_addresses().replace("[daemon]\n", "[daemon]\nsources = \"kernel\"\n");
    daemon.reload(&kernel);
    daemon.wait_until("the hook detached", |d| {
        d.log()
            .contains("sources left to the kernel (no source hook)")
    });
    let kernel_sources: std::collections::BTreeSet<IpAddr> =
        ipv6_sources_of_real_connections(&lab, &listener)
            .into_values()
            .collect();
    assert_eq!(kernel_sources.len(), 1, "{kernel_sources:?}");
    daemon.reload(&two_ipv6_addresses());
    daemon.wait_until("the hook attached again", |d| {
        d.log()
            .matches("sources spread over each group's data addresses")
            .count()
            == 2
    });
    assert_eq!(ipv6_sources_of_real_connections(&lab, &listener), before);

    // The hook is pinned with the datapath: it outlives a killed mpathd, and the next one
    // takes it over.
    daemon.kill();
    assert_eq!(ipv6_sources_of_real_connections(&lab, &listener), before);
    daemon.spawn(lab.host());
    daemon.wait_until("the hook taken over", |d| {
        d.log()
            .matches("sources spread over each group's data addresses")
            .count()
            == 3
            && d.try_status().is_some()
    });
    assert_eq!(ipv6_sources_of_real_connections(&lab, &listener), before);
    // Only a teardown takes it off the host.
    daemon.stop();
    assert_eq!(ipv6_sources_of_real_connections(&lab, &listener), before);
    let out = daemon.teardown(lab.host());
    assert!(out.status.success(), "{out:?}");
    let kernel_sources: std::collections::BTreeSet<IpAddr> =
        ipv6_sources_of_real_connections(&lab, &listener)
            .into_values()
            .collect();
    assert_eq!(
        kernel_sources.len(),
        1,
        "after the teardown: {kernel_sources:?}"
    );
}

/// Sixteen addresses of the router on the group's own subnet: on-link peers of the host.
fn on_link_peers(lab: &Lab) -> Vec<IpAddr> {
    (100..116u8)
        .map(|host| {
            let peer = Ipv4Addr::new(192, 0, 2, host);
            lab.router()
                .ip(&[
                    "addr",
                    "add",
                    &format!("{peer}/32"),
                    "dev",
                    mpath_lab::ROUTER_NIC,
                ])
                .unwrap();
            IpAddr::V4(peer)
        })
        .collect()
}

#[test]
fn ipv4_connections_to_the_group_s_subnet_spread_their_sources_and_keep_them_through_a_failover() {
    let lab = dhcp_lab();
    let peers = on_link_peers(&lab);
    let mut daemon = Mpathd::start(lab.host(), &CONFIG);
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(&lab, &["-4"])
    });
    let listener = far_listener(&lab, Ipv4Addr::UNSPECIFIED.into(), 5004);
    let datagrams = {
        let _inside = lab.router().enter().unwrap();
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5005)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    };

    // On-link the kernel would give every connection the route's preferred source; the hook
    // spreads them over both data addresses, never a test address, each peer keeping its own.
    let before = sources_of_real_connections(&lab, &listener, &peers);
    let used: std::collections::BTreeSet<String> =
        before.values().map(ToString::to_string).collect();
    assert_eq!(
        used,
        ["192.0.2.19", "192.0.2.20"].map(String::from).into(),
        "{before:?}"
    );
    assert_eq!(
        sources_of_real_connections(&lab, &listener, &peers),
        before,
        "each peer keeps its source"
    );
    let (chosen, failed) = hook_counters(&daemon, &lab);
    assert!(chosen >= 32, "the hook chose {chosen} sources");
    // Through the gateway each NIC's flows keep their own address: the kernel's choice.
    let out = daemon.ctl(lab.host(), &["--json", "maps"]);
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(maps["source_routes"]["192.0.2.0/24"], 0, "{maps}");
    assert_eq!(
        maps["source_routes"]["0.0.0.0/0"],
        serde_json::Value::Null,
        "{maps}"
    );

    {
        let _inside = lab.host().enter().unwrap();
        // Unconnected datagrams (sendmsg) get the same source per peer as connections.
        let sender = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for (i, to) in peers.iter().enumerate() {
            sender.send_to(&[i as u8], (*to, 5005)).unwrap();
        }
        let mut got = BTreeMap::new();
        for _ in &peers {
            let mut buf = [0u8; 1];
            let (_, from) = datagrams.recv_from(&mut buf).unwrap();
            got.insert(peers[usize::from(buf[0])], from.ip());
        }
        assert_eq!(got, before, "datagrams' sources by peer");
        // A datagram whose source the application gave, and a socket bound to an address,
        // keep theirs.
        let (to, theirs) = before
            .iter()
            .find(|(_, s)| s.to_string() == "192.0.2.20")
            .unwrap();
        let mine = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 19));
        let bound = UdpSocket::bind((mine, 0)).unwrap();
        bound.send_to(&[0], (*to, 5005)).unwrap();
        let (_, from) = datagrams.recv_from(&mut [0u8; 1]).unwrap();
        assert_eq!(from.ip(), mine, "bound to {mine}, hook's would be {theirs}");
    }

    // h0 fails: its address moves, and every peer keeps its source.
    lab.cut("h0").unwrap();
    daemon.wait_until("h0 failed, its addresses moved", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.19/24").is_some_and(|n| n != "h0")
        })
    });
    assert_eq!(sources_of_real_connections(&lab, &listener, &peers), before);
    assert_hook_chose_since(&daemon, &lab, (chosen, failed), 16);

    // sources = "kernel": the route's preferred source for every peer again.
    daemon.reload(&CONFIG.replace("[daemon]\n", "[daemon]\nsources = \"kernel\"\n"));
    daemon.wait_until("the hook detached", |d| {
        d.log()
            .contains("sources left to the kernel (no source hook)")
    });
    let kernel_sources: std::collections::BTreeSet<IpAddr> =
        sources_of_real_connections(&lab, &listener, &peers)
            .into_values()
            .collect();
    assert_eq!(kernel_sources.len(), 1, "{kernel_sources:?}");
}

/// Counts, in the switch, the IPv6 echo requests from each of `nics`' link-local addresses
/// on every NIC's switch port. Returns a reader of the counts as (NIC, port NIC) -> packets.
fn count_ipv6_probes_per_port(
    lab: &Lab,
    nics: &[&str],
) -> impl Fn() -> BTreeMap<(String, String), u64> {
    let switch = lab.switch();
    let nft = |args: &[&str]| {
        let mut all = vec!["nft"];
        all.extend_from_slice(args);
        switch.run(&all).unwrap();
    };
    nft(&["add", "table", "bridge", "probes"]);
    nft(&[
        "add",
        "chain",
        "bridge",
        "probes",
        "in",
        "{",
        "type",
        "filter",
        "hook",
        "prerouting",
        "priority",
        "0",
        ";",
        "}",
    ]);
    let link_local = |nic: &str| {
        let text = lab
            .host()
            .ip(&["-6", "-o", "addr", "show", "dev", nic, "scope", "link"])
            .unwrap();
        let cidr = text.split_whitespace().nth(3).unwrap().to_string();
        cidr.split('/').next().unwrap().to_string()
    };
    let mut names = Vec::new();
    for from in nics {
        let source = link_local(from);
        for on in nics {
            let port = lab.switch_port(on).unwrap();
            let name = format!("{from}_on_{on}");
            nft(&["add", "counter", "bridge", "probes", &name]);
            nft(&[
                "add",
                "rule",
                "bridge",
                "probes",
                "in",
                "iifname",
                &port,
                "ip6",
                "saddr",
                &source,
                "icmpv6",
                "type",
                "echo-request",
                "counter",
                "name",
                &name,
            ]);
            names.push(((from.to_string(), on.to_string()), name));
        }
    }
    move || {
        names
            .iter()
            .map(|(key, name)| {
                let text = switch
                    .run(&["nft", "list", "counter", "bridge", "probes", name])
                    .unwrap();
                let packets = text
                    .split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no packet count in {text}"));
                (key.clone(), packets)
            })
            .collect()
    }
}

#[test]
fn ipv6_probes_leave_through_their_own_nic_under_an_ipv6_default_group_route() {
    // Two NICs that probe over IPv6 alone, and router advertisements' default route: the
    // group serves it through a nexthop group over both NICs.
    let lab = Lab::builder().nics(2).behind_router().build().expect("lab");
    lab.add_ra_default_route("h0").unwrap();
    let config = ipv6_only_config(1000);
    // The rule an mpathd before this fix left: replaced, not kept beside the new one.
    lab.host()
        .ip(&[
            "-6", "rule", "add", "pref", "32765", "lookup", "28016", "proto", "109",
        ])
        .unwrap();
    let counts = count_ipv6_probes_per_port(&lab, &["h0", "h1"]);
    let mut daemon = Mpathd::start(lab.host(), &config);
    daemon.wait_until("both NICs ok, the default route the group's", |d| {
        d.try_status().is_some_and(|s| {
            ["h0", "h1"]
                .iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
        }) && table(&lab, "-6")
            .lines()
            .any(|l| l.starts_with("default nhid "))
    });
    assert_eq!(
        members(&lab, default_group(&lab, "-6"))
            .into_values()
            .collect::<Vec<_>>(),
        ["h0", "h1"]
    );
    // Link-local destinations are not the table's: a lookup bound to a NIC stays on it.
    let rules: Vec<String> = lab
        .host()
        .ip(&["-6", "rule", "show"])
        .unwrap()
        .lines()
        .filter(|l| l.contains("lookup 28016"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        rules,
        ["32765:\tnot from all to fe80::/10 lookup 28016 proto 109"],
        "{rules:?}"
    );
    let route = lab
        .host()
        .ip(&["-6", "route", "get", "fe80::1", "oif", "h1"])
        .unwrap();
    assert!(route.contains("dev h1"), "{route}");
    // Each NIC's probes arrive on its own switch port, never on the other's.
    daemon.wait_until("10 probes of each NIC counted", |_| {
        let counts = counts();
        ["h0", "h1"]
            .iter()
            .all(|nic| counts[&(nic.to_string(), nic.to_string())] >= 10)
    });
    let counts_now = counts();
    assert_eq!(counts_now[&("h0".into(), "h1".into())], 0, "{counts_now:?}");
    assert_eq!(counts_now[&("h1".into(), "h0".into())], 0, "{counts_now:?}");
    // A silent failure of h0 fails h0 alone: h1's probes never depended on it.
    lab.drop_silently("h0").unwrap();
    daemon.wait_until("h0 failed, its address on h1", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "2001:db8::19/64") == Some("h1")
        })
    });
    let log = daemon.log();
    assert!(!log.contains("NIC failure detected on h1"), "{log}");
    assert_eq!(
        daemon.try_status().and_then(|s| state_of(&s, "h1")),
        Some(InterfaceStatus::Ok)
    );
}

/// The lab's test addresses, h0's to h2's.
const TEST_ADDRESSES: [&str; 3] = ["192.0.2.21", "192.0.2.22", "192.0.2.23"];

/// Counts, on the host's output hook, the UDP packets to `port` that leave with each of the
/// test addresses as their source, and all of them.
fn count_sources(lab: &Lab, port: u16) {
    let host = lab.host();
    host.run(&["nft", "add table ip mpath_sources"]).unwrap();
    host.run(&[
        "nft",
        "add chain ip mpath_sources out { type filter hook output priority 0; }",
    ])
    .unwrap();
    let rules = TEST_ADDRESSES
        .iter()
        .map(|a| format!("ip saddr {a} udp dport {port} counter"))
        .chain([format!("udp dport {port} counter")]);
    for rule in rules {
        host.run(&["nft", &format!("add rule ip mpath_sources out {rule}")])
            .unwrap();
    }
}

/// The counters of [`count_sources`]: per test address, then all packets.
fn sources_counted(lab: &Lab) -> [u64; 4] {
    let json = lab
        .host()
        .run(&["nft", "-j", "list", "table", "ip", "mpath_sources"])
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let counts: Vec<u64> = value["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| {
            item["rule"]["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .collect();
    counts.try_into().unwrap()
}

/// Through a NIC that holds only its test address the kernel gives a new flow that address as
/// its source, and the egress program keeps such packets on that NIC: a failing NIC must leave
/// the group's routes before its data addresses leave it, and a NIC must join them only once
/// its addresses came. Sockets bound to a port (which the source hook leaves to the kernel)
/// send to the network behind the router while h1 fails silently (the standby takes over) and
/// comes back: not one packet may leave with a test address as its source.
#[test]
fn nics_leave_the_routes_before_their_addresses_and_join_after_so_no_flow_takes_a_test_address() {
    const PORT: u16 = 4793;
    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let config = format!("{}{}", *CONFIG, mpath_lab::ROUTE_BEHIND_ROUTER);
    let mut daemon = Mpathd::start(lab.host(), &config);
    daemon.wait_until("all NICs ok", all_ok);
    count_sources(&lab, PORT);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let _inside = lab.host().enter().unwrap();
        let sockets: Vec<UdpSocket> = (0..16)
            .map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap())
            .collect();
        let stop = stop.clone();
        let to = SocketAddr::new(BEHIND_ROUTER_V4.parse().unwrap(), PORT);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for socket in &sockets {
                    // A send that fails is a packet that never left: not what is counted.
                    let _: std::io::Result<usize> = socket.send_to(b"mpath", to);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    lab.drop_silently("h1").unwrap();
    daemon.wait_until("h1 failed, 192.0.2.20 off it", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h1") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.20/24") != Some("h1")
        })
    });
    std::thread::sleep(Duration::from_millis(200));
    let failover = sources_counted(&lab);
    lab.undrop("h1").unwrap();
    daemon.wait_until("h1 back with its address", h1_failed_back);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let failback = sources_counted(&lab);

    eprintln!(
        "mpath-test: measured packets with a test address as source (h0, h1, h2; of all): \
         {failover:?} through the failover, {failback:?} after the failback"
    );
    assert!(failover[3] > 1000, "the flows were sent: {failover:?}");
    assert_eq!(
        failback[..3],
        [0, 0, 0],
        "packets left with a test address as their source: {failover:?} through the \
         failover, {failback:?} after the failback\n{}",
        daemon.log()
    );
}
