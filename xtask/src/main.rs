//! mpath's developer commands: `cargo xtask setup | test | demo | bench | soak | package`.

mod demo;
mod guest;
mod package;
mod setup;
mod suite;
mod virtio;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mpath's set-up, test, demo and benchmark commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing of what the build (the pinned nightly with rust-src and
    /// clippy, LLVM, bpf-linker), the lab tests and the packaging need.
    Setup,
    /// Set up, then run every test of the workspace, the privileged lab tests included, the
    /// kernel-dependent ones again in a qemu guest on Debian 12's kernel (6.1), the failover
    /// tests on virtio NICs in a guest with a real driver, and the shipped unit under systemd
    /// as PID 1 in another guest on that kernel.
    Test {
        /// Only the guest runs, on this kernel: a version (`6.1`, `5.10`, `7.2`: Debian's
        /// newest generic amd64 image of it) or a `.deb` file.
        #[arg(long, value_name = "VERSION|FILE.deb")]
        kernel: Option<String>,
        /// In the guest, every privileged test rather than the CI subset.
        #[arg(long)]
        all: bool,
        /// Only the host run: no guest.
        #[arg(long, conflicts_with = "kernel")]
        no_guest: bool,
        /// Only the guest with systemd as PID 1 that runs the shipped unit (on --kernel's
        /// kernel, else 6.1).
        #[arg(long, conflicts_with_all = ["all", "no_guest"])]
        unit_only: bool,
        /// Only the guest whose NICs are virtio_net devices (on --kernel's kernel, else 6.1),
        /// which runs the `virtio` test binary.
        #[arg(long, conflicts_with_all = ["all", "no_guest", "unit_only"])]
        virtio_only: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and show mpathd keeping a lab host reachable through a NIC failure.
    Demo,
    /// Set up, then run a benchmark (release build) and write its table to BENCHMARKS.md.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        which: Benchmark,
        /// `carrier` only: run it in the guest whose NICs are virtio_net devices (on
        /// --kernel's kernel, else 6.1), where the carrier hook loads.
        #[arg(long)]
        guest: bool,
        /// With --guest: the guest's kernel, a version or a `.deb` file, as for `test`.
        #[arg(long, value_name = "VERSION|FILE.deb", requires = "guest")]
        kernel: Option<String>,
        /// Extra arguments for the benchmark (e.g. `--rounds 3 --seconds 1`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run mpathd (release build) under random faults and traffic, checking that
    /// no address is lost or duplicated; writes its figures to BENCHMARKS.md. Not part of
    /// `test`: it runs for half an hour by default.
    Soak {
        /// How long to inject faults.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Seed of the fault sequence (to replay a run); random when not given.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Set up the build and cargo-deb and lintian (not the lab), then build the Debian
    /// package (release build) into target/debian and check it: lintian, and installing,
    /// upgrading and purging it in an empty root.
    Package,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Benchmark {
    /// Spreading cost per packet against no program and kernel ECMP.
    Datapath,
    /// Traffic gap when a NIC fails (mpathd on carrier and silent loss, kernel ECMP), then
    /// probing at scale: 1, 8 and 32 NICs, mpathd against FRR's bfdd (`--only cases|scale`,
    /// `--false-failure-minutes M`).
    Failover,
    /// What the IPv6 source hook costs a connect and a datagram, in mpathd's namespace and
    /// in another one (`--rounds N --count N`).
    Sources,
    /// How soon a carrier loss the kernel reports late fails the NIC, with mpathd's carrier
    /// poll and without, and the poll's cost to an idle mpathd (`--rounds N
    /// --idle-seconds S`); with `--guest`, in the virtio guest, the traffic gap with the
    /// carrier hook, the poll and the link events alone (`--rounds N`).
    Carrier,
    /// Probing at FDT 100 ms while spinning threads keep every CPU busy and h0 is dropped
    /// silently over and over: false failures of the healthy NICs (`--minutes M`, 10 by
    /// default).
    Busy,
    /// mpathd with many routes in `main`, through the group and through a NIC outside it:
    /// start time, time and CPU to serve new routes, idle and under churn, RSS, failover gap
    /// at each size (`--sizes 0,10000,100000,1000000 --rounds N --reps N --churn-seconds S
    /// --idle-seconds S --timeout-seconds S --fdt-ms MS`; a quick run: `--sizes 0,10000
    /// --rounds 1 --churn-seconds 5`).
    Routes,
}

/// An error prints as one line with its causes: with RUST_BACKTRACE set (as on many
/// developer machines) anyhow's own report adds a backtrace of xtask, which buries the
/// failure's context that the commands print before it.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Test {
            kernel,
            all,
            no_guest,
            unit_only,
            virtio_only,
            args,
        } => {
            setup::lab()?;
            let selection = if all {
                guest::Selection::All
            } else {
                guest::Selection::Ci
            };
            let spec = kernel.as_deref().unwrap_or(guest::CI_KERNEL);
            if virtio_only {
                return guest::run_virtio(spec, &args);
            }
            if !unit_only {
                // The test arguments go to the host run, or to the guests' when they are alone.
                let mut guest_args = &args[..];
                if kernel.is_none() {
                    suite::run(&args)?;
                    if no_guest {
                        return Ok(());
                    }
                    guest_args = &[];
                }
                guest::run(spec, selection, guest_args)?;
                guest::run_virtio(spec, guest_args)?;
            }
            guest::run_under_systemd(spec)
        }
        Cmd::Demo => {
            setup::lab()?;
            demo::run()
        }
        Cmd::Bench {
            which,
            guest,
            kernel,
            args,
        } => {
            setup::lab()?;
            if guest {
                if !matches!(which, Benchmark::Carrier) {
                    bail!("--guest is for the carrier benchmark only");
                }
                build_daemon()?;
                return guest::run_carrier_bench(
                    kernel.as_deref().unwrap_or(guest::CI_KERNEL),
                    &args,
                );
            }
            let name = match which {
                Benchmark::Datapath => "datapath",
                Benchmark::Failover => {
                    build_daemon()?;
                    "failover"
                }
                Benchmark::Sources => {
                    build_daemon()?;
                    "sources"
                }
                Benchmark::Carrier => {
                    build_daemon()?;
                    "carrier"
                }
                Benchmark::Busy => {
                    build_daemon()?;
                    "busy"
                }
                Benchmark::Routes => {
                    build_daemon()?;
                    "routes"
                }
            };
            run_bench(name, &args)
        }
        Cmd::Soak { minutes, seed } => {
            setup::lab()?;
            build_daemon()?;
            let mut args = vec!["--minutes".to_string(), minutes.to_string()];
            if let Some(seed) = seed {
                args.extend(["--seed".to_string(), seed.to_string()]);
            }
            run_bench("soak", &args)
        }
        Cmd::Package => {
            setup::packaging()?;
            package::run().map(drop)
        }
    }
}

/// Builds mpathd and mpathctl in release mode: the benchmarks that run the daemon find it
/// next to themselves.
fn build_daemon() -> anyhow::Result<()> {
    exec(Command::new(env!("CARGO")).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "mpath-ctl",
        "--bins",
    ]))
}

/// Runs `mpath-bench NAME ARGS` (release build), writing into BENCHMARKS.md.
fn run_bench(name: &str, args: &[String]) -> anyhow::Result<()> {
    exec(
        Command::new(env!("CARGO"))
            .args(["run", "--release", "--quiet", "-p", "mpath-bench", "--"])
            .arg(name)
            .args(["--out", "BENCHMARKS.md"])
            .args(args),
    )
}

/// Runs a command, inheriting stdio; fails naming the command when it fails.
fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its standard output; fails naming the command when it fails.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
