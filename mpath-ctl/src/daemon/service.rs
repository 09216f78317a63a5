//! What mpathd tells systemd (`Type=notify`): READY=1 once the datapath is attached and the
//! addresses and routes are in place, a one-line STATUS= whenever it changes, WATCHDOG=1
//! from the event loop itself, so that a stuck loop gets the daemon restarted, and
//! RELOADING=1 (with MONOTONIC_USEC=) before a reload and READY=1 after it, the protocol of
//! `Type=notify-reload` (systemd 253), under which `systemctl reload` waits for the reload's
//! end. Outside systemd (no NOTIFY_SOCKET) all of it is skipped.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::{api::views::Status, core::state::InterfaceStatus};

/// The status line is recomputed at most this often (it walks every group and NIC).
const STATUS_PERIOD: Duration = Duration::from_secs(1);

pub(crate) struct Notifier {
    enabled: bool,
    /// Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; `None` without a watchdog.
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    status: String,
    status_at: Instant,
}

impl Notifier {
    /// Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
    pub(crate) fn from_env() -> Notifier {
        let now = Instant::now();
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().map(|t| t / 2),
            last_watchdog: now,
            status: String::new(),
            status_at: now,
        }
    }

    /// Start-up is complete: mpathd serves its groups.
    pub(super) fn ready(&mut self, status: &Status) {
        self.status = summary(status);
        self.status_at = Instant::now();
        self.send(&[NotifyState::Ready, NotifyState::Status(&self.status)]);
    }

    /// One turn of the event loop: feeds the watchdog when due and reports a changed status.
    /// `status` is only called when the status line is due again.
    pub(super) fn turn(&mut self, now: Instant, status: impl FnOnce() -> Status) {
        if !self.enabled {
            return;
        }
        if self.watchdog.is_some_and(|t| now >= self.last_watchdog + t) {
            self.last_watchdog = now;
            self.send(&[NotifyState::Watchdog]);
        }
        if now >= self.status_at + STATUS_PERIOD {
            self.status_at = now;
            let line = summary(&status());
            if line != self.status {
                self.status = line;
                self.send(&[NotifyState::Status(&self.status)]);
            }
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
    pub(super) fn reloaded(&mut self, status: &Status) {
        self.ready(status);
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

/// The STATUS= line: every group's state, then the NICs that work and those that do not
/// (by name, as few are expected), e.g. `g0 degraded; NICs: 2 ok, 1 failed (h1)`.
pub(super) fn summary(status: &Status) -> String {
    let groups: Vec<String> = status
        .groups
        .iter()
        .map(|g| format!("{} {}", g.group, g.state))
        .collect();
    let grouped = status.interfaces.iter().filter(|i| !i.group.is_empty());
    let (ok, not_ok): (Vec<_>, Vec<_>) = grouped.partition(|i| i.state == InterfaceStatus::Ok);
    let mut line = format!(
        "{}; NICs: {} ok, {} not ok",
        if groups.is_empty() {
            "no groups".to_string()
        } else {
            groups.join(", ")
        },
        ok.len(),
        not_ok.len()
    );
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
                // Tracked outside any group: not counted.
                nic("eth9", "", InterfaceStatus::Failed),
            ],
            ..Status::default()
        };
        assert_eq!(
            summary(&status),
            "g0 degraded, g1 ok; NICs: 2 ok, 2 not ok (h1 failed, h3 offline)"
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
            status: String::new(),
            status_at: start,
        };
        let status = Status::default;
        n.turn(start + Duration::from_secs(4), status);
        assert_eq!(n.last_watchdog, start);
        n.turn(start + Duration::from_secs(5), status);
        assert_eq!(n.last_watchdog, start + Duration::from_secs(5));
        assert_eq!(n.status, "no groups; NICs: 0 ok, 0 not ok");
    }
}
