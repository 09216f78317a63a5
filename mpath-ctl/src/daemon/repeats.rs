//! Which repeated warnings and errors are held back: a flap storm over 32 NICs wrote about
//! 300 a second. Each message (its place in the code) about one NIC may be logged
//! [`BURST`] times per [`WINDOW`]; the others are counted and summarised once the window
//! ends ("N more like this in the last M s"). Pure: the clock and the log are the caller's.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// How long a message about one NIC is counted from its first line.
pub(crate) const WINDOW: Duration = Duration::from_secs(30);
/// How many lines of one message about one NIC a window logs.
pub(crate) const BURST: u32 = 3;

/// A line held back, standing for the others of its window in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    pub error: bool,
    pub message: String,
    pub group: Option<String>,
    pub interface: Option<String>,
}

/// The lines a window held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub held: u32,
    /// How long the window was open.
    pub over: Duration,
    /// The first line held back.
    pub sample: Sample,
}

impl Summary {
    pub(crate) fn message(&self) -> String {
        format!(
            "{} more like this in the last {} s: {}",
            self.held,
            self.over.as_secs().max(1),
            self.sample.message
        )
    }
}

struct Window {
    opened: Instant,
    logged: u32,
    held: u32,
    sample: Option<Sample>,
}

impl Window {
    fn summary(&self, now: Instant) -> Option<Summary> {
        Some(Summary {
            held: self.held,
            over: now.saturating_duration_since(self.opened),
            sample: self.sample.clone()?,
        })
    }
}

/// The open windows, by message and NIC.
pub(crate) struct Repeats<K> {
    windows: HashMap<K, Window>,
    /// Summaries of windows that ended as a new line of theirs came, not yet logged.
    ended: Vec<Summary>,
}

impl<K: Hash + Eq> Default for Repeats<K> {
    fn default() -> Self {
        Repeats {
            windows: HashMap::new(),
            ended: Vec::new(),
        }
    }
}

impl<K: Hash + Eq> Repeats<K> {
    /// Whether a line of `key` is logged now; `sample` describes it, asked only for the
    /// first line a window holds back.
    pub(crate) fn admit(&mut self, key: K, now: Instant, sample: impl FnOnce() -> Sample) -> bool {
        let window = self.windows.entry(key).or_insert(Window {
            opened: now,
            logged: 0,
            held: 0,
            sample: None,
        });
        if now.saturating_duration_since(window.opened) >= WINDOW {
            self.ended.extend(window.summary(now));
            *window = Window {
                opened: now,
                logged: 0,
                held: 0,
                sample: None,
            };
        }
        if window.logged < BURST {
            window.logged += 1;
            return true;
        }
        window.held += 1;
        if window.sample.is_none() {
            window.sample = Some(sample());
        }
        false
    }

    /// The summaries due at `now`: of the windows that ended, with lines held back.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Summary> {
        let mut due = std::mem::take(&mut self.ended);
        self.windows.retain(|_, window| {
            if now.saturating_duration_since(window.opened) < WINDOW {
                return true;
            }
            due.extend(window.summary(now));
            false
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(message: &str) -> Sample {
        Sample {
            error: false,
            message: message.into(),
            group: Some("g0".into()),
            interface: Some("h1".into()),
        }
    }

    #[test]
    fn a_burst_is_logged_and_the_rest_of_the_window_is_summarised_once() {
        let t0 = Instant::now();
        let mut repeats = Repeats::default();
        let admitted: Vec<bool> = (0..10u32)
            .map(|i| {
                let at = t0 + Duration::from_secs(i.into());
                repeats.admit(("down", "h1"), at, || sample(&format!("h1 down {i}")))
            })
            .collect();
        assert_eq!(admitted.iter().filter(|a| **a).count(), BURST as usize);
        assert!(admitted[..BURST as usize].iter().all(|a| *a));
        assert!(
            repeats.due(t0 + Duration::from_secs(10)).is_empty(),
            "window open"
        );
        let due = repeats.due(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].held, 10 - BURST);
        assert_eq!(due[0].sample.message, format!("h1 down {BURST}"));
        assert_eq!(
            due[0].message(),
            format!("7 more like this in the last 30 s: h1 down {BURST}")
        );
        assert!(repeats.due(t0 + WINDOW * 2).is_empty(), "summarised once");
        assert!(repeats.admit(("down", "h1"), t0 + WINDOW * 2, || sample("again")));
    }

    #[test]
    fn each_message_and_nic_has_a_window_of_its_own() {
        let t0 = Instant::now();
        let mut repeats = Repeats::default();
        for key in [("down", "h1"), ("down", "h2"), ("refused", "h1")] {
            for _ in 0..BURST {
                assert!(repeats.admit(key, t0, || sample("x")));
            }
        }
        assert!(!repeats.admit(("down", "h1"), t0, || sample("x")));
        assert_eq!(repeats.due(t0 + WINDOW).len(), 1);
    }

    #[test]
    fn a_window_without_lines_held_back_ends_without_a_summary() {
        let t0 = Instant::now();
        let mut repeats = Repeats::default();
        assert!(repeats.admit("down", t0, || sample("x")));
        assert!(repeats.due(t0 + WINDOW).is_empty());
    }

    #[test]
    fn a_line_after_its_window_ended_starts_a_new_one_and_the_old_summary_is_due() {
        let t0 = Instant::now();
        let mut repeats = Repeats::default();
        for _ in 0..=BURST {
            repeats.admit("down", t0, || sample("first"));
        }
        let later = t0 + WINDOW + Duration::from_secs(5);
        assert!(repeats.admit("down", later, || sample("second")));
        let due = repeats.due(later);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].held, due[0].over),
            (1, WINDOW + Duration::from_secs(5))
        );
        assert!(
            repeats.due(later + WINDOW).is_empty(),
            "the new window held nothing"
        );
    }
}
