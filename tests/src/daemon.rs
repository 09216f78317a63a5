//! A real mpathd running in a lab: started through `Netns::daemon_command` (the lab's
//! network, the host's bpffs) with a private /run (what it leaves there stays off the host),
//! with its own config, socket and pin directory, stopped and torn down on drop.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use mpath_ctl::{
    api::control::{self, Reply, Request},
    api::views::Status,
    core::state::InterfaceStatus,
};
use mpath_lab::Netns;
pub use mpath_lab::{ipv6_only_config, three_nic_config, two_nic_config};

use crate::PinDir;

/// The state mpathd shows for `nic`, `None` when it shows no such NIC.
pub fn state_of(status: &Status, nic: &str) -> Option<InterfaceStatus> {
    status
        .interfaces
        .iter()
        .find(|i| i.interface == nic)
        .map(|i| i.state)
}

/// The NIC data address `address` (with its prefix length) is on, as mpathd shows it.
pub fn inbound<'a>(status: &'a Status, address: &str) -> Option<&'a str> {
    status
        .addresses
        .iter()
        .find(|a| a.address == address)
        .and_then(|a| a.inbound.as_deref())
}

/// Whether mpathd shows every NIC of [`three_nic_config`]'s group (h0, h1, h2) ok.
pub fn all_ok(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        ["h0", "h1", "h2"]
            .iter()
            .all(|n| state_of(&s, n) == Some(InterfaceStatus::Ok))
    })
}

/// Whether mpathd shows h1 failed and its data address 192.0.2.20 on h2: [`three_nic_config`]'s
/// failover of h1, the end of most "cut h1" steps.
pub fn h1_failed_over(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        state_of(&s, "h1") == Some(InterfaceStatus::Failed)
            && inbound(&s, "192.0.2.20/24") == Some("h2")
    })
}

/// Whether mpathd shows h1 ok with 192.0.2.20 back on it: the failback after [`h1_failed_over`].
pub fn h1_failed_back(d: &Mpathd) -> bool {
    d.try_status().is_some_and(|s| {
        state_of(&s, "h1") == Some(InterfaceStatus::Ok)
            && inbound(&s, "192.0.2.20/24") == Some("h1")
    })
}

/// The data addresses of [`three_nic_config`] that are missing from their NICs, given the
/// addresses of h0 and h1 (as `Lab::host_addrs` lists them).
pub fn data_addresses_missing(h0: &[String], h1: &[String]) -> Vec<&'static str> {
    [
        (h0, "192.0.2.19/24"),
        (h0, "2001:db8::19/64"),
        (h1, "192.0.2.20/24"),
    ]
    .into_iter()
    .filter(|(on, address)| !on.iter().any(|a| a == address))
    .map(|(_, address)| address)
    .collect()
}

/// mpathd and mpathctl as built for this run, in the same profile as the running program.
pub fn binary(name: &str) -> PathBuf {
    // Integration tests live in target/<profile>/deps, the binaries one level up; a benchmark
    // binary lives in target/<profile> itself, next to them.
    let exe = std::env::current_exe().expect("executable path");
    let profile_dir = exe.parent().expect("executable directory");
    let dir = if profile_dir.file_name().is_some_and(|d| d == "deps") {
        profile_dir.parent().expect("target directory")
    } else {
        profile_dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests through `cargo xtask test` (it builds the binaries)",
        path.display()
    );
    path
}

pub struct Mpathd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pins: PinDir,
    log: PathBuf,
    /// Shell commands run in mpathd's mount namespace before it starts.
    setup: String,
}

impl Mpathd {
    /// Starts mpathd in `ns` with `config` (a TOML text in which `SOCKET` and `PINS` are
    /// replaced by this daemon's paths) and waits until it answers on its socket.
    pub fn start(ns: &Netns, config: &str) -> Mpathd {
        Self::start_with_env(ns, config, &[])
    }

    /// Like [`Mpathd::start`], then waits until every NIC of the lab group is ok ([`all_ok`]):
    /// the start of most scenarios.
    pub fn start_all_ok(ns: &Netns, config: &str) -> Mpathd {
        let mut daemon = Self::start(ns, config);
        daemon.wait_until("all NICs ok", all_ok);
        daemon
    }

    /// Like [`Mpathd::start`], with extra environment variables for mpathd.
    pub fn start_with_env(ns: &Netns, config: &str, env: &[(&str, &str)]) -> Mpathd {
        Self::start_with_setup(ns, config, env, "")
    }

    /// Like [`Mpathd::start_with_env`], but returns as soon as the process runs, without waiting for
    /// its socket: for a caller that times the start itself, or that must not panic when the
    /// start takes longer than the usual limit.
    pub fn launch(ns: &Netns, config: &str, env: &[(&str, &str)]) -> Mpathd {
        let mut daemon = Self::prepare(config, "");
        daemon.launch_with(ns, env, &[]);
        daemon
    }

    /// Like [`Mpathd::start_with_env`], running the shell commands `setup` (each ending in
    /// `;` or `&&`) in mpathd's mount namespace first, here and at every respawn.
    pub fn start_with_setup(ns: &Netns, config: &str, env: &[(&str, &str)], setup: &str) -> Mpathd {
        let mut daemon = Self::prepare(config, setup);
        daemon.spawn_with_env(ns, env);
        daemon
    }

    /// The directory, configuration and pin directory of a daemon not started yet.
    fn prepare(config: &str, setup: &str) -> Mpathd {
        let pins = PinDir::new();
        let dir = std::env::temp_dir().join(format!(
            "mpathd-test-{}",
            pins.path().file_name().unwrap().to_string_lossy()
        ));
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("mpathd.sock");
        let config_path = dir.join("mpathd.toml");
        let text = config
            .replace("SOCKET", &socket.display().to_string())
            .replace("PINS", &pins.path().display().to_string());
        fs::write(&config_path, text).unwrap();
        let log = dir.join("mpathd.log");
        Mpathd {
            child: None,
            dir,
            config: config_path,
            socket,
            pins,
            log,
            setup: setup.to_string(),
        }
    }

    /// (Re)starts the process on the same configuration and pins.
    pub fn spawn(&mut self, ns: &Netns) {
        self.spawn_with_env(ns, &[]);
    }

    /// Like [`Mpathd::spawn`], with extra environment variables for mpathd.
    pub fn spawn_with_env(&mut self, ns: &Netns, env: &[(&str, &str)]) {
        self.spawn_with(ns, env, &[]);
    }

    /// Like [`Mpathd::spawn`], with extra environment variables and arguments for mpathd.
    pub fn spawn_with(&mut self, ns: &Netns, env: &[(&str, &str)], args: &[&str]) {
        self.launch_with(ns, env, args);
        self.wait_until("mpathd answers on its socket", |d| d.try_status().is_some());
    }

    /// Starts the process without waiting for it to answer.
    fn launch_with(&mut self, ns: &Netns, env: &[(&str, &str)], args: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let script = format!("mount -t tmpfs tmpfs /run && {} exec \"$@\"", self.setup);
        let child = ns
            .daemon_command("sh")
            .unwrap()
            .args(["-c", &script, "sh"])
            .arg(binary("mpathd"))
            .arg("--config")
            .arg(&self.config)
            .args(["--defaults", "/nonexistent"])
            .args(args)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mpathd");
        self.child = Some(child);
    }

    /// Rewrites the configuration (same `SOCKET`/`PINS` substitution as `start`) and sends
    /// SIGHUP.
    pub fn reload(&self, config: &str) {
        let text = config
            .replace("SOCKET", &self.socket.display().to_string())
            .replace("PINS", &self.pins.path().display().to_string());
        fs::write(&self.config, text).unwrap();
        let pid = self.child.as_ref().expect("mpathd running").id();
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    }

    /// Runs `mpathd --teardown` on this daemon's configuration in `ns` (stop the daemon first).
    pub fn teardown(&self, ns: &Netns) -> std::process::Output {
        ns.daemon_command(binary("mpathd"))
            .unwrap()
            .arg("--config")
            .arg(&self.config)
            .arg("--teardown")
            .output()
            .unwrap()
    }

    /// Stops the process with SIGTERM, as systemd does, and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _: Result<_, _> = c.wait();
        }
    }

    /// Kills the process with SIGKILL (no clean-up of its own), leaving pins and socket.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _: Result<_, _> = c.kill();
            let _: Result<_, _> = c.wait();
        }
    }

    /// The daemon's process id while it runs (the lab's wrapper execs into mpathd), e.g. to
    /// read its CPU time from /proc.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_status(&self) -> Option<Status> {
        match control::request(&self.socket, &Request::Status {}) {
            Ok(Reply::Status(s)) => Some(s),
            _ => None,
        }
    }

    pub fn status(&self) -> Status {
        self.try_status()
            .unwrap_or_else(|| panic!("mpathd gave no status; its log:\n{}", self.log()))
    }

    pub fn request(&self, request: Request) -> Reply {
        control::request(&self.socket, &request).expect("control request")
    }

    /// mpathctl in `ns` (with the host's bpffs, for `maps`) against this daemon.
    pub fn ctl_command(&self, ns: &Netns, args: &[&str]) -> Command {
        let mut cmd: Command = ns
            .daemon_command(binary("mpathctl"))
            .expect("mpathctl command");
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// Runs mpathctl with `args` alone (no `--config`) in mpathd's own namespaces: its
    /// private /run included.
    pub fn ctl_beside(&self, args: &[&str]) -> Output {
        let pid = self.pid().expect("mpathd running");
        Command::new("nsenter")
            .arg(format!("--target={pid}"))
            .args(["--mount", "--net"])
            .arg(binary("mpathctl"))
            .args(args)
            .output()
            .expect("run mpathctl")
    }

    /// Runs mpathctl in `ns` against this daemon.
    pub fn ctl(&self, ns: &Netns, args: &[&str]) -> Output {
        self.ctl_command(ns, args).output().expect("run mpathctl")
    }

    /// Polls until `ready` holds, for at most 20 s (scaled for slow guests); panics with the
    /// daemon's log otherwise.
    pub fn wait_until(&mut self, what: &str, ready: impl Fn(&Mpathd) -> bool) {
        let deadline = Instant::now() + mpath_lab::scaled(Duration::from_secs(20));
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "mpathd exited ({status}) waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            if ready(self) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; mpathd log:\n{}", self.log());
    }
}

impl Drop for Mpathd {
    fn drop(&mut self) {
        self.stop();
        let _: Result<_, _> = fs::remove_dir_all(&self.dir);
    }
}

/// The timestamp tracing puts first on a line (`2026-11-23T11:40:01.123456Z`, UTC) in ns
/// since the epoch.
pub fn log_time_ns(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    if fraction.is_empty() || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = format!("{fraction:0<9}").parse().ok()?;
    let seconds = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(seconds * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_are_read_as_utc_nanoseconds() {
        // date -u -d 2026-11-23T11:40:01Z +%s
        assert_eq!(
            log_time_ns("2026-11-23T11:40:01.123456Z  WARN NIC failure detected on h0 of group g0"),
            Some(1_795_434_001_123_456_000)
        );
        assert_eq!(
            log_time_ns("1970-01-01T00:00:00.000001Z INFO x"),
            Some(1_000)
        );
        assert_eq!(
            log_time_ns("2000-03-01T00:00:00Z x"),
            Some(951_868_800_000_000_000)
        );
        assert_eq!(log_time_ns("mpathd: something"), None);
        assert_eq!(log_time_ns("2026-11-23T11:40:01.12x456Z x"), None);
    }
}
