//! Passive evidence of life: what a NIC's receive counter (counted by the XDP program for
//! every arriving frame) says between probes.
//!
//! It is used to explain a probe-based failure, never to decide one. Receiving proves only
//! the receive half of a link: a NIC whose transmit path died (a broken fibre strand, a
//! switch port that stopped forwarding from the host) keeps receiving broadcasts and other
//! hosts' traffic. So a NIC whose probes are lost fails whatever its counter does, and a
//! failed NIC is repaired by answered probes only. What the counter adds is the diagnosis
//! an operator needs first: "still receives" points at the transmit path or at the targets'
//! replies, "receives nothing" at the whole link.

use std::time::{Duration, Instant};

/// How often the daemon reads a NIC's counter while probing it (a map read per CPU).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A counter that moved this recently means the NIC receives; one that stood still this
/// long (two readings apart at least) means it does not.
const RECENT: Duration = Duration::from_millis(200);

/// The readings of one NIC's receive counter.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RxEvidence {
    last: Option<Reading>,
    /// The first reading of the current count (after a start or a reset of the counter).
    since: Option<Instant>,
    /// The reading that last saw the counter move.
    moved_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    packets: u64,
    at: Instant,
}

/// What the readings say about the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxVerdict {
    /// The counter moved within [`RECENT`] of the latest reading.
    Receiving,
    /// The counter stood still for this long (at least [`RECENT`]) up to the latest reading.
    Silent(Duration),
    /// The readings span too little time to tell.
    Unknown,
}

impl RxEvidence {
    /// Whether a new reading is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last.at) >= SAMPLE_EVERY)
    }

    /// Records the counter's value read at `now`. A counter that went backwards was reset
    /// (the NIC's slot cleared): the readings start afresh.
    pub(crate) fn observe(&mut self, packets: u64, now: Instant) {
        match self.last {
            Some(last) if packets > last.packets => self.moved_at = Some(now),
            Some(last) if packets == last.packets => {}
            _ => {
                self.since = Some(now);
                self.moved_at = None;
            }
        }
        self.last = Some(Reading { packets, at: now });
    }

    pub(crate) fn verdict(&self) -> RxVerdict {
        let (Some(last), Some(since)) = (self.last, self.since) else {
            return RxVerdict::Unknown;
        };
        let still = last
            .at
            .saturating_duration_since(self.moved_at.unwrap_or(since));
        match self.moved_at {
            Some(_) if still < RECENT => RxVerdict::Receiving,
            _ if still >= RECENT => RxVerdict::Silent(still),
            _ => RxVerdict::Unknown,
        }
    }

    /// Why NIC `nic` lost its probes, as far as its receive counter tells; the caller takes
    /// a fresh reading first.
    pub(crate) fn explain_failure(&self, nic: &str) -> String {
        match self.verdict() {
            RxVerdict::Receiving => format!(
                "{nic} still receives: its transmit path, or the targets' replies to it, are broken"
            ),
            RxVerdict::Silent(quiet) => format!(
                "{nic} has received nothing for at least {} ms: its link is dead both ways",
                quiet.as_millis()
            ),
            RxVerdict::Unknown => format!("{nic}: too few receive counter readings to tell more"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_counter_read_once_says_nothing() {
        let mut rx = RxEvidence::default();
        assert_eq!(rx.verdict(), RxVerdict::Unknown);
        rx.observe(10, Instant::now());
        assert_eq!(rx.verdict(), RxVerdict::Unknown);
    }

    #[test]
    fn receiving_means_the_counter_moved_recently() {
        let t0 = Instant::now();
        let mut rx = RxEvidence::default();
        rx.observe(10, t0);
        rx.observe(12, t0 + ms(100));
        assert_eq!(rx.verdict(), RxVerdict::Receiving);
        // A reading right after a movement sees nothing new: still receiving.
        rx.observe(12, t0 + ms(101));
        assert_eq!(rx.verdict(), RxVerdict::Receiving);
        rx.observe(12, t0 + ms(200));
        rx.observe(12, t0 + ms(700));
        assert_eq!(rx.verdict(), RxVerdict::Silent(ms(600)));
        rx.observe(13, t0 + ms(800));
        assert_eq!(rx.verdict(), RxVerdict::Receiving);
    }

    #[test]
    fn a_counter_that_never_moved_is_silent_since_the_first_reading() {
        let t0 = Instant::now();
        let mut rx = RxEvidence::default();
        rx.observe(5, t0);
        rx.observe(5, t0 + ms(100));
        assert_eq!(rx.verdict(), RxVerdict::Unknown, "too short to tell");
        rx.observe(5, t0 + ms(300));
        assert_eq!(rx.verdict(), RxVerdict::Silent(ms(300)));
        assert!(rx.explain_failure("h0").contains("at least 300 ms"));
    }

    #[test]
    fn a_reset_counter_starts_afresh() {
        let t0 = Instant::now();
        let mut rx = RxEvidence::default();
        rx.observe(50, t0);
        rx.observe(60, t0 + ms(100));
        rx.observe(3, t0 + ms(200));
        assert_eq!(rx.verdict(), RxVerdict::Unknown);
        rx.observe(3, t0 + ms(450));
        assert_eq!(rx.verdict(), RxVerdict::Silent(ms(250)));
    }

    #[test]
    fn readings_are_due_every_sampling_period() {
        let t0 = Instant::now();
        let mut rx = RxEvidence::default();
        assert!(rx.due(t0));
        rx.observe(1, t0);
        assert!(!rx.due(t0 + SAMPLE_EVERY - ms(1)));
        assert!(rx.due(t0 + SAMPLE_EVERY));
    }

    #[test]
    fn the_explanation_points_at_the_transmit_path_when_the_nic_still_receives() {
        let t0 = Instant::now();
        let mut rx = RxEvidence::default();
        rx.observe(1, t0);
        rx.observe(2, t0 + ms(100));
        assert!(rx.explain_failure("h0").contains("h0 still receives"));
    }
}
