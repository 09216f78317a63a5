//! `carrier`: how soon mpathd fails a NIC whose carrier went within a second of another link
//! event, when the kernel's link event comes late (linkwatch: a physical NIC, a tap here),
//! with the carrier read every 10 ms (the default) and with the link events alone; and what
//! reading it costs an idle mpathd.
//!
//! Each round runs both configurations, the order alternating: a lab with h0 (a veth,
//! probing) and t0 (a tap holding a data address, judged by its link), mpathd idle for the
//! window (its CPU time summed over its threads from `/proc/<pid>/task/*/schedstat`, in ns),
//! then t0's carrier cut right after a veth's link event, and the time from the cut to
//! mpathd's failure line for t0, whose address must then be on h0.

use std::{fmt::Write as _, fs, path::PathBuf, thread::sleep, time::Duration};

use anyhow::{Context as _, bail};
use mpath_lab::Lab;
use mpath_tests::{
    carrier::{
        cut_after_a_link_event, tap_failed_over, tap_failure_ns, tap_group_config, tap_group_ready,
    },
    daemon::Mpathd,
};

use crate::{cpus, datapath::spread_of, write_section};

/// The two ways of hearing of a carrier loss: the default poll and none.
const POLLS_MS: [u64; 2] = [10, 0];

/// One configuration's measurements over the rounds.
#[derive(Default)]
struct Row {
    /// Cut to failure line, ms.
    detection_ms: Vec<f64>,
    /// mpathd's CPU while idle, µs per second.
    idle_us_per_s: Vec<f64>,
    /// Rounds whose log said the loss was read ahead of the link event.
    read_ahead: u64,
}

pub(crate) fn carrier(rounds: u64, idle: Duration, out: Option<PathBuf>) -> anyhow::Result<()> {
    let mut rows: [Row; 2] = Default::default();
    for round in 0..rounds {
        let mut order = [0, 1];
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let poll = POLLS_MS[index];
            let (detection, idle_cpu, ahead) = measure(poll, idle)
                .with_context(|| format!("round {round}, carrier_poll_ms = {poll}"))?;
            eprintln!(
                "round {round}, carrier_poll_ms = {poll}: failed after {detection:.1} ms, idle \
                 {idle_cpu:.0} us/s"
            );
            let row = &mut rows[index];
            row.detection_ms.push(detection);
            row.idle_us_per_s.push(idle_cpu);
            row.read_ahead += u64::from(ahead);
        }
    }
    let mut table = String::new();
    writeln!(
        table,
        "| carrier_poll_ms | cut to failure, ms: min / median / max | read ahead of the link event | idle mpathd CPU, µs per s: min / median / max |"
    )?;
    writeln!(table, "| ---: | ---: | ---: | ---: |")?;
    for (poll, row) in POLLS_MS.iter().zip(&rows) {
        let (dmin, dmid, dmax) = spread_of(&row.detection_ms);
        let (cmin, cmid, cmax) = spread_of(&row.idle_us_per_s);
        writeln!(
            table,
            "| {poll}{} | {dmin:.1} / {dmid:.1} / {dmax:.1} | {} of {rounds} | {cmin:.0} / {cmid:.0} / {cmax:.0} |",
            if *poll == 0 { " (off)" } else { " (default)" },
            row.read_ahead,
        )?;
    }
    println!("{table}");
    if let Some(path) = out {
        let body = format!(
            "`cargo xtask bench carrier`: a NIC's carrier cut within a second of another link \
             event, when the kernel reports it late. The lab's t0 is a tap, whose carrier \
             changes linkwatch handles like a physical NIC's (a veth's are reported at once); \
             t0 holds the data address 192.0.2.40 and is judged by its link, h0 (a veth) \
             probes. In each of {rounds} rounds, for each configuration (the order \
             alternating): mpathd starts, stays idle for {} s while its CPU time is read \
             (all threads, /proc/<pid>/task/*/schedstat), then a veth pair comes up in the \
             host namespace (linkwatch handles it at once and waits a second before its next \
             run) and t0's carrier is cut at once (TUNSETCARRIER); the time is from the cut to \
             mpathd's \"NIC failure detected on t0\" line, after which its address must be on \
             h0. \"Read ahead\" counts the rounds whose log shows the loss read from the \
             driver (`t0 has no carrier (seen ahead of the kernel's link event)`); in the \
             others the read itself made the kernel report it at once (this kernel's \
             `carrier` attribute syncs linkwatch for the device), and the link event won the \
             race. The idle CPU of the poll is mostly the cost of a thread's wake-up, 100 a \
             second: a bare 10 ms sleep loop costs about 59 µs of CPU per wake on this VM, \
             a few µs on bare metal. {} CPUs, shared with other work.\n\n{table}",
            idle.as_secs(),
            cpus()
        );
        write_section(&path, "Benchmark: carrier loss ahead of linkwatch", &body)?;
        eprintln!("written to {}", path.display());
    }
    Ok(())
}

/// One run: (cut to failure in ms, idle CPU in µs per s, whether the loss was read ahead).
fn measure(carrier_poll_ms: u64, idle: Duration) -> anyhow::Result<(f64, f64, bool)> {
    let lab = Lab::builder().nics(1).build()?;
    let tap = lab.add_tap("t0")?;
    let mut daemon = Mpathd::start(lab.host(), &tap_group_config(10_000, carrier_poll_ms));
    daemon.wait_until("h0 and t0 ok, t0 holding its address", tap_group_ready);
    let pid = daemon.pid().context("mpathd's pid")?;
    let before = cpu_ns(pid)?;
    sleep(idle);
    let idle_us_per_s = (cpu_ns(pid)? - before) as f64 / 1e3 / idle.as_secs_f64();

    let cut = cut_after_a_link_event(&lab, &tap)?;
    daemon.wait_until("t0 failed, its address on h0", tap_failed_over);
    let log = daemon.log();
    let failed = tap_failure_ns(&log).context("no failure line for t0")?;
    let ahead = log.contains("t0 has no carrier (seen ahead of the kernel's link event)");
    Ok(((failed - cut) as f64 / 1e6, idle_us_per_s, ahead))
}

/// CPU time of every thread of `pid` so far, in ns (the first field of each thread's
/// schedstat: time on a CPU). A thread that ends between two readings takes its time with
/// it; mpathd's threads live as long as it does.
pub(crate) fn cpu_ns(pid: u32) -> anyhow::Result<i64> {
    let tasks = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in fs::read_dir(&tasks).with_context(|| tasks.clone())? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the directory was read.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<i64>().ok())
        else {
            bail!("{}: {text:?}", path.display());
        };
        total += ns;
    }
    Ok(total)
}
