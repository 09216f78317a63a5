//! mpathd: the IP multipathing daemon.
//!
//! Exit codes: 0 after SIGTERM/SIGINT, 1 on a runtime failure, 2 on a bad configuration or
//! command line (nothing on the host is changed then).

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser};
use mpath_ctl::{
    api::manpages,
    config::{self, Config},
    daemon::{
        ConfigPaths, Mpathd, check_against_host, logging, remove_routes, remove_test_addresses,
    },
    datapath,
    net::netlink::Monitor,
};

#[derive(Parser)]
#[command(
    name = "mpathd",
    version,
    about = "IP multipathing daemon: failure detection, failover and load spreading"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Solaris-style defaults (FAILURE_DETECTION_TIME=..., FAILBACK=..., ...), read when
    /// present; the TOML file wins where both set a value.
    #[arg(long, default_value = config::DEFAULT_DEFAULTS_PATH)]
    defaults: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Remove mpath from this host (detach the programs from every NIC, unpin the maps,
    /// delete mpathd's routing rules, routes, nexthops and test addresses) and exit, when
    /// taking mpath off a host; the data addresses stay where they are. Refused while mpathd
    /// runs.
    #[arg(long, conflicts_with = "check")]
    teardown: bool,
    /// Receive buffer of the netlink event socket, in bytes. The default holds thousands of
    /// events; the tests make it tiny so that the kernel drops events and mpathd resyncs.
    #[arg(long, hide = true, value_name = "BYTES", default_value_t = Monitor::DEFAULT_RECEIVE_BUFFER)]
    netlink_receive_buffer: usize,
    /// Write the manual page mpathd.8 into DIR and exit (for packaging).
    #[arg(long, hide = true, value_name = "DIR", exclusive = true)]
    write_man: Option<PathBuf>,
}

/// The parts of mpathd(8) that clap does not know.
const MAN_EXTRA: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Read the configuration files again and apply the difference; a bad file is refused and the
running configuration kept. \fBmpathctl reload\fR asks the same over the control socket and
reports the result (\fBsystemctl reload mpathd\fR runs it, and fails on a refused file).
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop, leaving the datapath and the addresses in place for the next mpathd.
.SH EXIT STATUS
0 after SIGTERM or SIGINT, 1 on a runtime failure, 2 on a bad configuration or command line
(nothing on the host is changed then). \fB--teardown\fR goes on past each part it cannot
remove, prints every failure and exits with 1 when there was one.
.SH FILES
.TP
\fI/etc/mpath/mpathd.toml\fR
The configuration, see \fBmpathd.toml\fR(5).
.TP
\fI/etc/default/mpathd\fR
Solaris-style defaults (FAILURE_DETECTION_TIME=, FAILBACK=, TRACK_INTERFACES_ONLY_WITH_GROUPS=).
.TP
\fI/run/mpath/mpathd.sock\fR
The control socket that \fBmpathctl\fR(1) uses.
.TP
\fI/sys/fs/bpf/mpath\fR
The pinned eBPF programs and maps.
.SH SEE ALSO
\fBmpathctl\fR(1), \fBmpathd.toml\fR(5), /usr/share/doc/mpath/README.md
"#;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.write_man {
        return match manpages::write(
            Args::command(),
            manpages::Section::SystemAdministration,
            MAN_EXTRA,
            dir,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "mpathd: writing the manual page into {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    logging::init();
    let config = match Config::load(&args.config, Some(&args.defaults)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpathd: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mpathd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What the file alone cannot show (an address already on a NIC outside the groups, a
    // NIC name with a typo), before anything on the host changes.
    if !args.teardown {
        match runtime.block_on(check_against_host(&config, &[])) {
            Ok(check) => {
                for warning in &check.warnings {
                    tracing::warn!("{warning}");
                }
                if !check.refusals.is_empty() {
                    for refusal in &check.refusals {
                        eprintln!("mpathd: {}: {refusal}", args.config.display());
                    }
                    return ExitCode::from(2);
                }
            }
            Err(e) => tracing::warn!(
                "cannot look at this host's NICs and addresses ({}); the file alone was checked",
                logging::with_causes(e.as_ref())
            ),
        }
    }
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    if args.teardown {
        // Nothing is touched while an mpathd runs on this pin directory, and none starts
        // before the end. Each part is tried whatever the others' fate, and every error is
        // reported; the pins go last, with the directory the lock is on.
        let lock = match datapath::TeardownLock::acquire(&config.daemon.bpf_pin_dir) {
            Ok(lock) => lock,
            Err(e) => {
                eprintln!("mpathd: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut failures = Vec::new();
        if let Err(e) = runtime.block_on(remove_routes(config.daemon.route_table)) {
            failures.extend(e);
        }
        if let Err(e) = runtime.block_on(remove_test_addresses(&config)) {
            failures.extend(e);
        }
        if let Err(e) = datapath::teardown(&config.daemon.bpf_pin_dir) {
            failures.extend(e.into_iter().map(anyhow::Error::from));
        }
        drop(lock);
        if failures.is_empty() {
            return ExitCode::SUCCESS;
        }
        for e in &failures {
            eprintln!("mpathd: {}", logging::with_causes(e.as_ref()));
        }
        eprintln!(
            "mpathd: teardown incomplete: {} step(s) failed, listed above; the rest was removed",
            failures.len()
        );
        return ExitCode::FAILURE;
    }
    let paths = ConfigPaths {
        config: args.config,
        defaults: args.defaults,
    };
    match runtime.block_on(async {
        Mpathd::start(config, paths, args.netlink_receive_buffer)
            .await?
            .run()
            .await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", logging::with_causes(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
