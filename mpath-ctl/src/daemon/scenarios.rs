//! Scenario tests of the daemon itself, on the in-memory host ([`FakeHost`]): the event loop's
//! turns are driven as `serve` would drive them (kernel notifications, probe replies,
//! timers, commands), with time moved by the test, and each scenario asserts what the host
//! then holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mpath_common::sources::SourceClass;
use tokio::sync::mpsc;
use tracing_subscriber::layer::{Context, SubscriberExt as _};

use crate::{
    api::control::{self, Command, Reply, Request},
    api::metrics::Scrape,
    config::Config,
    core::reconcile::KERNEL_PROTOCOL,
    core::routes::{Hop, MainRoute},
    core::state::{FailureCause, IfState, InterfaceStatus, OfflineReason},
    daemon::{
        ConfigPaths, Daemon,
        fake_host::{Effect, FakeHost},
        group::GroupRuntime,
        host::check_on,
        host_io::{CarrierLoss, HostEvent, HostIo, Rtnetlink as _},
        probing::ProbeContext,
        service::Notifier,
        teardown::{remove_routes_from, remove_test_addresses_from},
        turn::{Inbox, Input, Signal},
    },
    net::address::IpCidr,
    net::netlink::{NetEvent, Origin},
};

const H0: u32 = 2;
const H1: u32 = 3;
const H2: u32 = 4;

/// Three NICs on one link, each with a test address; h0 and h1 have a data address each, and
/// the group serves a route through the link's router.
const THREE_NICS: &str = r#"
[[group]]
name = "g0"
targets = ["192.0.2.1"]
[[group.interface]]
name = "h0"
test_address = "192.0.2.10/24"
data_addresses = ["192.0.2.20/24"]
[[group.interface]]
name = "h1"
test_address = "192.0.2.11/24"
data_addresses = ["192.0.2.21/24"]
[[group.interface]]
name = "h2"
test_address = "192.0.2.12/24"
[[group.route]]
to = "198.51.100.0/24"
via = "192.0.2.1"
"#;

const LINK_DOWN: IfState = IfState::Failed {
    cause: FailureCause::LinkDown,
};
const PROBES_LOST: IfState = IfState::Failed {
    cause: FailureCause::ProbesLost,
};

/// Longer than the startup quiet period, in which a cold start holds failures back.
const PAST_QUIET: Duration = Duration::from_secs(45);

/// Longer than the failure detection time (10 s by default) and the repair that follows.
const DETECTION: Duration = Duration::from_secs(25);

fn cidr(text: &str) -> IpCidr {
    text.parse().unwrap()
}

/// A host with NICs h0, h1 and h2, up with carrier.
fn three_nic_host() -> FakeHost {
    let host = FakeHost::new(Instant::now());
    host.add_nic("h0", H0);
    host.add_nic("h1", H1);
    host.add_nic("h2", H2);
    // Present before mpathd starts: found by its first dump.
    host.take_events();
    host
}

/// The daemon on a fake host, driven by the test.
struct Scenario {
    daemon: Daemon<FakeHost>,
    /// Where its configuration file is, for reloads.
    dir: tempfile::TempDir,
}

impl Scenario {
    /// Starts mpathd with `config` on `host`, as `Daemon::start` does after opening the host:
    /// a host whose NICs carry the programs already is a restart.
    async fn start(text: &str, host: FakeHost) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let paths = ConfigPaths {
            config: dir.path().join("mpathd.toml"),
            defaults: dir.path().join("mpathd.defaults"),
        };
        std::fs::write(&paths.config, text).unwrap();
        let config = Config::load(&paths.config, Some(&paths.defaults)).unwrap();
        let daemon = Daemon::take_over(config, paths, host, ProbeContext::new(), None)
            .await
            .unwrap();
        let mut scenario = Scenario { daemon, dir };
        scenario.settle().await;
        scenario
    }

    /// mpathd stops; the host stays as it left it, without the notifications it did not read.
    fn stop(self) -> FakeHost {
        let host = self.daemon.host;
        host.take_events();
        host
    }

    /// SIGHUP (or `mpathctl reload`) with `text` in the configuration file: the reply
    /// `mpathctl reload` gets.
    async fn reload(&mut self, text: &str) -> Reply {
        std::fs::write(self.dir.path().join("mpathd.toml"), text).unwrap();
        // `mpathctl reload`, answered once the turn's reconcile pass is done.
        let reply = self.request(Request::Reload {}).await;
        self.settle().await;
        reply
    }

    fn host(&self) -> &FakeHost {
        &self.daemon.host
    }

    fn host_mut(&mut self) -> &mut FakeHost {
        &mut self.daemon.host
    }

    /// Delivers what the host has to tell (notifications, probe replies) and makes the
    /// planned route changes, a turn each, until there is nothing left of either; time stands
    /// still.
    async fn settle(&mut self) {
        for _ in 0..10_000 {
            let input = match self.daemon.host.ready_event() {
                Some(event) => Input::Host(event),
                None if self.daemon.routing.has_pending() => Input::RouteStep,
                None => return,
            };
            self.daemon.turn(input).await;
        }
        panic!("the daemon never settles");
    }

    /// Delivers a kernel notification the test held back.
    async fn deliver(&mut self, event: NetEvent) {
        self.daemon.turn(Input::Host(HostEvent::Net(event))).await;
    }

    /// The carrier hook or watch reports NIC `ifindex` without carrier.
    async fn report_carrier_loss(&mut self, ifindex: u32) {
        let loss = CarrierLoss {
            ifindex,
            reported_ns: None,
        };
        let input = Input::Host(HostEvent::CarrierLost(vec![loss]));
        self.daemon.turn(input).await;
    }

    /// An operator's request on the control socket, answered at the end of its turn.
    async fn request(&mut self, request: Request) -> Reply {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.daemon
            .turn(Input::Command(Command { request, reply }))
            .await;
        answer.await.unwrap()
    }

    /// Lets `by` pass as the event loop would: it wakes at each timer, and the link's targets
    /// answer the probes of every NIC but the silent ones at once.
    async fn run_for(&mut self, by: Duration) {
        let end = self.daemon.host.now() + by;
        while self.step(end).await < end {}
    }

    /// Runs as [`Scenario::run_for`] until `done` holds after a wake-up, for at most `limit`;
    /// false when it never did.
    async fn run_until(&mut self, limit: Duration, done: impl Fn(&Scenario) -> bool) -> bool {
        let end = self.daemon.host.now() + limit;
        while self.step(end).await < end {
            if done(self) {
                return true;
            }
        }
        done(self)
    }

    /// Wakes the daemon at its next timer (at `end` at the latest) and settles: the link's
    /// targets answer the probes of every NIC but the silent ones at once. Returns the time
    /// it woke.
    async fn step(&mut self, end: Instant) -> Instant {
        let wake = self.daemon.next_wakeup().min(end);
        self.daemon.host.set_now(wake);
        self.daemon.turn(Input::Timers).await;
        self.settle().await;
        wake
    }

    /// The kernel's link event for a carrier change.
    async fn set_carrier(&mut self, ifindex: u32, carrier: bool) {
        self.daemon.host.set_carrier(ifindex, carrier);
        self.settle().await;
    }

    fn group(&self, name: &str) -> &GroupRuntime {
        &self.daemon.groups[self.daemon.groups.by_name(name).unwrap()]
    }

    fn state_of(&self, nic: &str) -> IfState {
        let at = self.daemon.groups.nic_named(nic).unwrap();
        self.daemon.groups[at.group]
            .fsm
            .interface_state(at.nic)
            .unwrap()
    }

    /// Asserts that `address` is on exactly one NIC, not on `nic`.
    fn assert_moved_off(&self, address: &str, nic: u32, what: &str) {
        let holders = self.holders(address);
        assert!(
            holders.len() == 1 && !holders.contains(&nic),
            "{what}: {address} is on {holders:?}"
        );
    }

    /// The NICs holding `address`.
    fn holders(&self, address: &str) -> BTreeSet<u32> {
        let address = cidr(address);
        [H0, H1, H2]
            .into_iter()
            .filter(|i| self.host().addresses_on(*i).contains(&address))
            .collect()
    }
}

/// A line of the daemon's log, with its fields.
#[derive(Debug, Clone)]
struct Logged {
    thread: std::thread::ThreadId,
    level: tracing::Level,
    message: String,
    fields: BTreeMap<String, String>,
}

impl Logged {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The log lines (DEBUG and up) of every test, each with its thread. One global subscriber
/// rather than one per test: tracing caches per log statement whether anyone listens, and
/// thread-local subscribers that come and go in parallel tests leave it wrong.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Logged>>>);

static LOG: std::sync::OnceLock<Log> = std::sync::OnceLock::new();

impl Log {
    /// The log of the test's thread (a tokio test runs on one).
    fn capture() -> ThreadLog {
        let log = LOG.get_or_init(|| {
            let log = Log::default();
            let subscriber = tracing_subscriber::registry().with(log.clone());
            tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
            log
        });
        ThreadLog {
            log: log.clone(),
            thread: std::thread::current().id(),
        }
    }
}

/// What one test's thread logged.
struct ThreadLog {
    log: Log,
    thread: std::thread::ThreadId,
}

impl ThreadLog {
    /// The lines (INFO and up) whose message contains `text`.
    fn containing(&self, text: &str) -> Vec<Logged> {
        self.at_least(tracing::Level::INFO, text)
    }

    /// The lines of `level` and up whose message contains `text`.
    fn at_least(&self, level: tracing::Level, text: &str) -> Vec<Logged> {
        let lines = self.log.0.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.thread == self.thread && l.level <= level && l.message.contains(text))
            .cloned()
            .collect()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Log {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::DEBUG {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = fields.remove("message").unwrap_or_default();
        self.0.lock().unwrap().push(Logged {
            thread: std::thread::current().id(),
            level: *event.metadata().level(),
            message,
            fields,
        });
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

#[tokio::test]
async fn the_configured_addresses_and_routes_are_placed_at_start() {
    let s = Scenario::start(THREE_NICS, three_nic_host()).await;
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(s.holders("192.0.2.21/24"), BTreeSet::from([H1]));
    assert!(s.host().addresses_on(H2).contains(&cidr("192.0.2.12/32")));
    assert!((H0..=H2).all(|i| s.host().is_attached(i)));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
}

#[tokio::test]
async fn a_carrier_loss_moves_the_address_and_re_forms_the_routes_and_its_return_brings_them_back()
{
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    let id = s.group("g0").id;
    assert_eq!(s.host().buckets_of(id), BTreeSet::from([H0, H1, H2]));
    s.set_carrier(H0, false).await;
    assert_eq!(s.state_of("h0"), LINK_DOWN);
    assert_eq!(
        s.host().buckets_of(id),
        BTreeSet::from([H1, H2]),
        "the bucket table spreads over the others"
    );
    let holders = s.holders("192.0.2.20/24");
    assert_eq!(holders.len(), 1, "on one NIC: {holders:?}");
    assert!(!holders.contains(&H0), "moved off h0");
    // The kernel flushed the nexthop through h0; the group's routes go on through the others
    // and h0 is not put back while it has no carrier.
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );
    assert!(
        s.host()
            .take_announced()
            .iter()
            .any(|a| a.addr == cidr("192.0.2.20/24").addr() && holders.contains(&a.ifindex)),
        "the peers learn where the address went"
    );

    s.set_carrier(H0, true).await;
    s.run_for(DETECTION).await;
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]), "failback");
    assert_eq!(s.host().buckets_of(id), BTreeSet::from([H0, H1, H2]));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
}

#[tokio::test]
async fn a_nic_whose_probes_go_unanswered_fails_and_is_repaired_when_they_are_answered_again() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    assert_eq!(s.state_of("h0"), IfState::Ok);
    s.host_mut().silent.insert(H0);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == PROBES_LOST)
            .await
    );
    // At once, as the failure is found: the address, and the group's nexthop group
    // re-formed without the NIC (the kernel keeps nexthops through a NIC with carrier).
    s.assert_moved_off("192.0.2.20/24", H0, "moved off h0");
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );
    s.run_for(DETECTION).await;
    assert_eq!(
        s.state_of("h0"),
        PROBES_LOST,
        "while its probes go unanswered"
    );

    s.host_mut().silent.remove(&H0);
    s.run_for(DETECTION).await;
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
}

#[tokio::test]
async fn a_nic_the_programs_cannot_attach_to_is_never_used_until_they_attach() {
    let mut host = three_nic_host();
    host.refuse_attach("h0", true);
    let mut s = Scenario::start(THREE_NICS, host).await;
    s.run_for(PAST_QUIET).await;
    assert_eq!(
        s.state_of("h0"),
        IfState::Offline {
            failure: None,
            reason: OfflineReason::NoDatapath
        }
    );
    assert!(!s.host().is_attached(H0));
    s.assert_moved_off("192.0.2.20/24", H0, "its data address is on a usable NIC");
    assert!(
        !s.host().addresses_on(H0).contains(&cidr("192.0.2.10/32")),
        "no test address before the programs"
    );
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );

    // The next look at the datapath attaches them.
    s.host_mut().refuse_attach("h0", false);
    s.run_for(DETECTION).await;
    assert!(s.host().is_attached(H0));
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert!(s.host().addresses_on(H0).contains(&cidr("192.0.2.10/32")));
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
}

#[tokio::test]
async fn a_resynchronisation_that_fails_after_lost_notifications_is_tried_again() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    // h0 loses its carrier while the kernel drops the notifications, and the dumps after the
    // overrun are interrupted.
    s.host().dumps_fail.set(true);
    s.host().set_carrier(H0, false);
    s.host().take_events();
    s.deliver(NetEvent::Overrun).await;
    s.settle().await;
    assert_eq!(s.state_of("h0"), IfState::Ok, "nothing known yet");
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));

    // No notification comes to trigger it: the retry alone finds the failure.
    s.host().dumps_fail.set(false);
    s.run_for(Duration::from_secs(3)).await;
    assert_eq!(s.state_of("h0"), LINK_DOWN);
    s.assert_moved_off("192.0.2.20/24", H0, "moved off h0");
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );
}

/// [`THREE_NICS`] without configured targets: the NICs probe the router of the group's route,
/// which is in no table a restarted mpathd could read before it serves the route.
const THREE_NICS_ROUTER_ONLY: &str = r#"
[[group]]
name = "g0"
[[group.interface]]
name = "h0"
test_address = "192.0.2.10/24"
data_addresses = ["192.0.2.20/24"]
[[group.interface]]
name = "h1"
test_address = "192.0.2.11/24"
data_addresses = ["192.0.2.21/24"]
[[group.interface]]
name = "h2"
test_address = "192.0.2.12/24"
[[group.route]]
to = "198.51.100.0/24"
via = "192.0.2.1"
"#;

#[tokio::test]
async fn a_restart_keeps_the_group_routes_the_probe_targets_and_a_failure_found_by_probes() {
    let mut s = Scenario::start(THREE_NICS_ROUTER_ONLY, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    s.host_mut().silent.insert(H0);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == PROBES_LOST)
            .await
    );
    // The plan that follows deletes the nexthop through h0.
    s.run_for(Duration::from_secs(1)).await;
    let nexthops = s.host().nexthop_ids();
    let host = s.stop();

    let mut s = Scenario::start(THREE_NICS_ROUTER_ONLY, host).await;
    assert_eq!(s.state_of("h0"), PROBES_LOST, "the failure is adopted");
    s.assert_moved_off("192.0.2.20/24", H0, "the address stays off h0");
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );
    assert_eq!(s.host().nexthop_ids(), nexthops, "the nexthops are adopted");

    // The router is still probed: h0 is repaired by its answers, and h1 fails without them.
    s.host_mut().silent.remove(&H0);
    s.run_for(DETECTION).await;
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    s.host_mut().silent.insert(H1);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h1") == PROBES_LOST)
            .await
    );
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H2])
    );
}

#[tokio::test]
async fn a_renamed_nic_leaves_the_group_with_what_mpathd_put_on_it_and_rejoins_under_its_name() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.host().rename(H0, "eth9");
    s.settle().await;
    assert_eq!(s.state_of("h0"), IfState::Missing);
    s.assert_moved_off("192.0.2.20/24", H0, "moved off the renamed NIC");
    assert!(
        s.host().addresses_on(H0).is_empty(),
        "its test address went too"
    );
    assert!(!s.host().is_attached(H0));
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );

    s.host().rename(H0, "h0");
    s.settle().await;
    s.run_for(DETECTION).await;
    assert!(s.host().is_attached(H0));
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert!(s.host().addresses_on(H0).contains(&cidr("192.0.2.10/32")));
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
}

#[tokio::test]
async fn an_address_someone_else_puts_on_a_nic_is_adopted_and_fails_over_with_it() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.host().add_others_address(H1, cidr("192.0.2.99/24"));
    s.settle().await;
    s.set_carrier(H1, false).await;
    s.assert_moved_off("192.0.2.99/24", H1, "moved off h1 with its data address");
    assert!(!s.holders("192.0.2.21/24").contains(&H1));

    s.set_carrier(H1, true).await;
    s.run_for(DETECTION).await;
    assert_eq!(s.holders("192.0.2.99/24"), BTreeSet::from([H1]));
    assert_eq!(s.holders("192.0.2.21/24"), BTreeSet::from([H1]));
}

/// `systemctl reload` runs `mpathctl reload`, which fails on a `Refused` reply: a refused
/// file must give one, with the reason, and change nothing.
#[tokio::test]
async fn a_refused_reload_replies_with_its_reason_and_keeps_the_running_configuration() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    let unparsable = THREE_NICS.replace("[[group.route]]", "[[group.route]");
    let reply = s.reload(&unparsable).await;
    assert!(
        matches!(&reply, Reply::Refused { message }
            if message.starts_with("reload refused, the running configuration stays: ")),
        "{reply:?}"
    );
    // Valid TOML that the host refuses: h0's data address is h1's test address.
    let clashing = THREE_NICS.replace(
        "data_addresses = [\"192.0.2.20/24\"]",
        "data_addresses = [\"192.0.2.11/24\"]",
    );
    let reply = s.reload(&clashing).await;
    assert!(matches!(reply, Reply::Refused { .. }), "{reply:?}");
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
    let reply = s.reload(THREE_NICS).await;
    assert_eq!(
        reply,
        Reply::Done {
            message: "the configuration is unchanged".into()
        }
    );
}

#[tokio::test]
async fn a_reload_changes_the_group_routes_and_keeps_a_failed_nic_out_of_them() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    // h2 holds no data address: nothing on the host tells a new group it failed, only what
    // the group it replaces went through.
    s.host_mut().silent.insert(H2);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h2") == PROBES_LOST)
            .await
    );
    let changed = THREE_NICS
        .replace("198.51.100.0/24", "203.0.113.0/24")
        .replace(
            "test_address = \"192.0.2.12/24\"",
            "test_address = \"192.0.2.12/24\"\ndata_addresses = [\"192.0.2.22/24\"]",
        );
    let reply = s.reload(&changed).await;
    assert!(
        matches!(&reply, Reply::Done { message } if message.starts_with("reloaded: ")),
        "{reply:?}"
    );
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(
        s.state_of("h2"),
        PROBES_LOST,
        "still failed after the reload"
    );
    assert_eq!(
        s.host().routed_through(cidr("203.0.113.0/24")),
        BTreeSet::from([H0, H1]),
        "the new route, without the failed NIC"
    );
    assert!(
        s.host().routed_through(cidr("198.51.100.0/24")).is_empty(),
        "the route the configuration no longer has is gone"
    );
    s.assert_moved_off(
        "192.0.2.22/24",
        H2,
        "h2's new address is placed on a usable NIC",
    );

    s.host_mut().silent.remove(&H2);
    s.run_for(DETECTION).await;
    assert_eq!(
        s.host().routed_through(cidr("203.0.113.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
    assert_eq!(s.holders("192.0.2.22/24"), BTreeSet::from([H2]));
}

#[tokio::test]
async fn an_operator_s_offline_moves_the_addresses_and_outlives_a_restart() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    let offline = Request::Offline {
        interface: "h0".into(),
    };
    assert!(matches!(s.request(offline).await, Reply::Done { .. }));
    s.settle().await;
    let admin_offline = IfState::Offline {
        failure: None,
        reason: OfflineReason::Admin,
    };
    assert_eq!(s.state_of("h0"), admin_offline);
    assert!(!s.holders("192.0.2.20/24").contains(&H0));
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );

    let host = s.stop();
    let mut s = Scenario::start(THREE_NICS, host).await;
    s.run_for(DETECTION).await;
    assert_eq!(s.state_of("h0"), admin_offline, "the pinned map kept it");
    assert!(!s.holders("192.0.2.20/24").contains(&H0));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );

    let online = Request::Online {
        interface: "h0".into(),
    };
    assert!(matches!(s.request(online).await, Reply::Done { .. }));
    s.run_for(DETECTION).await;
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
}

#[tokio::test]
async fn programs_taken_off_a_nic_behind_mpathd_s_back_are_attached_again() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.host_mut().detach_behind_mpathds_back(H1);
    s.run_for(Duration::from_secs(3)).await;
    assert!(s.host().is_attached(H1), "attached again at the next look");
    assert_eq!(s.state_of("h1"), IfState::Ok);
    assert_eq!(s.holders("192.0.2.21/24"), BTreeSet::from([H1]));
}

#[tokio::test]
async fn a_nic_deleted_and_created_again_under_another_ifindex_is_set_up_anew() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.host().remove_nic(H0);
    s.settle().await;
    assert_eq!(s.state_of("h0"), IfState::Missing);
    s.assert_moved_off("192.0.2.20/24", H0, "moved to a NIC that is there");
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );

    const H0_AGAIN: u32 = 9;
    s.host().add_nic("h0", H0_AGAIN);
    s.settle().await;
    s.run_for(DETECTION).await;
    assert!(s.host().is_attached(H0_AGAIN));
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert!(
        s.host()
            .addresses_on(H0_AGAIN)
            .contains(&cidr("192.0.2.10/32"))
    );
    assert!(
        s.host()
            .addresses_on(H0_AGAIN)
            .contains(&cidr("192.0.2.20/24")),
        "failback to the new NIC"
    );
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0_AGAIN, H1, H2])
    );
}

/// Two NICs probing over IPv6 from their link-local addresses, h0 with an IPv6 data address.
const TWO_NICS_IPV6: &str = r#"
[[group]]
name = "g6"
targets = ["fe80::1"]
[[group.interface]]
name = "h0"
data_addresses = ["2001:db8::20/64"]
[[group.interface]]
name = "h1"
"#;

#[tokio::test]
async fn a_nic_probing_over_ipv6_fails_silently_and_its_address_is_announced_from_the_other() {
    let mut host = FakeHost::new(Instant::now());
    for (name, ifindex) in [("h0", H0), ("h1", H1)] {
        host.add_nic(name, ifindex);
        let link_local = cidr(&format!("fe80::{ifindex}/64"));
        host.put_address(ifindex, link_local, Origin::Kernel);
    }
    host.take_events();
    let mut s = Scenario::start(TWO_NICS_IPV6, host).await;
    s.run_for(PAST_QUIET).await;
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert_eq!(s.holders("2001:db8::20/64"), BTreeSet::from([H0]));

    s.host().take_announced();
    s.host_mut().silent.insert(H0);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == PROBES_LOST)
            .await
    );
    assert_eq!(s.holders("2001:db8::20/64"), BTreeSet::from([H1]));
    let address = cidr("2001:db8::20/64").addr();
    assert!(
        s.host()
            .take_announced()
            .iter()
            .any(|a| a.addr == address && a.ifindex == H1),
        "an unsolicited neighbour advertisement from h1"
    );
}

#[tokio::test]
async fn a_carrier_loss_reported_ahead_of_the_link_event_fails_over_once_confirmed() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    // A stale report: h0 has its carrier.
    s.report_carrier_loss(H0).await;
    s.settle().await;
    assert_eq!(s.state_of("h0"), IfState::Ok);
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));

    // The carrier is gone, and the kernel's link event is still held back.
    s.host().set_carrier(H0, false);
    let link_events = s.host().take_events();
    s.report_carrier_loss(H0).await;
    s.settle().await;
    assert_eq!(s.state_of("h0"), LINK_DOWN);
    assert!(!s.holders("192.0.2.20/24").contains(&H0));
    // The link event that follows changes nothing more.
    let holders = s.holders("192.0.2.20/24");
    for event in link_events {
        s.deliver(event).await;
    }
    s.settle().await;
    assert_eq!(s.holders("192.0.2.20/24"), holders);
}

#[tokio::test]
async fn a_multicast_group_joined_on_a_failed_nic_is_joined_where_its_address_went_until_repair() {
    let mut host = three_nic_host();
    let group = "239.1.2.3".parse().unwrap();
    host.join_by_application(H0, group);
    let mut s = Scenario::start(THREE_NICS, host).await;
    assert!(s.host().joined_by_mpathd().is_empty());

    s.set_carrier(H0, false).await;
    let holders = s.holders("192.0.2.20/24");
    let taker = *holders.first().unwrap();
    assert_ne!(taker, H0);
    assert_eq!(
        s.host().joined_by_mpathd(),
        BTreeSet::from([(taker, group)])
    );

    assert!(s.host().reported().is_empty());

    s.set_carrier(H0, true).await;
    s.run_for(DETECTION).await;
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert!(s.host().joined_by_mpathd().is_empty(), "left on repair");
    // The switch forgot h0's port with its link: h0's groups are reported again.
    assert_eq!(
        s.host().reported(),
        [(H0, vec!["239.1.2.3".parse::<std::net::Ipv4Addr>().unwrap()])]
    );
}

/// A DHCP client's default route through the link's router, out of `oif` only.
fn dhcp_default_route(oif: u32) -> MainRoute {
    MainRoute {
        destination: cidr("0.0.0.0/0"),
        metric: 100,
        tos: 0,
        plain: true,
        prefsrc: None,
        hops: smallvec::smallvec![Hop {
            oif,
            gateway: Some("192.0.2.1".parse().unwrap()),
        }],
    }
}

/// Three NICs without configured targets or routes: the group serves the main table's routes
/// through its NICs and probes their router.
const THREE_NICS_MAIN_TABLE: &str = r#"
[[group]]
name = "g0"
[[group.interface]]
name = "h0"
test_address = "192.0.2.10/24"
data_addresses = ["192.0.2.20/24"]
[[group.interface]]
name = "h1"
test_address = "192.0.2.11/24"
[[group.interface]]
name = "h2"
test_address = "192.0.2.12/24"
"#;

#[tokio::test]
async fn a_default_route_on_one_nic_is_served_through_the_group_and_probed_for_failures() {
    let mut host = three_nic_host();
    // A DHCP client's default route, through h0 only.
    host.put_main_route(dhcp_default_route(H0));
    let mut s = Scenario::start(THREE_NICS_MAIN_TABLE, host).await;
    s.run_for(PAST_QUIET).await;
    assert_eq!(
        s.host().routed_through(cidr("0.0.0.0/0")),
        BTreeSet::from([H0, H1, H2])
    );

    // The router of the default route is every NIC's target: h0 fails by its probes.
    s.host_mut().silent.insert(H0);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == PROBES_LOST)
            .await
    );
    assert_eq!(
        s.host().routed_through(cidr("0.0.0.0/0")),
        BTreeSet::from([H1, H2])
    );
    assert!(!s.holders("192.0.2.20/24").contains(&H0));
}

/// A routing daemon's host routes in `main`, through the link's router on `oif`.
fn feed(oif: u32) -> impl Iterator<Item = MainRoute> {
    (0..=255u8).map(move |i| MainRoute {
        destination: IpCidr::new(std::net::IpAddr::from([203, 0, 113, i]), 32).unwrap(),
        ..dhcp_default_route(oif)
    })
}

/// A failover or repair re-forms the nexthop groups and moves addresses; it never reads a
/// routing table, plans a destination again or rewrites a route, so it costs the same at any
/// size of the table.
#[tokio::test]
async fn failovers_and_repairs_with_many_routes_read_plan_and_rewrite_no_route() {
    let log = Log::capture();
    let mut host = three_nic_host();
    for route in feed(H0) {
        host.put_main_route(route);
    }
    let mut s = Scenario::start(THREE_NICS_MAIN_TABLE, host).await;
    s.run_for(PAST_QUIET).await;
    let served_through = |s: &Scenario, nics: &[u32]| {
        let nics = BTreeSet::from_iter(nics.iter().copied());
        feed(H0).all(|r| s.host().routed_through(r.destination) == nics)
    };
    assert!(served_through(&s, &[H0, H1, H2]));
    let table = s.host().mpathd_table();
    let work = s.host().route_work();
    let planned = |log: &ThreadLog| log.at_least(tracing::Level::DEBUG, "planned ");
    let plans_at_start = planned(&log).len();
    assert!(plans_at_start > 0, "the start's plans are logged");

    s.set_carrier(H0, false).await;
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(s.state_of("h0"), LINK_DOWN);
    assert!(served_through(&s, &[H1, H2]));
    s.set_carrier(H0, true).await;
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == IfState::Ok)
            .await
    );
    s.run_for(Duration::from_secs(1)).await;
    assert!(served_through(&s, &[H0, H1, H2]));

    s.host_mut().silent.insert(H0);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == PROBES_LOST)
            .await
    );
    s.run_for(Duration::from_secs(1)).await;
    assert!(served_through(&s, &[H1, H2]));
    s.host_mut().silent.remove(&H0);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == IfState::Ok)
            .await
    );
    s.run_for(Duration::from_secs(1)).await;
    assert!(served_through(&s, &[H0, H1, H2]));

    assert_eq!(
        s.host().route_work(),
        work,
        "no table read, no route written"
    );
    assert_eq!(s.host().mpathd_table(), table);
    let replans: Vec<String> = planned(&log)[plans_at_start..]
        .iter()
        .map(|l| l.message.clone())
        .collect();
    assert!(
        replans
            .iter()
            .all(|m| m.starts_with("planned 0 changed destinations")),
        "{replans:#?}"
    );
}

#[tokio::test]
async fn a_default_route_the_kernel_deleted_with_its_nic_is_held_by_the_group() {
    let mut host = three_nic_host();
    host.put_main_route(dhcp_default_route(H0));
    let mut s = Scenario::start(THREE_NICS_MAIN_TABLE, host).await;
    s.run_for(PAST_QUIET).await;
    s.host().take_down(H0);
    s.settle().await;
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(s.state_of("h0"), LINK_DOWN);
    assert_eq!(
        s.host().routed_through(cidr("0.0.0.0/0")),
        BTreeSet::from([H1, H2]),
        "off-link traffic still has a way out"
    );
    let group = s.group("g0");
    assert_eq!(group.held_routes.len(), 1, "{:?}", group.held_routes);
}

#[tokio::test]
async fn when_every_target_goes_silent_at_once_the_group_fails_and_nothing_moves() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    s.host_mut().silent.extend([H0, H1, H2]);
    let unreachable = IfState::Failed {
        cause: FailureCause::TargetsUnreachable,
    };
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == unreachable)
            .await
    );
    s.run_for(Duration::from_secs(1)).await;
    assert!(
        ["h0", "h1", "h2"]
            .iter()
            .all(|n| s.state_of(n) == unreachable)
    );
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(s.holders("192.0.2.21/24"), BTreeSet::from([H1]));

    // The targets answer again: the NICs are repaired one by one, and nothing moved.
    s.host_mut().silent.clear();
    s.run_for(DETECTION).await;
    assert!(
        ["h0", "h1", "h2"]
            .iter()
            .all(|n| s.state_of(n) == IfState::Ok)
    );
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
}

#[tokio::test]
async fn a_nic_given_another_nic_s_hardware_address_is_never_used_until_it_has_its_own() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    let h0_mac = [2, 0, 0, 0, 0, H0 as u8];
    s.host().set_mac(H1, h0_mac);
    s.settle().await;
    assert_eq!(
        s.state_of("h1"),
        IfState::Offline {
            failure: None,
            reason: OfflineReason::DuplicateMac
        }
    );
    s.assert_moved_off("192.0.2.21/24", H1, "the duplicate carries no address");
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H2])
    );

    s.host().set_mac(H1, [2, 0, 0, 0, 0, 0x33]);
    s.settle().await;
    s.run_for(DETECTION).await;
    assert_eq!(s.state_of("h1"), IfState::Ok);
    assert_eq!(s.holders("192.0.2.21/24"), BTreeSet::from([H1]));
}

#[tokio::test]
async fn a_route_someone_deletes_from_mpathd_s_table_is_put_back() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    let table = s.daemon.config.daemon.route_table;
    s.host().delete_table_route(table, cidr("198.51.100.0/24"));
    assert!(s.host().routed_through(cidr("198.51.100.0/24")).is_empty());
    s.settle().await;
    s.run_for(Duration::from_secs(1)).await;
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H0, H1, H2])
    );
}

/// [`THREE_NICS`] with h2 a standby: it serves only in the place of a NIC that failed.
fn three_nics_standby() -> String {
    let h2 = "test_address = \"192.0.2.12/24\"\n";
    THREE_NICS.replace(h2, &format!("{h2}standby = true\n"))
}

/// Where in `effects` the first one `matches` is.
fn position(effects: &[Effect], matches: impl Fn(&Effect) -> bool, what: &str) -> usize {
    effects
        .iter()
        .position(matches)
        .unwrap_or_else(|| panic!("{what} not among the effects: {effects:#?}"))
}

/// The NICs of each nexthop group write in `effects`, with where it is.
fn group_writes(effects: &[Effect]) -> Vec<(usize, BTreeSet<u32>)> {
    effects
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Effect::NexthopGroup { through, .. } => Some((i, through.clone())),
            _ => None,
        })
        .collect()
}

/// Asserts the order of one failover's effects: the routes re-formed without the NIC that
/// leaves and the one that joins, then the address added on its new NIC and removed from its
/// old one, the bucket table, the multicast membership, the routes re-formed with the joining
/// NIC, and last the sources, once per class.
fn assert_failover_order(
    effects: &[Effect],
    address: IpCidr,
    (from, to): (u32, u32),
    staying: u32,
    membership: Effect,
) {
    let writes = group_writes(effects);
    assert_eq!(
        writes.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
        [BTreeSet::from([staying]), BTreeSet::from([staying, to])],
        "re-formed without both, then with the joining NIC: {effects:#?}"
    );
    let added = position(
        effects,
        |e| {
            *e == Effect::AddAddress {
                ifindex: to,
                cidr: address,
            }
        },
        "the address added on its new NIC",
    );
    let removed = position(
        effects,
        |e| {
            *e == Effect::DelAddress {
                ifindex: from,
                cidr: address,
            }
        },
        "the address removed from its old NIC",
    );
    let table = position(
        effects,
        |e| matches!(e, Effect::WriteTable { .. }),
        "the bucket table",
    );
    let followed = position(effects, |e| *e == membership, "the membership");
    let sources: Vec<usize> = (0..effects.len())
        .filter(|i| matches!(effects[*i], Effect::WriteSources { .. }))
        .collect();
    assert_eq!(sources.len(), SourceClass::ALL.len(), "{effects:#?}");
    let order = [
        writes[0].0,
        added,
        removed,
        table,
        followed,
        writes[1].0,
        sources[0],
    ];
    assert!(order.is_sorted(), "out of order {order:?}: {effects:#?}");
}

#[tokio::test]
async fn a_failover_re_forms_the_routes_without_the_nic_that_leaves_before_anything_moves_and_with_the_standby_after()
 {
    let mut host = three_nic_host();
    let group = "239.1.2.3".parse().unwrap();
    host.join_by_application(H1, group);
    let mut s = Scenario::start(&three_nics_standby(), host).await;
    s.run_for(PAST_QUIET).await;
    let route = cidr("198.51.100.0/24");
    assert_eq!(s.host().routed_through(route), BTreeSet::from([H0, H1]));
    let address = cidr("192.0.2.21/24");

    // h1 fails silently (the kernel keeps its nexthop): the standby takes its place.
    s.host_mut().silent.insert(H1);
    s.host().take_effects();
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h1") == PROBES_LOST)
            .await
    );
    let effects = s.host().take_effects();
    let joined = Effect::Join { ifindex: H2, group };
    assert_failover_order(&effects, address, (H1, H2), H0, joined);
    assert_eq!(s.host().routed_through(route), BTreeSet::from([H0, H2]));

    // Repaired, h1 takes its place back and the standby leaves: the same order.
    s.host_mut().silent.remove(&H1);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h1") == IfState::Ok)
            .await
    );
    let effects = s.host().take_effects();
    let left = Effect::Leave { ifindex: H2, group };
    assert_failover_order(&effects, address, (H2, H1), H0, left);
    assert_eq!(s.host().routed_through(route), BTreeSet::from([H0, H1]));
}

#[tokio::test]
async fn a_link_change_that_fails_a_nic_over_does_each_kind_of_work_once_in_its_turn() {
    let mut host = three_nic_host();
    let group = "239.1.2.3".parse().unwrap();
    host.join_by_application(H0, group);
    let mut s = Scenario::start(THREE_NICS, host).await;
    s.run_for(PAST_QUIET).await;
    s.host().take_effects();
    s.host().set_carrier(H0, false);
    let events = s.host().take_events();
    assert_eq!(events.len(), 1, "{events:?}");
    for event in events {
        s.deliver(event).await;
    }
    assert_eq!(s.state_of("h0"), LINK_DOWN);
    let effects = s.host().take_effects();
    let count = |matches: fn(&Effect) -> bool| effects.iter().filter(|e| matches(e)).count();
    assert_eq!(
        count(|e| matches!(e, Effect::AddAddress { .. })),
        1,
        "one move: {effects:#?}"
    );
    assert_eq!(count(|e| matches!(e, Effect::WriteTable { .. })), 1);
    assert_eq!(count(|e| matches!(e, Effect::Join { .. })), 1);
    for class in SourceClass::ALL {
        assert_eq!(
            effects
                .iter()
                .filter(|e| matches!(e, Effect::WriteSources { class: c, .. } if *c == class))
                .count(),
            1,
            "the sources once: {effects:#?}"
        );
    }
    // The kernel took h0's nexthop out of the group with the carrier: nothing to re-form.
    assert!(group_writes(&effects).is_empty(), "{effects:#?}");
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );
}

/// What feeds the event loop's inbox: the control socket's commands, the scrapes, signals.
struct Feeds {
    commands: mpsc::Sender<Command>,
    scrapes: mpsc::Sender<Scrape>,
    signals: mpsc::Sender<Signal>,
}

/// An inbox for [`Daemon::serve`] and the ends that feed it.
fn inbox() -> (Feeds, Inbox) {
    let (commands_tx, commands) = mpsc::channel(1);
    let (scrapes_tx, scrapes) = mpsc::channel(1);
    let (signals_tx, signals) = mpsc::channel(1);
    let feeds = Feeds {
        commands: commands_tx,
        scrapes: scrapes_tx,
        signals: signals_tx,
    };
    let inbox = Inbox {
        commands,
        scrapes,
        signals,
    };
    (feeds, inbox)
}

#[tokio::test]
async fn the_event_loop_answers_the_control_socket_and_fails_a_silent_nic_over_on_the_host_s_clock()
{
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    s.host_mut().silent.insert(H0);
    let started = s.host().now();
    let (feeds, mut inbox) = inbox();
    let mut service = Notifier::from_env();
    let operator = async {
        let mut polls = 0;
        loop {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = Request::Status {};
            feeds
                .commands
                .send(Command { request, reply })
                .await
                .unwrap();
            let Ok(Reply::Status(status)) = answer.await else {
                panic!("no status");
            };
            let h0 = status.interfaces.iter().find(|i| i.interface == "h0");
            if h0.is_some_and(|i| i.state == InterfaceStatus::Failed) {
                break;
            }
            polls += 1;
            assert!(polls < 100_000, "h0 never failed");
        }
        feeds.signals.send(Signal::Stop).await.unwrap();
    };
    let (served, ()) = tokio::join!(s.daemon.serve(&mut inbox, &mut service), operator);
    served.unwrap();
    // A NIC fails once five probes in a row went unanswered. Each probe falls in the second
    // half of its interval, so five span three and a half intervals at least, on the host's
    // clock the loop's timers moved.
    let interval = Duration::from_micros(s.group("g0").fdt.view().probe_interval_us);
    assert!(
        s.host().now() >= started + interval * 7 / 2,
        "{:?} passed",
        s.host().now() - started
    );
    assert_eq!(s.state_of("h0"), PROBES_LOST);
    s.assert_moved_off("192.0.2.20/24", H0, "moved off h0");
    assert_eq!(
        s.host().routed_through(cidr("198.51.100.0/24")),
        BTreeSet::from([H1, H2])
    );
}

#[tokio::test]
async fn a_teardown_after_mpathd_stopped_leaves_the_data_addresses_and_nothing_else_of_its() {
    let s = Scenario::start(THREE_NICS, three_nic_host()).await;
    let config = s.daemon.config.clone();
    let host = s.stop();
    assert!(host.has_rule() && host.link_route_count() > 0 && !host.nexthop_ids().is_empty());
    let table = config.daemon.route_table;
    let mut errors = remove_routes_from(&host, table).await;
    errors.extend(remove_test_addresses_from(&host, &config).await);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!host.has_rule());
    assert_eq!(host.link_route_count(), 0);
    assert!(host.nexthop_ids().is_empty());
    assert!(host.routed_through(cidr("198.51.100.0/24")).is_empty());
    for (ifindex, test) in [
        (H0, "192.0.2.10/32"),
        (H1, "192.0.2.11/32"),
        (H2, "192.0.2.12/32"),
    ] {
        assert!(!host.addresses_on(ifindex).contains(&cidr(test)));
    }
    assert!(host.addresses_on(H0).contains(&cidr("192.0.2.20/24")));
    assert!(host.addresses_on(H1).contains(&cidr("192.0.2.21/24")));
}

#[tokio::test]
async fn a_check_refuses_a_data_address_a_nic_outside_the_groups_holds_and_names_a_missing_nic() {
    let host = three_nic_host();
    host.add_nic("m0", 7);
    host.add_others_address(7, cidr("192.0.2.21/24"));
    let text = THREE_NICS.replace("\"h2\"", "\"h3\"");
    let config = Config::parse(&text, "mpathd.toml", None).unwrap();
    let check = check_on(&host, &config, &[]).await.unwrap();
    let refused: Vec<(&str, &str)> = check
        .refusals
        .iter()
        .map(|r| (r.interface.as_str(), r.nic.as_str()))
        .collect();
    assert_eq!(refused, [("h1", "m0")]);
    assert!(
        check.warnings.iter().any(|w| w.contains("h3")),
        "{:?}",
        check.warnings
    );
}

/// A clean start puts the data addresses on their NICs, which is no restore; an address
/// someone deletes afterwards is.
#[tokio::test]
async fn a_clean_start_places_the_addresses_and_only_a_deleted_one_is_restored() {
    let log = Log::capture();
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    assert!(log.containing("Restored missing").is_empty());
    let placed = log.containing("Data addresses 192.0.2.20/24 are on NIC h0");
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert_eq!(placed[0].field("group"), Some("g0"));
    assert_eq!(placed[0].field("interface"), Some("h0"));

    s.host()
        .del_address(H0, cidr("192.0.2.20/24"))
        .await
        .unwrap();
    s.settle().await;
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    let restored = log.containing("Restored missing data addresses on NIC h0");
    assert_eq!(restored.len(), 1, "{restored:?}");
}

/// A probe failure's line says which targets lost how many probes, with the group and NIC
/// as fields.
#[tokio::test]
async fn a_probe_failure_names_its_targets_and_the_probes_they_lost() {
    let log = Log::capture();
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    s.host_mut().silent.insert(H0);
    assert!(
        s.run_until(DETECTION, |s| s.state_of("h0") == PROBES_LOST)
            .await
    );
    let failures = log.containing("NIC failure detected on h0 of group g0");
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!(failure.level, tracing::Level::WARN);
    assert_eq!(failure.field("group"), Some("g0"));
    assert_eq!(failure.field("interface"), Some("h0"));
    let (_, probes) = failure
        .message
        .split_once(": probes IPv4 192.0.2.1 lost ")
        .unwrap();
    let (lost, decided) = probes.split_once(" of ").unwrap();
    let (lost, decided): (u32, u32) = (lost.parse().unwrap(), decided.parse().unwrap());
    assert!(lost >= 5 && lost <= decided, "{}", failure.message);
}

/// NetworkManager disables IPv6 on a NIC for a moment when it activates a profile there
/// (`nmcli connection up`): the kernel deletes the NIC's IPv6 addresses and refuses them
/// until IPv6 is enabled again. The data address goes back as soon as IPv6 does (its
/// link-local address shows up), not at some later unrelated event, and the NIC stays ok.
#[tokio::test]
async fn an_ipv6_data_address_deleted_with_ipv6_disabled_goes_back_when_ipv6_returns() {
    let config = THREE_NICS.replace(
        r#"data_addresses = ["192.0.2.20/24"]"#,
        r#"data_addresses = ["192.0.2.20/24", "2001:db8::20/64"]"#,
    );
    let mut s = Scenario::start(&config, three_nic_host()).await;
    assert_eq!(s.holders("2001:db8::20/64"), BTreeSet::from([H0]));

    s.host().disable_ipv6(H0);
    s.settle().await;
    assert!(
        s.holders("2001:db8::20/64").is_empty(),
        "the kernel refuses it while IPv6 is disabled"
    );
    s.host().enable_ipv6(H0, cidr("fe80::2/64"));
    s.settle().await;
    assert_eq!(s.holders("2001:db8::20/64"), BTreeSet::from([H0]));
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));
    assert_eq!(s.state_of("h0"), IfState::Ok);

    // A second time, as at each `nmcli connection up`.
    s.host().disable_ipv6(H0);
    s.settle().await;
    s.host().enable_ipv6(H0, cidr("fe80::2/64"));
    s.settle().await;
    assert_eq!(s.holders("2001:db8::20/64"), BTreeSet::from([H0]));
}

/// IPv6 announces an address only after the route the kernel made with it (from its DAD
/// work). NetworkManager deletes a data address, mpathd puts it back, and NetworkManager then
/// deletes the new prefix route before the address's notice reaches mpathd: mpathd asks the
/// kernel whether the address is there, not its own view, and makes the route again. Where
/// the kernel made the route again itself, nothing is logged.
#[tokio::test]
async fn a_prefix_route_deleted_before_its_put_back_ipv6_address_is_announced_is_made_again() {
    let log = Log::capture();
    let config = THREE_NICS.replace(
        r#"data_addresses = ["192.0.2.20/24"]"#,
        r#"data_addresses = ["192.0.2.20/24", "2001:db8::20/64"]"#,
    );
    let address = cidr("2001:db8::20/64");
    let prefix = MainRoute {
        destination: cidr("2001:db8::/64"),
        metric: 256,
        tos: 0,
        plain: true,
        prefsrc: None,
        hops: smallvec::smallvec![Hop {
            oif: H0,
            gateway: None,
        }],
    };
    let mut host = three_nic_host();
    host.put_main_route(prefix.clone());
    let mut s = Scenario::start(&config, host).await;
    s.run_for(PAST_QUIET).await;
    assert_eq!(s.holders("2001:db8::20/64"), BTreeSet::from([H0]));

    // NetworkManager's deletion of the address, and of the route it listed with it.
    s.host().del_address(H0, address).await.unwrap();
    s.host().delete_main_route(&prefix, KERNEL_PROTOCOL);
    let [removed, route_deleted] = <[NetEvent; 2]>::try_from(s.host().take_events()).unwrap();
    s.deliver(removed).await;
    assert_eq!(
        s.holders("2001:db8::20/64"),
        BTreeSet::from([H0]),
        "put back"
    );
    let announced_late = s.host().take_events();
    s.deliver(route_deleted).await;
    for event in announced_late {
        s.deliver(event).await;
    }
    s.settle().await;
    let main = s.host().main_routes().await.unwrap();
    assert_eq!(main.iter().filter(|r| **r == prefix).count(), 1, "{main:?}");
    assert_eq!(
        s.host().routed_through(cidr("2001:db8::/64")),
        BTreeSet::from([H0, H1, H2])
    );
    let made_again = "that the kernel made for data address 2001:db8::20/64 was deleted";
    assert_eq!(log.containing(made_again).len(), 1);

    // The same deletion where the kernel made the route again with the address.
    s.host().del_address(H0, address).await.unwrap();
    s.host().delete_main_route(&prefix, KERNEL_PROTOCOL);
    let [removed, route_deleted] = <[NetEvent; 2]>::try_from(s.host().take_events()).unwrap();
    s.deliver(removed).await;
    s.host_mut().put_main_route(prefix.clone());
    s.deliver(route_deleted).await;
    s.settle().await;
    let main = s.host().main_routes().await.unwrap();
    assert_eq!(main.iter().filter(|r| **r == prefix).count(), 1, "{main:?}");
    assert_eq!(log.containing(made_again).len(), 1, "no second line");
}

/// NetworkManager, at `nmcli device reapply`, deletes a NIC's addresses and then the routes
/// it listed with them: when mpathd has put a data address back in between, that deletes the
/// route the kernel made for the address's prefix, and leaves the address. mpathd makes the
/// route again, and the group goes on serving the prefix.
#[tokio::test]
async fn the_kernel_s_route_to_a_data_address_s_prefix_deleted_alone_is_made_again() {
    let prefix = MainRoute {
        destination: cidr("192.0.2.0/24"),
        metric: 0,
        tos: 0,
        plain: true,
        prefsrc: Some("192.0.2.20".parse().unwrap()),
        hops: smallvec::smallvec![Hop {
            oif: H0,
            gateway: None,
        }],
    };
    let mut host = three_nic_host();
    host.put_main_route(prefix.clone());
    let mut s = Scenario::start(THREE_NICS, host).await;
    s.run_for(PAST_QUIET).await;
    let served = BTreeSet::from([H0, H1, H2]);
    assert_eq!(s.host().routed_through(cidr("192.0.2.0/24")), served);

    s.host().delete_main_route(&prefix, KERNEL_PROTOCOL);
    s.settle().await;
    s.run_for(Duration::from_secs(1)).await;
    let main = s.host().main_routes().await.unwrap();
    assert!(main.contains(&prefix), "{main:?}");
    assert_eq!(s.host().routed_through(cidr("192.0.2.0/24")), served);
    assert_eq!(s.holders("192.0.2.20/24"), BTreeSet::from([H0]));

    // Someone else's route is theirs to delete.
    let static_route = MainRoute {
        destination: cidr("203.0.113.0/24"),
        prefsrc: None,
        ..prefix
    };
    s.host_mut().put_main_route(static_route.clone());
    s.host().delete_main_route(&static_route, 4);
    s.settle().await;
    assert!(
        !s.host()
            .main_routes()
            .await
            .unwrap()
            .contains(&static_route)
    );
}

/// The event loop picks among ready inputs at random: after a stall, a timer's turn may come
/// before the turn of replies already queued. That turn reads them first, so no probe
/// answered in time is declared lost.
#[tokio::test]
async fn replies_queued_before_a_timer_turn_are_read_before_it_declares_probes_lost() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    // Only timer turns: every reply waits in the queue until one of them.
    let end = s.daemon.host.now() + 3 * DETECTION;
    while s.daemon.host.now() < end {
        let wake = s.daemon.next_wakeup().min(end);
        s.daemon.host.set_now(wake);
        s.daemon.turn(Input::Timers).await;
    }
    for nic in ["h0", "h1", "h2"] {
        assert_eq!(s.state_of(nic), IfState::Ok, "{nic}");
    }
}

/// Start gives the programs the key the probes are signed with and clears the marks an
/// earlier carrier hook left; marks it cannot clear cost a warning, not the start.
#[tokio::test]
async fn start_gives_the_programs_the_probe_key_and_goes_on_past_carrier_marks_it_cannot_clear() {
    let mut host = three_nic_host();
    host.carrier_marks.insert(H1);
    let s = Scenario::start(THREE_NICS, host).await;
    assert_eq!(s.host().settings, Some(s.daemon.probes.settings()));
    assert!(s.host().carrier_marks.is_empty(), "cleared");

    let log = Log::capture();
    let mut host = three_nic_host();
    host.carrier_marks.insert(H1);
    host.carrier_marks_stuck = true;
    let s = Scenario::start(THREE_NICS, host).await;
    let warnings = log.containing("clearing the last carrier hook's marks");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].level, tracing::Level::WARN);
    assert_eq!(s.host().settings, Some(s.daemon.probes.settings()));
    assert_eq!(s.holders("192.0.2.21/24"), BTreeSet::from([H1]), "started");
}

/// A scrape through the event loop renders the daemon's state at that turn: a NIC failed by
/// its link, and the failover of its address, counted once.
#[tokio::test]
async fn a_scrape_through_the_event_loop_shows_a_failure_and_its_failover() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    s.run_for(PAST_QUIET).await;
    s.set_carrier(H0, false).await;
    let (feeds, mut inbox) = inbox();
    let mut service = Notifier::from_env();
    let scraper = async {
        let (scrape, answer) = Scrape::new();
        feeds.scrapes.send(scrape).await.unwrap();
        let text = answer.await.unwrap().unwrap();
        feeds.signals.send(Signal::Stop).await.unwrap();
        text
    };
    let (served, text) = tokio::join!(s.daemon.serve(&mut inbox, &mut service), scraper);
    served.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for series in [
        r#"mpath_interface_state{group="g0",interface="h0",state="failed"} 1"#,
        r#"mpath_interface_state{group="g0",interface="h1",state="ok"} 1"#,
        r#"mpath_interface_failures_total{cause="link_down",group="g0",interface="h0"} 1"#,
        r#"mpath_failovers_total{group="g0",interface="h0"} 1"#,
    ] {
        assert!(lines.contains(&series), "{series} missing from:\n{text}");
    }
}

/// `mpathctl offline` end to end but for the kernel: the request goes over the control
/// socket to the event loop, which carries it out and answers; a NIC in no group is refused
/// with the reason.
#[tokio::test]
async fn requests_over_the_control_socket_are_carried_out_by_the_event_loop() {
    let mut s = Scenario::start(THREE_NICS, three_nic_host()).await;
    let socket = s.dir.path().join("mpathd.sock");
    let listener = control::bind(&socket).unwrap();
    let (feeds, mut inbox) = inbox();
    tokio::spawn(control::serve(
        listener,
        feeds.commands,
        s.daemon.probes.rows.clone(),
    ));
    let mut service = Notifier::from_env();
    let operator = async {
        let ask = |interface: &str| {
            let (socket, request) = (
                socket.clone(),
                Request::Offline {
                    interface: interface.into(),
                },
            );
            tokio::task::spawn_blocking(move || control::request(&socket, &request))
        };
        let done = ask("h0").await.unwrap().unwrap();
        let refused = ask("h9").await.unwrap().unwrap();
        feeds.signals.send(Signal::Stop).await.unwrap();
        (done, refused)
    };
    let (served, (done, refused)) =
        tokio::join!(s.daemon.serve(&mut inbox, &mut service), operator);
    served.unwrap();
    assert!(
        matches!(&done, Reply::Done { message } if message == "h0 is offline"),
        "{done:?}"
    );
    assert!(
        matches!(&refused, Reply::Refused { message } if message == "h9 is not in any group"),
        "{refused:?}"
    );
    assert_eq!(
        s.state_of("h0"),
        IfState::Offline {
            failure: None,
            reason: OfflineReason::Admin,
        }
    );
    s.assert_moved_off("192.0.2.20/24", H0, "moved off the offline h0");
}
