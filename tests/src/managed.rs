//! What the tests of mpathd beside a network manager share: mpathd on the lab group with
//! default routes, a picture of what it put on the host, an `ip monitor` that catches
//! anything of it deleted even for a moment, and one that times how long addresses go
//! missing.

use std::{
    collections::BTreeMap,
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

/// `ip` with `args` (an `ip monitor` command), its lines collected as it prints them.
fn ip_monitor(args: &[&str]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new("ip")
        .args(args)
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
    (child, lines)
}

impl Monitor {
    pub fn start(lab: &Lab) -> Monitor {
        let (child, lines) = ip_monitor(&[
            "-n",
            lab.host().name(),
            "monitor",
            "address",
            "route",
            "rule",
            "nexthop",
        ]);
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
        self.settled_or_explain(when, String::new);
    }

    /// [`Watch::settled`], with `explain()` (mpathd's log, say) in the message when the
    /// picture does not come back.
    pub fn settled_or_explain(&self, when: &str, explain: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while snapshot(self.lab) != self.before && Instant::now() < deadline {
            sleep(Duration::from_millis(100));
        }
        let now = snapshot(self.lab);
        if now != self.before {
            let main: String = ["-4", "-6"]
                .iter()
                .map(|family| self.lab.host().ip(&[family, "route", "show"]).unwrap())
                .collect();
            panic!(
                "{when}: the host is not as before\nbefore:\n{}\nnow:\n{now}\nmain:\n{main}\n{}",
                self.before,
                explain()
            );
        }
    }
}

/// An address deleted from a NIC, and how long until it was on a NIC again.
#[derive(Debug)]
pub struct Gap {
    pub address: String,
    pub nic: String,
    /// `None`: not back yet.
    pub missing: Option<Duration>,
}

/// How long addresses go missing: an `ip -ts monitor address` of the host, each deletion
/// paired with the address's next addition (on any NIC), timed by the kernel's messages as
/// `ip` stamps them (microseconds), not by when this test reads them.
pub struct AddressGaps {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl AddressGaps {
    pub fn start(lab: &Lab) -> AddressGaps {
        let (child, lines) = ip_monitor(&["-ts", "-n", lab.host().name(), "monitor", "address"]);
        AddressGaps { child, lines }
    }

    /// The deletions seen since the last call, with how long each address was missing;
    /// waits up to a second for the additions `ip` has yet to print.
    pub fn take(&self) -> Vec<Gap> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while gaps(&self.lines.lock().unwrap())
            .iter()
            .any(|g| g.missing.is_none())
            && Instant::now() < deadline
        {
            sleep(Duration::from_millis(20));
        }
        gaps(&std::mem::take(&mut *self.lines.lock().unwrap()))
    }
}

/// The deletions in `lines` of `ip -ts monitor address`, with how long each address was
/// missing.
fn gaps(lines: &[String]) -> Vec<Gap> {
    let mut gaps: Vec<Gap> = Vec::new();
    // The deletions not followed by an addition yet: their gap and time.
    let mut open: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (at, deleted, nic, address) in lines.iter().filter_map(|l| address_message(l)) {
        match (deleted, open.contains_key(&address)) {
            // The kernel may report an address deleted twice (disabling IPv6 does): it has
            // been missing since the first.
            (true, true) => {}
            (true, false) => {
                open.insert(address.clone(), (gaps.len(), at));
                gaps.push(Gap {
                    address,
                    nic,
                    missing: None,
                });
            }
            (false, _) => {
                if let Some((i, since)) = open.remove(&address) {
                    gaps[i].missing = Some(Duration::from_micros(at.saturating_sub(since)));
                }
            }
        }
    }
    gaps
}

/// `[2026-12-07T19:09:31.381451] Deleted 3: d0    inet 192.0.2.5/24 scope global d0`: the
/// time of day in microseconds, whether it is a deletion, the NIC and the address.
fn address_message(line: &str) -> Option<(u64, bool, String, String)> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
    let (_, time) = stamp.split_once('T')?;
    let (hms, micros) = time.split_once('.')?;
    let seconds = hms
        .split(':')
        .try_fold(0u64, |s, part| Some(s * 60 + part.parse::<u64>().ok()?))?;
    let at = seconds * 1_000_000 + micros.parse::<u64>().ok()?;
    let (deleted, rest) = match rest.strip_prefix("Deleted ") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let mut words = rest.split_whitespace();
    let nic = words.nth(1)?.to_string();
    let address = words.nth(1)?.to_string();
    Some((at, deleted, nic, address))
}

impl Drop for AddressGaps {
    fn drop(&mut self) {
        let _: Result<_, _> = self.child.kill();
        let _: Result<_, _> = self.child.wait();
    }
}
