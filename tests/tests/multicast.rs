//! Multicast memberships follow a failover: an application joined to a group on a NIC that
//! fails keeps receiving through the NIC that took over, on a switch that snoops IGMP/MLD
//! (it forwards a group only to the ports that reported it), and mpathd's joins go again on
//! failback.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{Lab, ROUTER_NIC};
use mpath_tests::daemon::{Mpathd, inbound, state_of, three_nic_config};
use socket2::{InterfaceIndexOrAddress, SockRef};

const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0xdb8, 1);
/// The ports the application listens on (one per family: an IPv6 socket on a port takes the
/// IPv4 one too).
const PORT_V4: u16 = 40123;
const PORT_V6: u16 = 40124;
/// A group an application joins on h0 after h0 failed, and its port.
const LATE_GROUP: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 2);
const LATE_PORT: u16 = 40125;

/// Datagrams received per family, counted by a thread per socket.
struct Receiver {
    v4: Arc<AtomicU64>,
    v6: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Receiver {
    /// An application in the host namespace bound to [`PORT_V4`] and [`PORT_V6`] and joined to both groups on
    /// `nic` (by ifindex), as any program would be.
    fn start(lab: &Lab, nic: &str) -> Receiver {
        let ifindex = lab.host().ifindex(nic).unwrap();
        let (v4, v6) = {
            let _inside = lab.host().enter().unwrap();
            let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT_V4)).unwrap();
            join_v4(&v4, GROUP_V4, ifindex);
            let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, PORT_V6)).unwrap();
            v6.join_multicast_v6(&GROUP_V6, ifindex).unwrap();
            (v4, v6)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut receiver = Receiver {
            v4: Arc::default(),
            v6: Arc::default(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (socket, count) in [(v4, receiver.v4.clone()), (v6, receiver.v6.clone())] {
            let stop = stop.clone();
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            receiver.threads.push(thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv(&mut buf).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        receiver
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.v4.load(Ordering::Relaxed),
            self.v6.load(Ordering::Relaxed),
        )
    }

    /// Whether both groups deliver again: at least `n` more datagrams each than `since`,
    /// within 5 s.
    fn receives(&self, since: (u64, u64), n: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let now = self.counts();
            if now.0 >= since.0 + n && now.1 >= since.1 + n {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _: Result<_, _> = t.join();
        }
    }
}

/// Joins an IPv4 group on `ifindex` (std joins IPv4 groups by interface address only).
fn join_v4(socket: &UdpSocket, group: Ipv4Addr, ifindex: u32) {
    SockRef::from(socket)
        .join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(ifindex))
        .unwrap();
}

/// The router sends to the three groups 20 times a second from its documentation addresses until
/// dropped.
struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    fn start(lab: &Lab) -> Sender {
        let r0 = lab.router().ifindex(ROUTER_NIC).unwrap();
        let router_v4: Ipv4Addr = mpath_lab::ROUTER_V4.parse().unwrap();
        let router_v6: Ipv6Addr = mpath_lab::ROUTER_V6.parse().unwrap();
        let (v4, v6) = {
            let _inside = lab.router().enter().unwrap();
            let v4 = UdpSocket::bind((router_v4, 0)).unwrap();
            let v6 = UdpSocket::bind((router_v6, 0)).unwrap();
            // The router has no route for the groups: they leave through r0.
            SockRef::from(&v4).set_multicast_if_v4(&router_v4).unwrap();
            SockRef::from(&v6).set_multicast_if_v6(r0).unwrap();
            (v4, v6)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let to_v4 = SocketAddr::new(IpAddr::V4(GROUP_V4), PORT_V4);
            let to_v6 = SocketAddr::new(IpAddr::V6(GROUP_V6), PORT_V6);
            let late = SocketAddr::new(IpAddr::V4(LATE_GROUP), LATE_PORT);
            while !stopping.load(Ordering::Relaxed) {
                let _: Result<_, _> = v4.send_to(b"mpath", to_v4);
                let _: Result<_, _> = v4.send_to(b"mpath", late);
                let _: Result<_, _> = v6.send_to(b"mpath", to_v6);
                thread::sleep(Duration::from_millis(50));
            }
        });
        Sender {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _: Result<_, _> = t.join();
        }
    }
}

/// The groups `nic` is a member of, as `ip maddr` shows them.
fn memberships(lab: &Lab, nic: &str) -> String {
    lab.host().ip(&["maddr", "show", "dev", nic]).unwrap()
}

/// The switch ports the bridge forwards `group` to (its snooping table).
fn snooped_ports(lab: &Lab, group: &str) -> Vec<String> {
    let mdb = lab.switch().run(&["bridge", "mdb", "show"]).unwrap();
    mdb.lines()
        .filter(|l| l.split_whitespace().any(|w| w == group))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "port")?;
            words.next().map(str::to_string)
        })
        .collect()
}

#[test]
fn memberships_of_a_failed_nic_are_joined_on_the_nic_that_took_over_and_left_on_failback() {
    let lab = Lab::builder().nics(3).build().expect("lab");
    lab.snoop_multicast().unwrap();
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(700));
    daemon.wait_until("all NICs ok", |d| {
        d.try_status().is_some_and(|s| {
            ["h0", "h1", "h2"]
                .iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
        })
    });
    let receiver = Receiver::start(&lab, "h0");
    let _sender = Sender::start(&lab);
    assert!(
        receiver.receives((0, 0), 10),
        "both groups reach the application through h0: {:?}",
        receiver.counts()
    );
    for group in ["239.1.1.1", "ff05::db8:1"] {
        assert_eq!(
            snooped_ports(&lab, group),
            ["s0"],
            "the switch snoops {group}"
        );
    }

    // A silent failure: the switch keeps forwarding the groups to h0's port alone, where they
    // are dropped, unless h2 reports them.
    lab.drop_silently("h0").unwrap();
    daemon.wait_until("h0 failed, 192.0.2.19 on h2", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed)
                && inbound(&s, "192.0.2.19/24") == Some("h2")
        })
    });
    let at_failover = receiver.counts();
    assert!(
        receiver.receives(at_failover, 20),
        "the application kept receiving after the failover: {at_failover:?} -> {:?}; h2: {}\nmpathd log:\n{}",
        receiver.counts(),
        memberships(&lab, "h2"),
        daemon.log()
    );
    let h2 = memberships(&lab, "h2");
    assert!(
        h2.contains("239.1.1.1") && h2.contains("ff05::db8:1"),
        "{h2}"
    );
    for group in ["239.1.1.1", "ff05::db8:1"] {
        let ports = snooped_ports(&lab, group);
        assert!(ports.contains(&"s2".to_string()), "{group}: {ports:?}");
    }
    let json = daemon.ctl(lab.host(), &["memberships", "--json"]);
    assert!(json.status.success(), "{json:?}");
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([
            {"address": "239.1.1.1", "group": "g0", "from": "h0", "on": "h2"},
            {"address": "ff05::db8:1", "group": "g0", "from": "h0", "on": "h2"},
        ])
    );
    let log = daemon.log();
    // One line for the groups that followed h0 to h2, naming them.
    assert!(
        log.lines()
            .any(|l| l.contains("multicast groups on h2 for h0") && l.contains("239.1.1.1")),
        "{log}"
    );
    // A group joined on h0 while it is out of use follows too.
    let late = {
        let _inside = lab.host().enter().unwrap();
        let late = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, LATE_PORT)).unwrap();
        join_v4(&late, LATE_GROUP, lab.host().ifindex("h0").unwrap());
        late
    };
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for n in 0..5 {
        assert!(
            late.recv(&mut [0u8; 64]).is_ok(),
            "datagram {n} of the group joined on failed h0; h2: {}",
            memberships(&lab, "h2")
        );
    }

    lab.undrop("h0").unwrap();
    daemon.wait_until("h0 repaired, its address and groups back", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok)
                && inbound(&s, "192.0.2.19/24") == Some("h0")
                && s.memberships.is_empty()
        })
    });
    let h2 = memberships(&lab, "h2");
    assert!(
        !h2.contains("239.1.1.1") && !h2.contains("ff05::db8:1"),
        "left on h2: {h2}"
    );
    assert!(
        receiver.receives(receiver.counts(), 10),
        "through h0 again: {:?}",
        receiver.counts()
    );
}

/// A snooping switch forgets a port's groups when its link goes, and Linux reports IPv4
/// memberships again only when a query asks: mpathd reports the groups of a NIC back from a
/// link failure itself, before it leaves the stand-in joins, so the application never goes
/// deaf. The switch's queries are made rare and slow to be answered (a host answers a query
/// after a random delay up to the query's response time) so that only mpathd's report can
/// bring the port back within the test.
#[test]
fn a_nic_back_from_a_link_failure_reports_its_ipv4_groups_at_once() {
    let lab = Lab::builder().nics(3).build().expect("lab");
    lab.snoop_multicast().unwrap();
    // Centiseconds: a query every 600 s, answered within 300 s.
    lab.switch()
        .ip(&[
            "link",
            "set",
            mpath_lab::BRIDGE,
            "type",
            "bridge",
            "mcast_query_interval",
            "60000",
            "mcast_query_response_interval",
            "30000",
        ])
        .unwrap();
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(700));
    daemon.wait_until("all NICs ok", |d| {
        d.try_status().is_some_and(|s| {
            ["h0", "h1", "h2"]
                .iter()
                .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
        })
    });
    let receiver = Receiver::start(&lab, "h0");
    let _sender = Sender::start(&lab);
    assert!(receiver.receives((0, 0), 10), "{:?}", receiver.counts());
    assert_eq!(snooped_ports(&lab, "239.1.1.1"), ["s0"]);

    lab.cut("h0").unwrap();
    daemon.wait_until("h0 failed, its groups joined on h2", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Failed) && !s.memberships.is_empty()
        })
    });
    assert!(
        !snooped_ports(&lab, "239.1.1.1").contains(&"s0".to_string()),
        "the switch forgot h0's port with its link"
    );
    assert!(receiver.receives(receiver.counts(), 10), "through h2");

    lab.restore("h0").unwrap();
    daemon.wait_until("h0 repaired, the stand-in joins left", |d| {
        d.try_status().is_some_and(|s| {
            state_of(&s, "h0") == Some(InterfaceStatus::Ok) && s.memberships.is_empty()
        })
    });
    // Without the report the switch learns h0's port only from the answer to a query; until
    // the stand-in's leave has run its last-member queries it forwards to h2's port alone.
    let ports = snooped_ports(&lab, "239.1.1.1");
    assert!(
        ports.contains(&"s0".to_string()),
        "the switch forwards 239.1.1.1 to {ports:?} after failback\nmpathd log:\n{}",
        daemon.log()
    );
    assert!(
        receiver.receives(receiver.counts(), 20),
        "through h0 again: {:?}",
        receiver.counts()
    );
    let log = daemon.log();
    assert!(
        log.contains("IPv4 multicast groups of h0 reported to the switch (V2): 239.1.1.1"),
        "{log}"
    );
}
