//! What the tests of mpathd beside a network manager share: mpathd on the lab group with
//! default routes, a picture of what it put on the host, and an `ip monitor` that catches
//! anything of it deleted even for a moment.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::sleep,
    time::{Duration, Instant},
};

use mpath_ctl::config::DEFAULT_ROUTE_TABLE;
use mpath_lab::{Lab, ROUTER_LINK_LOCAL, ROUTER_V4};

use crate::daemon::{Mpathd, all_ok, three_nic_config};

/// The lab group's NICs.
pub const NICS: [&str; 3] = ["h0", "h1", "h2"];

/// The lab group with default routes of both families through it, from mpathd.toml.
pub fn config() -> String {
    three_nic_config(700) + &default_routes()
}

/// mpathd on [`config`], once every NIC is ok and the routes are served.
pub fn start_mpathd(lab: &Lab) -> Mpathd {
    let mut daemon = Mpathd::start(lab.host(), &config());
    daemon.wait_until("all NICs ok and the routes served", |d| {
        all_ok(d) && routes_served(lab, &["-4", "-6"])
    });
    daemon
}

fn default_routes() -> String {
    format!(
        "\n[[group.route]]\nto = \"default\"\nvia = \"{ROUTER_V4}\"\n\n\
         [[group.route]]\nto = \"default\"\nvia = \"{ROUTER_LINK_LOCAL}\"\n"
    )
}

/// `ip monitor` of the host's addresses, routes, rules and nexthops, collected as it runs.
pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    pub fn start(lab: &Lab) -> Monitor {
        let mut child = Command::new("ip")
            .args(["-n", lab.host().name()])
            .args(["monitor", "address", "route", "rule", "nexthop"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // `ip monitor` subscribes before it prints anything; give it that moment.
        sleep(Duration::from_millis(200));
        Monitor { child, lines }
    }

    /// The deletions seen since the last call, but for the management NIC's (mg0 with
    /// 203.0.113.0/24, the networkd tests': networkd's own, and mpathd's throw that follows
    /// its prefix in main).
    pub fn deletions(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
            .into_iter()
            .filter(|l| l.starts_with("Deleted") && !l.contains("mg0") && !l.contains("203.0.113."))
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _: Result<_, _> = self.child.kill();
        let _: Result<_, _> = self.child.wait();
    }
}

/// What mpathd put on the host: the group NICs' global addresses, its routes (each nexthop
/// group shown by its members' NICs, as ids change when a nexthop is made again; the
/// management NIC's throw left out), its rules.
pub fn snapshot(lab: &Lab) -> String {
    let host = lab.host();
    let mut text = String::new();
    for nic in NICS {
        let mut addresses = lab.host_addrs(nic).unwrap();
        addresses.sort();
        text += &format!("{nic}: {}\n", addresses.join(" "));
    }
    let table_id = DEFAULT_ROUTE_TABLE.to_string();
    for family in ["-4", "-6"] {
        for line in table(lab, family)
            .lines()
            // The throw that hands the management NIC's prefix to main follows main; the
            // members `ip` lists under a route are in the group's summary.
            .filter(|l| {
                !l.starts_with("throw 203.0.113.0/24") && !l.trim_start().starts_with("nexthop ")
            })
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let shown: Vec<String> = words
                .iter()
                .enumerate()
                .map(|(i, w)| match i.checked_sub(1).map(|p| words[p]) {
                    Some("nhid") => group_nics(lab, w),
                    _ => w.to_string(),
                })
                .collect();
            text += &shown.join(" ");
            text.push('\n');
        }
        for line in host.ip(&[family, "rule", "show"]).unwrap().lines() {
            if line.contains(&table_id) {
                text += line;
                text.push('\n');
            }
        }
    }
    text
}

/// The NICs of nexthop group `id`, e.g. `[h0,h1]`.
fn group_nics(lab: &Lab, id: &str) -> String {
    let text = lab.host().ip(&["nexthop", "show", "id", id]).unwrap();
    let members = text
        .split_whitespace()
        .skip_while(|w| *w != "group")
        .nth(1)
        .unwrap_or_else(|| panic!("nexthop {id} is not a group: {text}"));
    let mut nics: Vec<String> = members
        .split('/')
        .map(|m| {
            let text = lab.host().ip(&["nexthop", "show", "id", m]).unwrap();
            let dev = text.split_whitespace().skip_while(|w| *w != "dev").nth(1);
            dev.unwrap_or_else(|| panic!("no device in {text}"))
                .to_string()
        })
        .collect();
    nics.sort();
    format!("[{}]", nics.join(","))
}

/// mpathd's table as `ip` shows it, for one family (`-4`, `-6`).
pub fn table(lab: &Lab, family: &str) -> String {
    lab.host()
        .ip(&[
            family,
            "route",
            "show",
            "table",
            &DEFAULT_ROUTE_TABLE.to_string(),
        ])
        .unwrap()
}

/// Whether mpathd serves the default route and the data prefix of each of `families`
/// through nexthop groups.
pub fn routes_served(lab: &Lab, families: &[&str]) -> bool {
    [("-4", "192.0.2.0/24"), ("-6", "2001:db8::/64")]
        .iter()
        .filter(|(family, _)| families.contains(family))
        .all(|(family, prefix)| {
            let table = table(lab, family);
            ["default", prefix]
                .iter()
                .all(|to| table.lines().any(|l| l.starts_with(&format!("{to} nhid "))))
        })
}

/// What mpathd put on the host, pictured when the watch starts, and an `ip monitor` running
/// since.
pub struct Watch<'a> {
    lab: &'a Lab,
    monitor: Monitor,
    before: String,
}

impl<'a> Watch<'a> {
    pub fn start(lab: &'a Lab) -> Watch<'a> {
        Watch {
            before: snapshot(lab),
            monitor: Monitor::start(lab),
            lab,
        }
    }

    /// The picture taken at the start.
    pub fn before(&self) -> &str {
        &self.before
    }

    /// The deletions seen since the last look (see [`Monitor::deletions`]).
    pub fn deletions(&self) -> Vec<String> {
        self.monitor.deletions()
    }

    /// Nothing of mpathd's went, even for a moment, and everything is as before; `log` is the
    /// network manager's, for the message.
    pub fn untouched(&self, log: &str, when: &str) {
        // The managers act on what they hear within milliseconds; leave them a second.
        sleep(Duration::from_secs(1));
        let deletions = self.deletions();
        assert!(
            deletions.is_empty(),
            "{when}: deleted {deletions:#?}\nthe network manager's log:\n{log}"
        );
        assert_eq!(snapshot(self.lab), self.before, "{when}");
    }

    /// Waits until the host shows the picture again after a cable flap: the routes through
    /// the NIC come back within the resilient groups' idle timer (3 s).
    pub fn settled(&self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while snapshot(self.lab) != self.before && Instant::now() < deadline {
            sleep(Duration::from_millis(100));
        }
        assert_eq!(snapshot(self.lab), self.before, "{when}");
    }
}
