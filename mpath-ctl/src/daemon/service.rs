//! What mpathd tells systemd (`Type=notify`): READY=1 once the datapath is attached and the
//! addresses and routes are in place, a one-line STATUS= whenever it changes, WATCHDOG=1
//! from the event loop itself, so that a stuck loop gets the daemon restarted, and
//! RELOADING=1 (with MONOTONIC_USEC=) before a reload and READY=1 after it. The unit's
//! `ExecReload=` is `mpathctl reload`, which waits for the reload's result over the control
//! socket and fails when mpathd refused the file: `Type=notify-reload` (systemd 253) would
//! make `systemctl reload` wait, but not fail on a refusal, and Debian 12 has systemd 252.
//! Outside systemd (no NOTIFY_SOCKET) all of it is skipped.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::{api::views::Status, core::state::InterfaceStatus};

pub(crate) struct Notifier {
    enabled: bool,
    /// Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; `None` without a watchdog.
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    status: StatusLine,
}

impl Notifier {
    /// Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
    pub(crate) fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().map(|t| t / 2),
            last_watchdog: Instant::now(),
            status: StatusLine::default(),
        }
    }

    /// Start-up is complete: mpathd serves its groups. `states` is the hash of what the
    /// status line summarises (see [`Notifier::turn`]).
    pub(super) fn ready(&mut self, states: u64, status: &Status) {
        self.status.set(states, status);
        self.send(&[NotifyState::Ready, NotifyState::Status(&self.status.line)]);
    }

    /// One turn of the event loop: feeds the watchdog when due and reports a changed status
    /// at once. `states` hashes the groups' and NICs' states (cheap; not called outside
    /// systemd); `status`, which builds every view, is only called when that hash changed.
    pub(super) fn turn(
        &mut self,
        now: Instant,
        states: impl FnOnce() -> u64,
        status: impl FnOnce() -> Status,
    ) {
        if !self.enabled {
            return;
        }
        if self.watchdog.is_some_and(|t| now >= self.last_watchdog + t) {
            self.last_watchdog = now;
            self.send(&[NotifyState::Watchdog]);
        }
        if self.status.update(states(), status) {
            self.send(&[NotifyState::Status(&self.status.line)]);
        }
    }

    /// A reload (SIGHUP) begins. systemd takes RELOADING=1 only with the monotonic time of
    /// the reload's start.
    pub(super) fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading"),
            ]),
            Err(e) => tracing::debug!("cannot read the monotonic clock for systemd: {e}"),
        }
    }

    /// The reload is over, applied or refused: mpathd serves its groups again.
    pub(super) fn reloaded(&mut self, states: u64, status: &Status) {
        self.ready(states, status);
    }

    /// mpathd is shutting down (the datapath stays).
    pub(super) fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("cannot notify systemd: {e}");
        }
    }
}

/// The STATUS= line and the hash of the states it was made from.
#[derive(Default)]
struct StatusLine {
    states: u64,
    line: String,
}

impl StatusLine {
    fn set(&mut self, states: u64, status: &Status) {
        self.states = states;
        self.line = summary(status);
    }

    /// Makes the line again when the states changed; whether the line did.
    fn update(&mut self, states: u64, status: impl FnOnce() -> Status) -> bool {
        if states == self.states {
            return false;
        }
        let before = std::mem::take(&mut self.line);
        self.set(states, &status());
        self.line != before
    }
}

/// The STATUS= line: every group's state, then the NICs that work, those that work but
/// have no probe target yet to confirm it (the first moments after a start), and those that
/// do not (by name, as few are expected), e.g. `g0 degraded; NICs: 2 ok, 1 not ok (h1
/// failed)`.
pub(super) fn summary(status: &Status) -> String {
    let groups: Vec<String> = status
        .groups
        .iter()
        .map(|g| format!("{} {}", g.group, g.state))
        .collect();
    let grouped = status.interfaces.iter().filter(|i| !i.group.is_empty());
    let (working, not_ok): (Vec<_>, Vec<_>) =
        grouped.partition(|i| matches!(i.state, InterfaceStatus::Ok | InterfaceStatus::Unknown));
    let unconfirmed = working
        .iter()
        .filter(|i| i.state == InterfaceStatus::Unknown)
        .count();
    let mut line = format!(
        "{}; NICs: {} ok, ",
        if groups.is_empty() {
            "no groups".to_string()
        } else {
            groups.join(", ")
        },
        working.len() - unconfirmed,
    );
    if unconfirmed > 0 {
        line.push_str(&format!("{unconfirmed} unconfirmed, "));
    }
    line.push_str(&format!("{} not ok", not_ok.len()));
    if !not_ok.is_empty() {
        let names: Vec<String> = not_ok
            .iter()
            .map(|i| format!("{} {}", i.interface, i.state))
            .collect();
        line.push_str(&format!(" ({})", names.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::views::{GroupRow, InterfaceRow},
        core::state::{GroupState, LinkState, ProbeStatus},
    };

    fn nic(name: &str, group: &str, state: InterfaceStatus) -> InterfaceRow {
        InterfaceRow {
            interface: name.into(),
            group: group.into(),
            active: state == InterfaceStatus::Ok,
            flags: Vec::new(),
            link: LinkState::Up,
            probe: ProbeStatus::Ok,
            probe_ipv4: Some(ProbeStatus::Ok),
            probe_ipv6: None,
            state,
            unusable: None,
            datapath_error: None,
        }
    }

    fn group(name: &str, state: GroupState) -> GroupRow {
        GroupRow {
            group: name.into(),
            state,
            fdt_ms: 10_000,
            active: Vec::new(),
            inactive: Vec::new(),
            unusable: Vec::new(),
            held_routes: Vec::new(),
        }
    }

    #[test]
    fn the_status_line_names_the_groups_and_the_nics_that_do_not_work() {
        let status = Status {
            groups: vec![
                group("g0", GroupState::Degraded),
                group("g1", GroupState::Ok),
            ],
            interfaces: vec![
                nic("h0", "g0", InterfaceStatus::Ok),
                nic("h1", "g0", InterfaceStatus::Failed),
                nic("h2", "g1", InterfaceStatus::Ok),
                nic("h3", "g1", InterfaceStatus::Offline),
                nic("h4", "g1", InterfaceStatus::Unknown),
                // Tracked outside any group: not counted.
                nic("eth9", "", InterfaceStatus::Failed),
            ],
            ..Status::default()
        };
        assert_eq!(
            summary(&status),
            "g0 degraded, g1 ok; NICs: 2 ok, 1 unconfirmed, 2 not ok (h1 failed, h3 offline)"
        );
        assert_eq!(
            summary(&Status::default()),
            "no groups; NICs: 0 ok, 0 not ok"
        );
    }

    /// sd_notify(3): newline-separated VARIABLE=VALUE assignments in one datagram.
    #[test]
    fn the_messages_are_what_systemd_expects() {
        let render =
            |states: &[NotifyState]| states.iter().map(|s| format!("{s}\n")).collect::<String>();
        assert_eq!(
            render(&[
                NotifyState::Ready,
                NotifyState::Status("g0 ok; NICs: 3 ok, 0 not ok")
            ]),
            "READY=1\nSTATUS=g0 ok; NICs: 3 ok, 0 not ok\n"
        );
        assert_eq!(render(&[NotifyState::Watchdog]), "WATCHDOG=1\n");
        assert_eq!(
            render(&[NotifyState::Reloading, NotifyState::MonotonicUsec(12)]),
            "RELOADING=1\nMONOTONIC_USEC=12\n"
        );
        assert_eq!(
            render(&[NotifyState::Stopping, NotifyState::Status("stopping")]),
            "STOPPING=1\nSTATUS=stopping\n"
        );
    }

    #[test]
    fn the_watchdog_is_fed_at_half_its_period_and_only_when_due() {
        let start = Instant::now();
        let mut n = Notifier {
            // Sending is a no-op without NOTIFY_SOCKET; the bookkeeping is what is tested.
            enabled: true,
            watchdog: Some(Duration::from_secs(5)),
            last_watchdog: start,
            status: StatusLine::default(),
        };
        n.turn(start + Duration::from_secs(4), || 0, Status::default);
        assert_eq!(n.last_watchdog, start);
        n.turn(start + Duration::from_secs(5), || 0, Status::default);
        assert_eq!(n.last_watchdog, start + Duration::from_secs(5));
    }

    /// The line follows a change of the states at the next turn (the first second after
    /// READY=1 said "0 ok, 3 not ok" when the line was made again once a second), and the
    /// views are not built while the states stay.
    #[test]
    fn the_status_line_is_made_again_when_the_states_change_and_only_then() {
        let unconfirmed = Status {
            groups: vec![group("g0", GroupState::Ok)],
            interfaces: vec![nic("h0", "g0", InterfaceStatus::Unknown)],
            ..Status::default()
        };
        let mut confirmed = unconfirmed.clone();
        confirmed.interfaces[0].state = InterfaceStatus::Ok;
        let mut line = StatusLine::default();
        line.set(1, &unconfirmed);
        assert_eq!(line.line, "g0 ok; NICs: 0 ok, 1 unconfirmed, 0 not ok");
        assert!(!line.update(1, || panic!("views built for unchanged states")));
        assert!(line.update(2, || confirmed.clone()));
        assert_eq!(line.line, "g0 ok; NICs: 1 ok, 0 not ok");
        assert!(!line.update(3, || confirmed.clone()), "same line");
    }
}
