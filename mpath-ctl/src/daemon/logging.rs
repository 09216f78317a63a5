//! Where mpathd's log goes: journald's native protocol when stderr is the journal (so every
//! record keeps its priority and fields such as GROUP= and INTERFACE=), otherwise text with
//! levels, coloured only on a terminal (journald and log files store escape codes as binary
//! garbage).

use std::{
    fmt,
    io::IsTerminal as _,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    sync::{LazyLock, Mutex},
    time::Instant,
};

use tracing::{Event, Level, Subscriber, callsite::Identifier, field::Field};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{
    EnvFilter, Layer, field::MakeExt as _, fmt::format::debug_fn, layer::Context,
    layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::daemon::repeats::{Repeats, Sample};

/// Installs the global subscriber; the level comes from RUST_LOG (default `info`).
pub fn init() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = stderr_is_journal()
        .then(|| {
            tracing_journald::layer().map(|l| {
                // GROUP= rather than the crate's default F_GROUP=.
                l.with_field_prefix(None)
                    .with_syslog_identifier("mpathd".into())
                    .with_priority_mappings(journal_priorities())
            })
        })
        .and_then(Result::ok);
    let registry = tracing_subscriber::registry().with(HoldRepeats);
    match journald {
        Some(layer) => registry.with(layer.with_filter(filter())).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    // The message names the group and NIC already; fields are for journald.
                    .fmt_fields(
                        debug_fn(|w, field, value| match field.name() {
                            "message" => write!(w, "{value:?}"),
                            _ => Ok(()),
                        })
                        .delimited(""),
                    )
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .init(),
    }
}

/// The target of the summaries of held-back lines, which are never held back themselves.
const REPEATS_TARGET: &str = "mpathd::repeats";
/// Lines of a NIC's or group's failure: never held back. Each is an event that
/// administrators and tools count (a flapping link's repairs are damped instead), while the
/// link lines around them, the flood of a flap storm, are.
pub(crate) const FAILURES_TARGET: &str = "mpathd::failures";

/// A warning or error is held back per its place in the code and its NIC.
type RepeatKey = (Identifier, Option<String>);

static REPEATS: LazyLock<Mutex<Repeats<RepeatKey>>> = LazyLock::new(Mutex::default);

/// Holds back repeated warnings and errors (see [`crate::daemon::repeats`]) before any output.
struct HoldRepeats;

impl<S: Subscriber> Layer<S> for HoldRepeats {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN
            || meta.target() == REPEATS_TARGET
            || meta.target() == FAILURES_TARGET
        {
            return true;
        }
        let mut fields = LineFields::default();
        event.record(&mut fields);
        let key = (meta.callsite(), fields.interface.clone());
        let mut repeats = REPEATS.lock().unwrap_or_else(|e| e.into_inner());
        repeats.admit(key, Instant::now(), || Sample {
            error: *meta.level() == Level::ERROR,
            message: fields.message,
            group: fields.group,
            interface: fields.interface,
        })
    }
}

/// The fields of a line that a summary repeats.
#[derive(Default)]
struct LineFields {
    message: String,
    group: Option<String>,
    interface: Option<String>,
}

impl tracing::field::Visit for LineFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        match field.name() {
            "message" => self.message = value,
            "group" => self.group = Some(value),
            "interface" => self.interface = Some(value),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "group" => self.group = Some(value.to_owned()),
            "interface" => self.interface = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// Logs the summaries of the lines held back in windows that ended; the event loop calls
/// it every turn.
pub(crate) fn summarise_repeats() {
    let due = REPEATS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .due(Instant::now());
    for summary in due {
        let (message, sample) = (summary.message(), summary.sample);
        let (group, interface) = (sample.group.as_deref(), sample.interface.as_deref());
        if sample.error {
            tracing::error!(target: REPEATS_TARGET, group, interface, "{message}");
        } else {
            tracing::warn!(target: REPEATS_TARGET, group, interface, "{message}");
        }
    }
}

/// Syslog's meaning of each level: INFO is routine (6), not NOTICE (5, the crate's default),
/// so that `journalctl -p notice` shows what needs a look and not every failover step.
fn journal_priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// An error with those of its causes its message does not already include (a failed system
/// call names its errno only in its cause), each cause once: `{:#}` of an anyhow error
/// repeats a cause that a message already shows.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Whether systemd connected stderr to the journal: JOURNAL_STREAM names the stream's
/// device and inode, which must still be stderr's (a child that redirected stderr to a
/// file inherits the variable, and must not log to the journal).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // A duplicate of the descriptor, to read its metadata through safe std calls.
    let stderr = std::io::stderr().as_fd().try_clone_to_owned();
    stderr
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .is_ok_and(|m| journal_stream_matches(&stream, m.dev(), m.ino()))
}

/// Whether JOURNAL_STREAM's `DEVICE:INODE` (both decimal) is the stream (`dev`, `ino`).
fn journal_stream_matches(stream: &str, dev: u64, ino: u64) -> bool {
    stream
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("adding 192.0.2.10/24 to h1: {source}")]
        struct Adding {
            source: std::io::Error,
        }
        let errno = || std::io::Error::from_raw_os_error(libc::EACCES);
        let error = anyhow::Error::new(Adding { source: errno() }).context("moving addresses");
        assert_eq!(
            format!("{error:#}"),
            "moving addresses: adding 192.0.2.10/24 to h1: Permission denied (os error 13): \
             Permission denied (os error 13)",
            "anyhow repeats the cause"
        );
        assert_eq!(
            with_causes(&*error),
            "moving addresses: adding 192.0.2.10/24 to h1: Permission denied (os error 13)"
        );
    }

    #[test]
    fn repeated_lines_are_held_back_but_never_a_failure() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt as _;

        #[derive(Clone, Default)]
        struct Written(Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Written {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let mut fields = LineFields::default();
                event.record(&mut fields);
                self.0.lock().unwrap().push(fields.message);
            }
        }
        let written = Written::default();
        let subscriber = tracing_subscriber::registry()
            .with(HoldRepeats)
            .with(written.clone());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..10 {
                tracing::warn!(interface = "h7", "The link has gone down on h7");
                tracing::warn!(
                    target: FAILURES_TARGET,
                    interface = "h7",
                    "NIC failure detected on h7 of group g0"
                );
            }
        });
        let lines = written.0.lock().unwrap().clone();
        let count = |text: &str| lines.iter().filter(|l| l.as_str() == text).count();
        assert_eq!(
            count("The link has gone down on h7"),
            crate::daemon::repeats::BURST as usize,
            "{lines:?}"
        );
        assert_eq!(
            count("NIC failure detected on h7 of group g0"),
            10,
            "{lines:?}"
        );
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let p = journal_priorities();
        let digits = [p.error, p.warn, p.info, p.debug, p.trace].map(|p| p as u8 - b'0');
        assert_eq!(digits, [3, 4, 6, 7, 7]);
    }

    #[test]
    fn journal_stream_must_name_the_same_device_and_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
