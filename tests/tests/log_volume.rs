//! How much mpathd logs in a flap storm: 8 NICs whose links go down and up every second for
//! 30 s, h0 holding 100 multicast groups an application joined. Repeats are summarised: the
//! multicast groups that follow a failover in one line per NIC pair, repeated warnings and
//! errors per message and NIC at most a few times per interval, then counted.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, UdpSocket},
    thread,
    time::Duration,
};

use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::Lab;
use mpath_tests::daemon::{Mpathd, state_of};
use socket2::{InterfaceIndexOrAddress, SockRef};

const NICS: u32 = 8;
/// Groups the application joins on h0; a socket holds at most 20 (igmp_max_memberships).
const GROUPS: u8 = 100;
const STORM: Duration = Duration::from_secs(30);
const FLAP_PERIOD: Duration = Duration::from_secs(1);

fn config() -> String {
    let mut text = String::from(
        r#"
[daemon]
failure_detection_time_ms = 1000
failback = true
socket = "SOCKET"
bpf_pin_dir = "PINS"

[[group]]
name = "g0"
targets = ["192.0.2.1"]
"#,
    );
    for i in 0..NICS {
        text.push_str(&format!(
            "\n[[group.interface]]\nname = \"h{i}\"\ntest_address = \"192.0.2.{}/24\"\n\
             data_addresses = [\"192.0.2.{}/24\"]\n",
            21 + i,
            101 + i
        ));
    }
    text
}

/// The level of a log line (`<timestamp> <LEVEL> <message>`), if it starts one.
fn level(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    words.next()?;
    words
        .next()
        .filter(|l| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(l))
}

/// A warning's or error's message with its numbers and NIC names blanked, to count repeats
/// of one message.
fn shape(line: &str) -> String {
    let message = line
        .split_whitespace()
        .skip(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut shape = String::new();
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            shape.push('N');
        } else {
            shape.push(c);
        }
    }
    shape.chars().take(140).collect()
}

#[test]
fn a_flap_storm_over_eight_nics_logs_summaries_not_floods() {
    let lab = Lab::builder().nics(NICS).build().expect("lab");
    let h0 = lab.host().ifindex("h0").unwrap();
    // The application's sockets, joined on h0 until the test ends.
    let _sockets: Vec<UdpSocket> = {
        let _inside = lab.host().enter().unwrap();
        (0..GROUPS)
            .collect::<Vec<u8>>()
            .chunks(20)
            .map(|chunk| {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                for &n in chunk {
                    SockRef::from(&socket)
                        .join_multicast_v4_n(
                            &Ipv4Addr::new(239, 2, 0, n + 1),
                            &InterfaceIndexOrAddress::Index(h0),
                        )
                        .unwrap();
                }
                socket
            })
            .collect()
    };
    let mut daemon = Mpathd::start(lab.host(), &config());
    daemon.wait_until("every NIC ok", |d| {
        d.try_status().is_some_and(|s| {
            (0..NICS).all(|i| state_of(&s, &format!("h{i}")) == Some(InterfaceStatus::Ok))
        })
    });
    let before = daemon.log().len();

    thread::scope(|scope| {
        for i in 0..NICS {
            let lab = &lab;
            scope.spawn(move || {
                let nic = format!("h{i}");
                let times = (STORM.as_millis() / FLAP_PERIOD.as_millis()) as u32;
                lab.flap(&nic, times, FLAP_PERIOD).unwrap();
            });
        }
    });
    thread::sleep(Duration::from_secs(3));

    let log = daemon.log();
    let storm = &log[before..];
    let mut per_level: BTreeMap<&str, usize> = BTreeMap::new();
    for line in storm.lines() {
        if let Some(level) = level(line) {
            *per_level.entry(level).or_default() += 1;
        }
    }
    let count = |level: &str| per_level.get(level).copied().unwrap_or(0);
    let multicast = storm
        .lines()
        .filter(|l| level(l) == Some("INFO") && l.contains("239.2.0."))
        .count();
    let summaries = storm
        .lines()
        .filter(|l| l.contains("more like this in the last"))
        .count();
    eprintln!(
        "log volume over {} s of flapping {NICS} NICs: {} ERROR, {} WARN, {} INFO lines; \
         {multicast} INFO lines name h0's multicast groups; {summaries} summaries of repeats",
        STORM.as_secs(),
        count("ERROR"),
        count("WARN"),
        count("INFO"),
    );
    let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
    for line in storm.lines() {
        if matches!(level(line), Some("WARN" | "ERROR")) {
            *shapes.entry(shape(line)).or_default() += 1;
        }
    }
    let mut shapes: Vec<(usize, String)> = shapes.into_iter().map(|(s, n)| (n, s)).collect();
    shapes.sort_by(|a, b| b.cmp(a));
    for (n, shape) in shapes.iter().take(8) {
        eprintln!("{n:6} {shape}");
    }
    // One line per failover and NIC pair names a few of the 100 groups, not every group.
    assert!(
        storm.contains(&format!("joined {GROUPS} multicast groups on")),
        "no summary of h0's joins:\n{storm}"
    );
    assert!(
        !storm.contains("239.2.0.50"),
        "a multicast group beyond the first few is named:\n{storm}"
    );
    // Each message may repeat a few times per NIC and interval, then it is counted.
    assert!(summaries > 0, "no repeats summarised:\n{storm}");
    let per_second = (count("WARN") + count("ERROR")) as f64 / STORM.as_secs_f64();
    assert!(
        per_second < 3.0 * f64::from(NICS),
        "{per_second:.1} warnings and errors a second"
    );
}
