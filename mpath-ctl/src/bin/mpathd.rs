//! mpathd: the IP multipathing daemon.
//!
//! Exit codes: 0 after SIGTERM/SIGINT, 1 on a runtime failure, 2 on a bad configuration or
//! command line (nothing on the host is changed then).

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use mpath_ctl::{
    config::{self, Config},
    daemon::{ConfigPaths, Daemon, remove_routes},
    datapath, logging,
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
    /// delete mpathd's routing rules, routes and nexthops) and exit. Run it with mpathd
    /// stopped, when taking mpath off a host; the data addresses stay where they are.
    #[arg(long, conflicts_with = "check")]
    teardown: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init();
    let config = match Config::load(&args.config, Some(&args.defaults)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpathd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
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
    if args.teardown {
        // Both halves are tried whatever the other's fate, and every error is reported.
        let datapath = datapath::teardown(&config.daemon.bpf_pin_dir).map_err(anyhow::Error::from);
        let routes = runtime.block_on(remove_routes(config.daemon.route_table));
        let mut code = ExitCode::SUCCESS;
        for e in [datapath, routes].into_iter().filter_map(Result::err) {
            eprintln!("mpathd: {e:#}");
            code = ExitCode::FAILURE;
        }
        return code;
    }
    let paths = ConfigPaths {
        config: args.config,
        defaults: args.defaults,
    };
    match runtime.block_on(async { Daemon::start(config, paths).await?.run().await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
