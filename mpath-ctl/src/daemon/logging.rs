//! Where mpathd's log goes: journald's native protocol when stderr is the journal (so every
//! record keeps its priority and fields such as GROUP= and INTERFACE=), otherwise text with
//! levels, coloured only on a terminal (journald and log files store escape codes as binary
//! garbage).

use std::{
    io::IsTerminal as _,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
};

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{
    EnvFilter, Layer as _, field::MakeExt as _, fmt::format::debug_fn, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

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
    let registry = tracing_subscriber::registry();
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
