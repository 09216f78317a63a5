//! `busy`: probing at FDT 100 ms while other work keeps every CPU busy. mpathd on the 3-NIC
//! lab, a stream into h0's data address, and one spinning thread per CPU at the same
//! priority as mpathd; h0 is dropped silently and let go again, over and over. Every failure
//! mpathd declares other than h0's while it is dropped is a false failure, and so is a
//! group failure: h1 and h2 reach the router all along.

use std::{
    fmt::Write as _,
    hint::black_box,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use anyhow::bail;
use mpath_ctl::core::state::InterfaceStatus;
use mpath_lab::{Lab, ROUTER_V4};
use mpath_tests::daemon::{Mpathd, inbound, log_time_ns, state_of, three_nic_config};

use super::{
    DATA_CIDR, DATA_V4, FAILING_NIC, STREAM_SPACING, Stream, cpus, failover_timeout, load_average,
    percentile, settled, strip_ansi, write_section,
};

const FDT_MS: u64 = 100;
/// How long each state (all healthy, h0 failed) is held before the next change.
const DWELL: Duration = Duration::from_secs(2);
/// Longest wait for h0's repair and failback: 10 answered probes, far less on a calm machine.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// One spinning thread per CPU until dropped.
struct CpuHogs {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl CpuHogs {
    fn start(count: usize) -> CpuHogs {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = black_box(
                                x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                            );
                        }
                    }
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _: Result<(), _> = t.join();
        }
    }
}

/// h0 failed and its address moved to another NIC.
fn failed_over(daemon: &Mpathd) -> bool {
    daemon.try_status().is_some_and(|s| {
        state_of(&s, FAILING_NIC) == Some(InterfaceStatus::Failed)
            && inbound(&s, DATA_CIDR).is_some_and(|nic| nic != FAILING_NIC)
    })
}

/// Polls `done` until it holds (true) or `timeout` passes (false).
fn wait(daemon: &Mpathd, timeout: Duration, done: impl Fn(&Mpathd) -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done(daemon) {
            return true;
        }
        sleep(Duration::from_millis(5));
    }
    false
}

/// What mpathd's log says about one run.
#[derive(Default)]
struct Verdicts {
    /// Failures of NICs other than the dropped one, and group failures, as logged.
    false_failures: Vec<String>,
    /// Failures of the dropped NIC: one per drop is right.
    dropped_nic_failures: usize,
    fdt_changes: Vec<String>,
}

fn verdicts(log: &str) -> Verdicts {
    let mut v = Verdicts::default();
    let h0 = format!("NIC failure detected on {FAILING_NIC} ");
    for line in log.lines().map(strip_ansi) {
        if line.contains(&h0) {
            v.dropped_nic_failures += 1;
        } else if line.contains("NIC failure detected on ")
            || line.contains("stopped answering at once")
        {
            v.false_failures.push(line);
        } else if line.contains("failure detection time") {
            v.fdt_changes.push(line);
        }
    }
    v
}

pub(crate) fn busy(minutes: u64, out: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_before = load_average();
    let lab = Lab::builder().nics(3).build()?;
    let mut daemon = Mpathd::start(lab.host(), &three_nic_config(FDT_MS));
    daemon.wait_until("all NICs ok, the address on h0", settled);
    let stream = Stream::start(
        lab.router(),
        ROUTER_V4.parse()?,
        lab.host(),
        DATA_V4,
        STREAM_SPACING,
    )?;
    let hogs = CpuHogs::start(cpus());
    eprintln!(
        "busy: {minutes} min at FDT {FDT_MS} ms, {} spinning threads, h0 dropped silently and \
         let go every {} s",
        cpus(),
        DWELL.as_secs()
    );
    let log_start = daemon.log().len();
    let run = Duration::from_secs(minutes * 60);
    let mut detections = Vec::new();
    let mut repairs = Vec::new();
    let mut missed = 0;
    while started.elapsed() < run {
        sleep(DWELL);
        let dropped_at = Instant::now();
        lab.drop_silently(FAILING_NIC)?;
        if wait(&daemon, failover_timeout(FDT_MS), failed_over) {
            detections.push(dropped_at.elapsed());
        } else {
            missed += 1;
        }
        sleep(DWELL);
        // nft takes up to seconds here to lift the drop: timed from the command's start.
        let undropped_at = Instant::now();
        lab.undrop(FAILING_NIC)?;
        if !wait(&daemon, REPAIR_TIMEOUT, settled) {
            bail!("h0 was not repaired and failed back within 30 s of the drop's end");
        }
        repairs.push(undropped_at.elapsed());
        stream.take();
    }
    drop(hogs);
    stream.finish()?;
    let load_after = load_average();
    let log = daemon.log();
    let v = verdicts(&log[log_start..]);
    let drops = detections.len() + missed;
    eprintln!(
        "busy: {drops} drops, {missed} not failed over in time, {} false failures, {} failures \
         of h0",
        v.false_failures.len(),
        v.dropped_nic_failures
    );
    for line in &v.false_failures {
        eprintln!("  {line}");
    }
    let Some(path) = out else {
        return Ok(());
    };
    let stat = |values: &[Duration]| {
        let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return "–".to_string();
        }
        format!(
            "{:.0} / {:.0} / {:.0}",
            percentile(&ms, 0.0),
            percentile(&ms, 50.0),
            percentile(&ms, 100.0)
        )
    };
    let mut body = format!(
        "`cargo xtask bench busy -- --minutes {minutes}`: mpathd (release) at FDT {FDT_MS} ms on \
         the 3-NIC lab with a UDP stream into h0's data address every {} µs, and {} threads \
         spinning at mpathd's priority (one per CPU). For {minutes} minutes h0 is dropped \
         silently for {} s and let go for {} s. A false failure is a failure of h1 or h2 or \
         of the group: both reach the router all along. Times run from the start of the nft \
         command that drops or lets go (on this loaded machine the command itself takes up \
         to seconds). Load average {load_before} before, {load_after} at the end.\n\n\
         | | result |\n|---|---|\n\
         | silent drops of h0 | {drops} |\n\
         | false failures (h1, h2, the group) | **{}** |\n\
         | failures of h0 (one per drop is right) | {} |\n\
         | drops not failed over within {} ms | {missed} |\n\
         | drop to address moved, ms (min / median / max) | {} |\n\
         | drop's end to h0 repaired and failed back, ms (min / median / max) | {} |\n\
         | FDT changes logged | {} |\n",
        STREAM_SPACING.as_micros(),
        cpus(),
        DWELL.as_secs(),
        DWELL.as_secs(),
        v.false_failures.len(),
        v.dropped_nic_failures,
        failover_timeout(FDT_MS).as_millis(),
        stat(&detections),
        stat(&repairs),
        v.fdt_changes.len(),
    );
    for line in v.false_failures.iter().chain(&v.fdt_changes).take(20) {
        let at = log_time_ns(line).map_or(String::new(), |ns| format!("{ns} "));
        writeln!(body, "\n    {at}{line}")?;
    }
    write_section(&path, "Probing at FDT 100 ms on a busy machine", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_other_than_the_dropped_nics_are_false() {
        let log = "\
2026-12-07T18:00:00.000000Z  WARN NIC failure detected on h0 of group g0: 5 probes lost
2026-12-07T18:00:01.000000Z  WARN NIC failure detected on h1 of group g0: h1 still receives
2026-12-07T18:00:02.000000Z  WARN All probe targets of group g0 stopped answering at once: x
2026-12-07T18:00:03.000000Z  INFO NIC repair detected on h0 of group g0
";
        let v = verdicts(log);
        assert_eq!(v.dropped_nic_failures, 1);
        assert_eq!(v.false_failures.len(), 2);
        assert!(v.false_failures[0].contains("on h1"));
        assert!(v.false_failures[1].contains("stopped answering"));
    }
}
