//! The demo: mpathd keeps a lab host reachable while one of its NICs fails and comes back.
//!
//! A lab of network namespaces (host with NICs h0, h1 active and h2 standby, a switch, a
//! router with the probe target) runs mpathd; the router pings the host's data addresses
//! throughout, the host sends flows out. h0's cable is cut, then plugged back; mpathctl's
//! views are shown before, during and after. Everything is removed at the end, also when a
//! step fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mpath_lab::{Lab, three_nic_config};

use crate::exec;

/// The running demo; dropping it stops mpathd and removes its datapath and files.
struct Demo {
    lab: Lab,
    dir: PathBuf,
    pins: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    daemon: Option<Child>,
    pings: Vec<Child>,
}

pub(crate) fn run() -> anyhow::Result<()> {
    println!("== building mpathd and mpathctl");
    exec(Command::new(env!("CARGO")).args(["build", "--quiet", "-p", "mpath-ctl", "--bins"]))?;
    let bin = workspace_root().join("target/debug");

    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("mpath-demo-{pid}"));
    let pins = PathBuf::from(format!("/sys/fs/bpf/mpath-demo-{pid}"));
    fs::create_dir_all(&dir)?;
    let config = dir.join("mpathd.toml");
    // The lab group the tests run, at in.mpathd's FDT of 10 s divided by ten.
    let text = three_nic_config(1000)
        .replace("SOCKET", &dir.join("mpathd.sock").display().to_string())
        .replace("PINS", &pins.display().to_string());
    fs::write(&config, text)?;

    println!("== building the lab: host (h0 h1 active, h2 standby) -- switch -- router 192.0.2.1");
    let lab = Lab::builder().nics(3).build()?;
    let mut demo = Demo {
        lab,
        dir,
        pins,
        config,
        bin,
        daemon: None,
        pings: Vec::new(),
    };
    demo.start_daemon()?;
    demo.wait_for(|d| d.interfaces_ok(&["h0", "h1", "h2"]), "all NICs ok")?;
    demo.start_traffic()?;
    demo.show("mpathd running: h0 and h1 carry traffic, h2 is a standby")?;

    println!("\n== cutting h0's cable");
    demo.lab.cut("h0")?;
    sleep(Duration::from_millis(500));
    demo.show("h0 failed: its addresses moved to the standby h2, which is now active")?;

    println!("\n== plugging h0 back in");
    demo.lab.restore("h0")?;
    demo.wait_for(|d| d.interfaces_ok(&["h0"]), "h0 repaired")?;
    sleep(Duration::from_millis(500));
    demo.show("h0 repaired: its addresses failed back, h2 is a standby again")?;

    println!("\n== offlining h1 (mpathctl offline h1), then bringing it back");
    demo.ctl(&["offline", "h1"])?;
    demo.show_one("addresses")?;
    demo.ctl(&["online", "h1"])?;
    demo.show_one("interfaces")?;

    demo.finish_traffic()?;
    println!("\n== done; removing the lab");
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

impl Demo {
    fn start_daemon(&mut self) -> anyhow::Result<()> {
        println!("== starting mpathd in the host namespace");
        let child = self
            .lab
            .host()
            .daemon_command(self.bin.join("mpathd"))?
            .arg("--config")
            .arg(&self.config)
            .args(["--defaults", "/nonexistent"])
            .spawn()
            .context("starting mpathd")?;
        self.daemon = Some(child);
        Ok(())
    }

    /// mpathctl in the host namespace, seeing the host's bpffs (for `maps`).
    fn ctl_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = self.lab.host().daemon_command(self.bin.join("mpathctl"))?;
        cmd.arg("--config").arg(&self.config).args(args);
        Ok(cmd)
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ctl_command(args)?.output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "mpathctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        print!("{text}");
        Ok(text)
    }

    fn interfaces_ok(&self, nics: &[&str]) -> bool {
        let out = self
            .ctl_command(&["interfaces", "-o", "interface,state"])
            .and_then(|mut c| Ok(c.output()?));
        let Ok(out) = out else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        nics.iter().all(|nic| {
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [*nic, "ok"])
        })
    }

    fn wait_for(&mut self, ready: impl Fn(&Demo) -> bool, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                bail!("mpathd exited: {status}");
            }
            if ready(self) {
                return Ok(());
            }
            sleep(Duration::from_millis(200));
        }
        bail!("timed out waiting for: {what}")
    }

    fn start_traffic(&mut self) -> anyhow::Result<()> {
        println!("== the router pings the data addresses 192.0.2.19 and 192.0.2.20 every 20 ms");
        for addr in ["192.0.2.19", "192.0.2.20"] {
            let child = self
                .lab
                .router()
                .cmd("ping")
                .args(["-q", "-i", "0.02", addr])
                .stdout(Stdio::piped())
                .spawn()?;
            self.pings.push(child);
        }
        Ok(())
    }

    fn finish_traffic(&mut self) -> anyhow::Result<()> {
        println!("\n== traffic to the data addresses during all of this:");
        for ping in self.pings.drain(..) {
            // SAFETY: sending SIGINT to our own child makes ping print its summary.
            unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
            let out = ping.wait_with_output()?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.contains("packets transmitted") || line.contains("statistics") {
                    println!("   {line}");
                }
            }
        }
        Ok(())
    }

    fn show_one(&self, view: &str) -> anyhow::Result<()> {
        println!("\n$ mpathctl {view}");
        self.ctl(&[view]).map(drop)
    }

    fn show(&self, title: &str) -> anyhow::Result<()> {
        println!("\n== {title}");
        for view in ["groups", "interfaces", "addresses", "targets", "maps"] {
            self.show_one(view)?;
        }
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for mut ping in self.pings.drain(..) {
            let _: Result<_, _> = ping.kill();
            let _: Result<_, _> = ping.wait();
        }
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let _: Result<_, _> = daemon.wait();
        }
        let teardown = Command::new(self.bin.join("mpathd"))
            .arg("--config")
            .arg(&self.config)
            .arg("--teardown")
            .status();
        if !matches!(teardown, Ok(s) if s.success()) || self.pins.exists() {
            eprintln!("demo: could not remove {}", self.pins.display());
        }
        let _: Result<_, _> = fs::remove_dir_all(&self.dir);
    }
}
