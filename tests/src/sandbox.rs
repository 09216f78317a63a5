//! A network manager's surroundings without systemd as PID 1: the lab's network namespace
//! and a private mount namespace with its own /run (a directory of the test's, so it persists
//! across the manager's restarts as /run does on a host), a system D-Bus there for the
//! manager's command-line tool, the test's files bound over the system's, and a read-only
//! /sys, which tells the managers that no udev will initialise the links. The D-Bus daemon
//! stops and the directory goes on drop.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use mpath_lab::Netns;

pub struct Sandbox {
    dir: PathBuf,
    /// The sandbox's first process (the D-Bus daemon): commands enter its namespaces.
    bus: Option<Child>,
}

impl Sandbox {
    /// An empty sandbox directory named after `name`; write the files to bind with
    /// [`Sandbox::write`], then [`Sandbox::enter`].
    pub fn new(name: &str) -> Sandbox {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mpath-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _: Result<_, _> = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("run")).unwrap();
        Sandbox { dir, bus: None }
    }

    /// `path` under the sandbox directory.
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    /// Writes (or replaces) the file `path` under the sandbox directory.
    pub fn write(&self, path: &str, text: &str) {
        let path = self.path(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// Enters `ns` with a private mount namespace: the sandbox's /run, each of `binds`
    /// (a file or directory under the sandbox directory, made as a directory when missing;
    /// the system path it covers), the shell commands `setup`, then the system D-Bus.
    pub fn enter(&mut self, ns: &Netns, binds: &[(&str, &str)], setup: &str) {
        let mut script = format!(
            "set -e\nmount --bind {}/run /run\nmount -t sysfs -o ro none /sys\n",
            self.dir.display()
        );
        for (source, target) in binds {
            let source = self.path(source);
            if !source.exists() {
                fs::create_dir_all(&source).unwrap();
            }
            script += &format!("mount --bind {} {target}\n", source.display());
        }
        script += setup;
        script += "\nmkdir -p /run/dbus\nexec dbus-daemon --system --nofork --nopidfile";
        // The mounts' errors and D-Bus's messages (services it starts) go to a file.
        let log = self.path("sandbox.log");
        let (stdout, stderr) = log_file(&log);
        let bus = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &script])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start the sandbox (nsenter, unshare: package util-linux)");
        self.bus = Some(bus);
        let socket = self.path("run/dbus/system_bus_socket");
        self.wait_until(
            "the sandbox's D-Bus",
            || fs::read_to_string(&log).unwrap_or_default(),
            || socket.exists(),
        );
    }

    /// A command run inside the sandbox (its mounts and network).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let bus = self.bus.as_ref().expect("the sandbox was entered");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", bus.id()))
            .args(["--mount", "--net"])
            .arg(program);
        cmd
    }

    /// Polls `done` for at most 20 s (scaled for slow guests); panics naming `what`, with
    /// `log`, otherwise.
    pub fn wait_until(&self, what: &str, log: impl Fn() -> String, done: impl Fn() -> bool) {
        let deadline = Instant::now() + mpath_lab::scaled(Duration::from_secs(20));
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                log()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut bus) = self.bus.take() {
            let _: Result<_, _> = bus.kill();
            let _: Result<_, _> = bus.wait();
        }
        let _: Result<_, _> = fs::remove_dir_all(&self.dir);
    }
}

/// Stops a daemon with SIGTERM, as systemd does, and waits for it.
pub fn terminate(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _: Result<_, _> = child.wait();
}

/// Appends to `path`, for a daemon's stdout and stderr.
pub fn log_file(path: &Path) -> (Stdio, Stdio) {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    (Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
}
