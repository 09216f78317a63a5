//! One named network namespace (`/run/netns/NAME`) owned by a lab: created by `ip netns add`,
//! deleted on drop together with every process still running inside it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::ensure_bpffs;

const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted on drop (also while a panic unwinds).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up. Name it `mpl-PID-...` after the
    /// creating process, as labs do, so that a run's leftovers are told from the namespaces
    /// of processes still running ([`crate::orphaned_namespaces`]).
    ///
    /// iproute2 (>= 5.2, checked on 6.1 with 64 simultaneous adds) takes a `flock` on
    /// `/run/netns` while it turns that directory into a shared mount point, so parallel
    /// creation needs no lock of ours.
    pub fn create(name: String) -> Result<Netns> {
        let path = netns_path(&name);
        if path.exists() {
            // Names carry our pid and a per-process counter, so an existing one was left by a
            // killed process whose pid we reuse: it is nobody's.
            remove_namespace(&name).with_context(|| {
                format!("removing stale namespace {name} left by a dead process")
            })?;
        }
        run_output(Command::new("ip").args(["netns", "add", &name]), None)?;
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns`, `nsenter --net=` or aya's netns options.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// `ip netns exec NAME PROGRAM`: the program sees this namespace's network and its `/sys`.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args` (program first) inside the namespace and returns its stdout; a non-zero
    /// exit is an error carrying the command line and what it printed.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .context("Netns::run needs at least a program name")?;
        run_output(self.cmd(program).args(rest), None)
    }

    /// Like [`Netns::run`], feeding `input` on stdin (e.g. an `nft -f -` ruleset).
    pub(crate) fn run_with_input(&self, args: &[&str], input: &str) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .context("Netns::run_with_input needs at least a program name")?;
        run_output(self.cmd(program).args(rest), Some(input))
    }

    /// `ip -n NAME ARGS...`: cheaper than [`Netns::run`] for iproute2 commands because
    /// `ip` switches namespace itself instead of remounting `/sys`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_output(Command::new("ip").args(["-n", &self.name]).args(args), None)
    }

    /// A command that runs `program` like a daemon on a real host would: in this network
    /// namespace, with its own `/sys`, but with the host's bpffs at `/sys/fs/bpf`, so pins
    /// outlive the process (`ip netns exec` would give it a fresh `/sys` without bpffs).
    /// Mounts the host's bpffs first when missing. Append the program's arguments with
    /// [`Command::arg`].
    pub fn daemon_command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        ensure_bpffs()?;
        // Temporary directories hold the host's bpffs and cgroup2 hierarchy while /sys is
        // replaced; they are unmounted and removed before the program starts, or on any
        // failure. The cgroup2 hierarchy comes back at /sys/fs/cgroup, where a host without
        // the hybrid layout has it.
        let script = format!(
            r#"set -e
x=$(mktemp -d /tmp/{name}-bpffs.XXXXXX)
y=$(mktemp -d /tmp/{name}-cgroup.XXXXXX)
trap 'umount "$x" "$y" 2>/dev/null; rmdir "$x" "$y"' EXIT
cg=$(awk '{{for (i = 7; i < NF; i++) if ($i == "-") {{ if ($(i + 1) == "cgroup2") print $5; break }}}}' /proc/self/mountinfo | head -n 1)
mount --bind /sys/fs/bpf "$x"
if [ -n "$cg" ]; then mount --bind "$cg" "$y"; fi
mount -t sysfs none /sys
mount --bind "$x" /sys/fs/bpf
if [ -n "$cg" ]; then mount --bind "$y" /sys/fs/cgroup; umount "$y"; fi
umount "$x"
rmdir "$x" "$y"
trap - EXIT
exec "$@""#,
            name = self.name
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &script, "sh"])
            .arg(program);
        Ok(cmd)
    }

    /// Moves the calling thread into this namespace until the guard drops, so in-process
    /// code (BPF loaders, sockets, `/proc/sys/net`) works inside the lab. `/sys` is not
    /// switched: it still shows the namespace this process mounted it in. Threads spawned
    /// while inside start in the lab namespace too (they inherit the spawner's).
    pub fn enter(&self) -> Result<NetnsGuard<'_>> {
        let original = File::open("/proc/thread-self/ns/net")
            .context("opening this thread's network namespace")?;
        let target = File::open(self.path())
            .with_context(|| format!("opening namespace file {}", self.path().display()))?;
        setns(&target).with_context(|| format!("entering namespace {}", self.name))?;
        Ok(NetnsGuard {
            original,
            _netns: PhantomData,
            _this_thread_only: PhantomData,
        })
    }

    /// The interface index of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let line = self.link_line(ifname)?;
        line.split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .with_context(|| format!("no ifindex in `ip link` output for {ifname}: {line}"))
    }

    /// Whether `ifname` has carrier (LOWER_UP), as the daemon sees it through netlink.
    pub fn has_carrier(&self, ifname: &str) -> Result<bool> {
        let line = self.link_line(ifname)?;
        let flags = link_flags(&line)
            .with_context(|| format!("no link flags in `ip link` output for {ifname}: {line}"))?;
        Ok(flags.contains(&"LOWER_UP"))
    }

    /// The operational state of `ifname` (`UP`, `LOWERLAYERDOWN`, `DOWN`, ...), which the
    /// kernel updates asynchronously after a carrier change.
    pub fn operstate(&self, ifname: &str) -> Result<String> {
        let line = self.link_line(ifname)?;
        word_after(&line, "state")
            .map(str::to_string)
            .with_context(|| format!("no state in `ip link` output for {ifname}: {line}"))
    }

    /// The one-line `ip -o link show dev IFNAME` description.
    pub(crate) fn link_line(&self, ifname: &str) -> Result<String> {
        self.ip(&["-o", "link", "show", "dev", ifname])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = remove_namespace(&self.name) {
            eprintln!(
                "mpath-lab: could not delete namespace {}: {error:#}",
                self.name
            );
        }
    }
}

/// Keeps the current thread inside a lab namespace; dropping it returns the thread to the
/// namespace it was in. Not `Send`: the namespace belongs to the thread, not the value.
#[derive(Debug)]
pub struct NetnsGuard<'a> {
    original: File,
    _netns: PhantomData<&'a Netns>,
    _this_thread_only: PhantomData<*const ()>,
}

impl Drop for NetnsGuard<'_> {
    fn drop(&mut self) {
        if let Err(error) = setns(&self.original) {
            // A thread stuck in a lab namespace would silently run later tests in the wrong
            // network; stopping is the only safe outcome.
            eprintln!("mpath-lab: cannot return thread to its network namespace: {error}");
            std::process::abort();
        }
    }
}

fn setns(namespace: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a namespace file descriptor we keep open for the call.
    let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The flags of iproute2's link line (`<BROADCAST,MULTICAST,UP,LOWER_UP>`).
pub(crate) fn link_flags(line: &str) -> Option<Vec<&str>> {
    let (_, rest) = line.split_once('<')?;
    let (flags, _) = rest.split_once('>')?;
    Some(flags.split(',').collect())
}

/// The word following `key` in iproute2's one-line output (`... state UP ...`).
pub(crate) fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|word| *word == key)?;
    words.next()
}

pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Names of the namespaces under `/run/netns` (none when the directory does not exist).
pub(crate) fn namespace_names() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Kills what still runs inside (a daemon left by a failed test would keep the namespace and
/// its veths alive), then deletes the namespace.
pub(crate) fn remove_namespace(name: &str) -> Result<()> {
    let pids = run_output(Command::new("ip").args(["netns", "pids", name]), None)?;
    let own_pid = std::process::id();
    for pid in pids
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
    {
        if pid != own_pid {
            // SAFETY: sending a signal has no memory-safety preconditions. A process that
            // already exited (ESRCH) is fine.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    run_output(Command::new("ip").args(["netns", "del", name]), None)?;
    Ok(())
}

/// Runs `cmd` to completion and returns its stdout, or an error with the command line, the
/// exit status and what it printed.
pub(crate) fn run_output(cmd: &mut Command, input: Option<&str>) -> Result<String> {
    let line = command_line(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| {
        format!("cannot start `{line}` (are iproute2, nftables and util-linux installed?)")
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of `{line}`"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let printed = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        bail!("`{line}` failed ({}): {printed}", output.status);
    }
    Ok(stdout)
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
