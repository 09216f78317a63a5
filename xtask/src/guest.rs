//! `cargo xtask test --kernel VERSION|FILE.deb`: the privileged tests on another kernel, in a
//! qemu guest. The kernel is Debian's stock `linux-image-*-amd64-unsigned` (downloaded with
//! apt into `target/kernels`, where later runs find it); the guest boots a small busybox
//! initramfs that mounts this host's root read-only over 9p under a tmpfs overlay, with the
//! kernel's modules at `/lib/modules`, and runs the test binaries built here, each in its
//! package directory under a watchdog. Results come back through a shared output directory.
//! A second boot runs systemd as PID 1 instead, for the test of the shipped unit
//! ([`run_under_systemd`]).
//!
//! KVM is used only where a real `kvm_intel` or `kvm_amd` module is loaded; elsewhere qemu
//! emulates (TCG, one thread: multi-threaded TCG crashed guests here), about three times
//! slower than the host, so the tests' time limits are scaled by `MPATH_TIME_SCALE`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{capture, exec, virtio::VirtioNet};

/// The privileged test binaries of mpath-tests and, for the CI run, the tests of each that
/// cover what must hold on every kernel: loading and attaching the datapath, spreading,
/// probe matching and the answers to link-layer probes, failover, kill -9 survival, restart
/// adoption, group routes, the source hook and IPv6 probes under a group route. An empty
/// list runs the whole binary.
const CI_SUBSET: &[(&str, &[&str])] = &[
    ("datapath", &[]),
    ("spread", &[]),
    ("probe_rx", &[]),
    (
        "link_probes",
        &[
            "an_active_nic_answers_an_alternate_s_request_in_place_and_sends_it_back",
            "a_request_is_answered_only_by_an_answering_nic_of_the_alternate_s_group",
            "the_alternate_matches_the_answer_with_its_responder_and_a_kernel_time_stamp",
            "forged_or_misdirected_answers_are_refused_by_reason",
            "an_answer_crosses_the_switch_and_back_with_the_kernel_alone",
        ],
    ),
    ("legacy_tc", &[]),
    (
        "mpathd",
        &[
            "starts_with_addresses_at_home_and_spreads_over_the_active_nics",
            "carrier_loss_fails_over_to_the_standby_and_back",
            "silent_loss_is_caught_by_probes",
            "a_killed_mpathd_leaves_traffic_flowing_and_its_successor_adopts_the_state",
            "a_clean_restart_and_a_reload_lose_no_packet",
        ],
    ),
    (
        "routes",
        &[
            "off_link_traffic_survives_carrier_loss_of_the_nic_the_default_route_named",
            "routed_flows_spread_over_the_usable_nics_and_only_a_leaving_nic_s_buckets_move",
            "routes_outlive_a_killed_mpathd_follow_main_and_leave_with_teardown",
            "ipv6_connections_spread_their_sources_and_keep_them_through_a_failover",
            "ipv4_connections_to_the_group_s_subnet_spread_their_sources_and_keep_them_through_a_failover",
            "ipv6_probes_leave_through_their_own_nic_under_an_ipv6_default_group_route",
        ],
    ),
];

/// Test binaries that need nothing of the kernel under test (packaging, systemd on the
/// host): left out of the guest run.
const HOST_ONLY: &[&str] = &["dist", "service"];

/// The kernel CI tests in a guest besides the host's: Debian 12's, the oldest that many
/// servers run and the newest without tcx.
pub(crate) const CI_KERNEL: &str = "6.1";

/// How much slower than the host the guest runs the tests' timers: limits are multiplied.
const TCG_TIME_SCALE: u32 = 4;

/// Modules the initramfs loads to reach the shared root (with their dependencies).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// How a test that returns early for want of a kernel feature (`mpath_lab::kernel_has`) and
/// mpathd's refusals for one (mpath-ctl's datapath and nexthop errors) name it.
const MISSING_FEATURE: &str = "this kernel has no ";

/// How a test prints what it measured (the delays of the virtio tests), shown in the summary.
const MEASURED: &str = "mpath-test: measured ";

/// Which tests the guest runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// [`CI_SUBSET`].
    Ci,
    /// Every privileged test binary.
    All,
}

pub(crate) fn run(spec: &str, selection: Selection, filter: &[String]) -> anyhow::Result<()> {
    let guest = Guest::prepare(spec, "")?;
    let plan: Vec<(String, PathBuf, Vec<String>)> = test_binaries()?
        .into_iter()
        .filter(|(name, _)| {
            !HOST_ONLY.contains(&name.as_str()) && name != UNDER_SYSTEMD && name != VIRTIO
        })
        .filter_map(|(name, path)| {
            let args: Vec<String> = match selection {
                Selection::All => filter.to_vec(),
                Selection::Ci => {
                    let (_, tests) = CI_SUBSET.iter().find(|(n, _)| *n == name)?;
                    let mut args: Vec<String> = tests.iter().map(|t| t.to_string()).collect();
                    if !args.is_empty() {
                        args.push("--exact".into());
                    }
                    args.extend(filter.iter().cloned());
                    args
                }
            };
            Some((name, path, args))
        })
        .collect();
    // Per test binary: a few times what it takes under TCG (the whole mpathd binary about
    // 10 minutes, any CI subset of one binary about 1).
    let limit = match selection {
        Selection::Ci => 300,
        Selection::All => 1800,
    };
    let tests = tests_script(&guest.root, &plan, guest.scale, limit, "");
    guest.write_stage2(&plan, "", &tests)?;
    // Every binary at its limit, plus boot; the guest powers itself off when done.
    guest.boot_and_summarize(
        &plan,
        Duration::from_secs(120 + limit * plan.len() as u64),
        None,
    )
}

/// The test binary of the guest lab with virtio NICs, which runs alone in a guest of its
/// own ([`run_virtio`]).
const VIRTIO: &str = "virtio";

/// The guest lab with a real driver: the [`VIRTIO`] test binary in a guest whose NICs are
/// virtio_net devices (see [`crate::virtio`]).
pub(crate) fn run_virtio(spec: &str, filter: &[String]) -> anyhow::Result<()> {
    let guest = Guest::prepare(spec, "-virtio")?;
    let (name, path) = test_binaries()?
        .into_iter()
        .find(|(name, _)| name == VIRTIO)
        .with_context(|| format!("no test binary {VIRTIO}"))?;
    // Its tests are ignored outside that guest.
    let mut args = vec!["--ignored".to_string()];
    args.extend(filter.iter().cloned());
    let plan = vec![(name, path, args)];
    // About 5 minutes under TCG.
    let limit = 900;
    let tests = tests_script(
        &guest.root,
        &plan,
        guest.scale,
        limit,
        &VirtioNet::guest_env(),
    );
    // Without udev nothing loads the drivers of the NICs and of the QMP port.
    guest.write_stage2(
        &plan,
        "modprobe virtio_net\nmodprobe virtio_console\n",
        &tests,
    )?;
    let net = VirtioNet::create()?;
    guest.boot_and_summarize(&plan, Duration::from_secs(120 + limit), Some(&net))
}

/// Where the guest finds its output directory, shared with this host.
const GUEST_OUT: &str = "/mnt/guest-out";

/// `cargo xtask bench carrier --guest`: the carrier benchmark (release build, beside the
/// release mpathd it runs) in the guest with virtio NICs, where Debian's kernel loads the
/// carrier hook and linkwatch holds a real driver's carrier changes back. The guest cannot
/// write the workspace (its root is this host's, read-only under a tmpfs), so the benchmark
/// writes its section into a copy of BENCHMARKS.md in the output directory, which replaces
/// the workspace's once it succeeded.
pub(crate) fn run_carrier_bench(spec: &str, args: &[String]) -> anyhow::Result<()> {
    let bench = bench_binary()?;
    let guest = Guest::prepare(spec, "-bench")?;
    let benchmarks = guest.root.join("BENCHMARKS.md");
    let copy = guest.out.join("BENCHMARKS.md");
    fs::copy(&benchmarks, &copy).with_context(|| format!("copying {}", benchmarks.display()))?;
    let mut bench_args = vec!["carrier".to_string(), "--guest".to_string()];
    bench_args.extend(args.iter().cloned());
    bench_args.extend(["--out".to_string(), format!("{GUEST_OUT}/BENCHMARKS.md")]);
    let name = "bench-carrier".to_string();
    let plan = vec![(name.clone(), bench, bench_args)];
    // About 30 s a run under TCG, three runs a round; 5 rounds by default.
    let limit = 3600;
    let tests = tests_script(
        &guest.root,
        &plan,
        guest.scale,
        limit,
        &VirtioNet::guest_env(),
    );
    guest.write_stage2(
        &plan,
        "modprobe virtio_net\nmodprobe virtio_console\n",
        &tests,
    )?;
    let net = VirtioNet::create()?;
    let started = Instant::now();
    boot(
        &guest.kernel,
        &guest.initramfs,
        &guest.out,
        guest.kvm,
        Duration::from_secs(120 + limit),
        Some(&net),
    )?;
    let log_path = guest.out.join(format!("{name}.log"));
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    print!("{log}");
    let rc = fs::read_to_string(guest.out.join(format!("{name}.rc"))).unwrap_or_default();
    println!(
        "guest: {} ({}), the benchmark {} after {:.0} s; log in {}",
        guest.kernel.release,
        if guest.kvm { "KVM" } else { "TCG" },
        match rc.trim() {
            "0" => "succeeded".to_string(),
            "" => "never ran".to_string(),
            code => format!("failed (exit {code})"),
        },
        started.elapsed().as_secs_f64(),
        log_path.display()
    );
    if rc.trim() != "0" {
        bail!("the carrier benchmark failed in the guest");
    }
    fs::copy(&copy, &benchmarks).with_context(|| format!("writing {}", benchmarks.display()))?;
    println!("written to {}", benchmarks.display());
    Ok(())
}

/// mpath-bench in release mode, built if needed.
fn bench_binary() -> anyhow::Result<PathBuf> {
    let output = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "mpath-bench",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building mpath-bench")?;
    if !output.status.success() {
        bail!("building mpath-bench failed");
    }
    for line in BufReader::new(&output.stdout[..]).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "mpath-bench"
            && let Some(exe) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo built no mpath-bench executable")
}

/// The shipped unit under systemd as PID 1. The guest's first init readies the shared root
/// for systemd (no file systems from the host's fstab; masks on every unit sysinit.target
/// wants but journald and the /dev mounts that sandboxes bind, and on sockets, timers and
/// paths, which the test does not need: systemd boots in seconds), then becomes systemd. Its
/// default unit is a service that runs the [`UNDER_SYSTEMD`] test binary, which installs
/// mpathd and the unit and drives them with systemctl, and powers the guest off after it.
pub(crate) fn run_under_systemd(spec: &str) -> anyhow::Result<()> {
    let guest = Guest::prepare(spec, "-systemd")?;
    let (name, path) = test_binaries()?
        .into_iter()
        .find(|(name, _)| name == UNDER_SYSTEMD)
        .with_context(|| format!("no test binary {UNDER_SYSTEMD}"))?;
    // Its test is ignored where systemd is not PID 1.
    let plan = vec![(name, path, vec!["--ignored".to_string()])];
    // About 2.5 minutes under TCG (three restarts and a watchdog timeout among them).
    let limit = 600;
    let tests = tests_script(
        &guest.root,
        &plan,
        guest.scale,
        limit,
        "MPATH_UNDER_SYSTEMD=1",
    );
    fs::write(guest.out.join("tests.sh"), tests)?;
    let units = guest.out.join("units");
    fs::create_dir_all(&units)?;
    fs::write(units.join("mpath-guest.target"), GUEST_TARGET)?;
    fs::write(units.join("mpath-guest.service"), GUEST_SERVICE)?;
    fs::write(guest.out.join("stage2.sh"), SYSTEMD_STAGE2)?;
    guest.boot_and_summarize(&plan, Duration::from_secs(120 + limit), None)
}

/// The test binary that runs under systemd as PID 1 alone.
const UNDER_SYSTEMD: &str = "under_systemd";

/// The guest's first init before systemd: see [`run_under_systemd`].
const SYSTEMD_STAGE2: &str = r#"#!/bin/bash
# Written by `cargo xtask test`: readies the shared root for systemd, then becomes it.
units=/etc/systemd/system
: > /etc/fstab
# The host's container marker: systemd would take the guest for a container.
rm -f /.dockerenv
cp /mnt/guest-out/units/* $units/
for unit in /lib/systemd/system/sysinit.target.wants/* $units/sysinit.target.wants/*; do
    case ${unit##*/} in
    systemd-journald.service | dev-hugepages.mount | dev-mqueue.mount) ;;
    *) ln -sf /dev/null "$units/${unit##*/}" ;;
    esac
done
# tmp.mount (Debian 13's tmpfs on /tmp) would hide a checkout under the host's /tmp.
for unit in sockets.target timers.target paths.target systemd-udevd.service \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-remount-fs.service \
    tmp.mount; do
    ln -sf /dev/null "$units/$unit"
done
exec /lib/systemd/systemd --unit=mpath-guest.target
"#;

const GUEST_TARGET: &str = "[Unit]
Description=mpath's test of its unit
Wants=mpath-guest.service
AllowIsolate=yes
";

/// The test binary's log and exit code go to the output directory (tests.sh); the guest
/// powers off when it is done.
const GUEST_SERVICE: &str = "[Unit]
Description=mpath's test of its unit under systemd
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/guest-out/tests.sh
StandardOutput=journal+console
";

/// The mounts a host has, for the tests under a shell as init (/tmp aside: see
/// [`Guest::write_stage2`]).
const STAGE2_MOUNTS: &str = "#!/bin/bash
# Written by `cargo xtask test --kernel`: runs in the guest as its init.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up
";

/// A guest run's kernel, initramfs and output directory.
struct Guest {
    root: PathBuf,
    kernel: Kernel,
    initramfs: PathBuf,
    /// Shared with the guest, which writes its results there.
    out: PathBuf,
    kvm: bool,
    /// How much slower than the host the guest runs the tests' timers.
    scale: u32,
}

impl Guest {
    /// Fetches the kernel `spec` names, builds mpathd and mpathctl, and makes an empty
    /// output directory `target/guest-RELEASE{suffix}`.
    fn prepare(spec: &str, suffix: &str) -> anyhow::Result<Guest> {
        let root = workspace_root()?;
        let cache = root.join("target/kernels");
        fs::create_dir_all(&cache)?;
        let kernel = Kernel::fetch(spec, &cache)?;
        exec(Command::new(env!("CARGO")).args(["build", "-p", "mpath-ctl", "--bins"]))?;
        let out = root.join(format!("target/guest-{}{suffix}", kernel.release));
        let _: Result<_, _> = fs::remove_dir_all(&out);
        fs::create_dir_all(&out)?;
        let initramfs = kernel.initramfs(&cache)?;
        let kvm = ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
            .iter()
            .any(|m| Path::new(m).exists());
        let scale = if kvm { 1 } else { TCG_TIME_SCALE };
        Ok(Guest {
            root,
            kernel,
            initramfs,
            out,
            kvm,
            scale,
        })
    }

    /// Writes the guest's init for the tests under a shell: [`STAGE2_MOUNTS`], a /tmp of
    /// its own, `setup` (shell lines), the `tests` script, then power-off. Where the
    /// workspace or the plan's binaries lie under the host's /tmp (a checkout there), their
    /// directory of it is bound back into the guest's /tmp, which would hide them otherwise.
    fn write_stage2(
        &self,
        plan: &[(String, PathBuf, Vec<String>)],
        setup: &str,
        tests: &str,
    ) -> anyhow::Result<()> {
        let kept: BTreeSet<PathBuf> = std::iter::once(self.root.as_path())
            .chain(plan.iter().map(|(_, path, _)| path.as_path()))
            .filter_map(|path| {
                let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                let first = path.strip_prefix("/tmp").ok()?.components().next()?;
                Some(Path::new("/tmp").join(first))
            })
            .collect();
        let mut tmp = String::new();
        for (i, dir) in kept.iter().enumerate() {
            tmp.push_str(&format!(
                "mkdir -p /mnt/kept/{i} && mount --bind {dir} /mnt/kept/{i}\n",
                dir = shell_quote(&dir.to_string_lossy())
            ));
        }
        tmp.push_str("mount -t tmpfs tmpfs /tmp\n");
        for (i, dir) in kept.iter().enumerate() {
            tmp.push_str(&format!(
                "mkdir -p {dir} && mount --move /mnt/kept/{i} {dir}\n",
                dir = shell_quote(&dir.to_string_lossy())
            ));
        }
        fs::write(
            self.out.join("stage2.sh"),
            format!(
                "{STAGE2_MOUNTS}{tmp}{setup}{tests}sync\necho o > /proc/sysrq-trigger\nsleep 30\n"
            ),
        )?;
        Ok(())
    }

    /// Boots the guest (killed at `watchdog`), with `net`'s NICs if given, and prints what
    /// the plan's binaries did.
    fn boot_and_summarize(
        &self,
        plan: &[(String, PathBuf, Vec<String>)],
        watchdog: Duration,
        net: Option<&VirtioNet>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let status = boot(
            &self.kernel,
            &self.initramfs,
            &self.out,
            self.kvm,
            watchdog,
            net,
        )?;
        summarize(
            &self.out,
            plan,
            &self.kernel,
            self.kvm,
            started.elapsed(),
            status,
        )
    }
}

/// A Debian kernel unpacked under the cache: the image and its modules.
struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-41-amd64`.
    release: String,
    /// What `lib/modules` lies under: the unpacked packages, or their `usr` (from 7.x).
    base: PathBuf,
}

impl Kernel {
    /// The kernel `spec` names: a `.deb` file, or a version (`6.1`, `7.2`) whose newest
    /// image is taken from the cache or, failing that, from Debian's archive.
    fn fetch(spec: &str, cache: &Path) -> anyhow::Result<Kernel> {
        let debs = if spec.ends_with(".deb") {
            let path = fs::canonicalize(spec).with_context(|| format!("kernel package {spec}"))?;
            vec![path]
        } else {
            if let Some(kernel) = Self::cached(spec, cache)? {
                return Ok(kernel);
            }
            download(spec, cache)?
        };
        let image = &debs[0];
        let stem = image
            .file_stem()
            .and_then(|s| s.to_str())
            .context("kernel package name")?;
        let dir = cache.join(stem.split('_').next().unwrap_or(stem));
        let _: Result<_, _> = fs::remove_dir_all(&dir);
        for deb in &debs {
            exec(Command::new("dpkg").arg("-x").arg(deb).arg(&dir))?;
        }
        Self::unpacked(dir)
    }

    /// A kernel of version `spec` unpacked by an earlier run, the newest if several.
    fn cached(spec: &str, cache: &Path) -> anyhow::Result<Option<Kernel>> {
        let prefix = format!("linux-image-{spec}.");
        let mut dirs: Vec<PathBuf> = fs::read_dir(cache)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        dirs.sort_by_key(|d| version_key(&d.to_string_lossy()));
        match dirs.pop() {
            Some(dir) => Ok(Self::unpacked(dir).ok()),
            None => Ok(None),
        }
    }

    fn unpacked(dir: PathBuf) -> anyhow::Result<Kernel> {
        let base = if dir.join("lib/modules").is_dir() {
            dir
        } else {
            dir.join("usr")
        };
        let modules = base.join("lib/modules");
        let release = fs::read_dir(&modules)
            .with_context(|| format!("{}: no modules in the package", modules.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .context("no kernel release under lib/modules")?;
        let kernel = Kernel { release, base };
        if !kernel.vmlinuz().exists() {
            bail!("{} has no kernel image", kernel.vmlinuz().display());
        }
        // The packages leave modules.dep to their postinst.
        if !kernel.modules().join("modules.dep").exists() {
            exec(
                Command::new("depmod")
                    .arg("-b")
                    .arg(&kernel.base)
                    .arg(&kernel.release),
            )?;
        }
        Ok(kernel)
    }

    /// `boot/vmlinuz-RELEASE`, or from 7.x `lib/modules/RELEASE/vmlinuz`.
    fn vmlinuz(&self) -> PathBuf {
        let boot = self.base.join(format!("boot/vmlinuz-{}", self.release));
        if boot.exists() {
            boot
        } else {
            self.modules().join("vmlinuz")
        }
    }

    fn modules(&self) -> PathBuf {
        self.base.join("lib/modules").join(&self.release)
    }

    /// The initramfs: busybox, the modules that reach the shared root, and an init that
    /// mounts it and hands over to the stage-2 script in the output directory.
    fn initramfs(&self, cache: &Path) -> anyhow::Result<PathBuf> {
        let tree = cache.join(format!("initramfs-{}", self.release));
        let _: Result<_, _> = fs::remove_dir_all(&tree);
        for dir in [
            "bin", "modules", "proc", "sys", "dev", "host", "rw", "newroot",
        ] {
            fs::create_dir_all(tree.join(dir))?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("busybox is missing: cargo xtask setup installs busybox-static")?;
        fs::copy(busybox, tree.join("bin/busybox"))?;
        let mut order = Vec::new();
        for module in self.load_order(BOOT_MODULES)? {
            let name = module
                .file_name()
                .and_then(|n| n.to_str())
                .context("module name")?;
            let plain = name
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .to_string();
            let target = tree.join("modules").join(&plain);
            let source = self.modules().join(&module);
            // busybox's insmod takes plain modules only.
            let decompressor = [(".xz", "xz"), (".zst", "zstd")]
                .into_iter()
                .find(|(suffix, _)| name.ends_with(suffix));
            match decompressor {
                Some((_, program)) => {
                    let plain = capture_bytes(Command::new(program).arg("-dc").arg(&source))?;
                    fs::write(&target, plain)?;
                }
                None => {
                    fs::copy(&source, &target)?;
                }
            }
            order.push(plain);
        }
        let init = format!(
            r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /modules/$m || echo "init: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host || exec sh
mount -t tmpfs -o size=4g tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || exec sh
mkdir -p /newroot/lib/modules/{release} /newroot/mnt/guest-out
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 modules /newroot/lib/modules/{release}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /newroot/mnt/guest-out
umount /proc /sys /dev
exec switch_root /newroot /bin/bash /mnt/guest-out/stage2.sh
"#,
            modules = order.join(" "),
            release = self.release,
        );
        let init_path = tree.join("init");
        fs::write(&init_path, init)?;
        fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
        let image = cache.join(format!("initramfs-{}.cpio", self.release));
        exec(
            Command::new("sh")
                .arg("-c")
                .arg("cd \"$1\" && find . | cpio -o -H newc --quiet > \"$2\"")
                .arg("sh")
                .arg(&tree)
                .arg(&image),
        )?;
        Ok(image)
    }

    /// `wanted` modules with their dependencies, dependencies first, as paths relative to
    /// the modules directory; modules built into the kernel are left out.
    fn load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let dep_file = self.modules().join("modules.dep");
        let text = fs::read_to_string(&dep_file)
            .with_context(|| format!("reading {}", dep_file.display()))?;
        let deps: BTreeMap<String, (String, Vec<String>)> = text
            .lines()
            .filter_map(|line| {
                let (module, rest) = line.split_once(':')?;
                Some((
                    module_name(module),
                    (
                        module.to_string(),
                        rest.split_whitespace().map(str::to_string).collect(),
                    ),
                ))
            })
            .collect();
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let Some((path, requires)) = deps.get(*name) else {
                continue; // built in
            };
            // modules.dep lists every dependency, transitively, nearest first.
            for dep in requires.iter().rev().chain(std::iter::once(path)) {
                if seen.insert(dep.clone()) {
                    order.push(PathBuf::from(dep));
                }
            }
        }
        Ok(order)
    }
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p` (module names use `_` where files may use `-`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Sort key of a package or directory name: its runs of digits as numbers.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Suites of Debian's archive that serve kernels this host's own apt sources may not have:
/// read through a private apt directory, only to download from.
const OTHER_SUITES: &[(&str, &str)] = &[
    // Debian 12's own, for hosts whose apt sources lack them or have no lists yet.
    ("debian", "bookworm"),
    ("debian-security", "bookworm-security"),
    ("debian-security", "bullseye-security"),
    ("debian", "bookworm-backports"),
    ("debian", "trixie-backports"),
];

/// Downloads the newest generic amd64 image of `version` (`linux-image-6.1.0-41-amd64-unsigned`,
/// from 7.x `linux-image-7.2.12+deb13-amd64`) and the packages that hold its image and modules
/// (from 7.x `linux-binary-*`, `linux-modules-*` and `linux-base-*` with modules.builtin),
/// image package first.
fn download(version: &str, cache: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let pattern = format!(
        "^linux-image-{}\\.[0-9.]+(-[0-9]+)?(\\+[a-z0-9.]+)?-amd64(-unsigned)?$",
        version.replace('.', "\\.")
    );
    let host = Apt::Host;
    let (apt, package) = match host.newest(&pattern)? {
        Some(p) => (host, p),
        None => {
            let private = Apt::private(cache)?;
            let package = private.newest(&pattern)?.with_context(|| {
                format!("no Debian package linux-image-{version}.*-amd64 found")
            })?;
            (private, package)
        }
    };
    eprintln!("xtask: downloading {package}");
    let mut debs = vec![apt.download(&package, cache)?];
    let depends = capture(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&debs[0])
            .arg("Depends"),
    )?;
    for dep in depends.split(',') {
        let name = dep.split_whitespace().next().unwrap_or_default();
        if ["linux-binary-", "linux-modules-", "linux-base-"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            debs.push(apt.download(name, cache)?);
        }
    }
    Ok(debs)
}

/// apt with the host's sources, or with a private directory of other suites.
enum Apt {
    Host,
    Private(PathBuf),
}

impl Apt {
    /// A private apt directory under the cache whose sources are [`OTHER_SUITES`] on the
    /// mirror this host's apt uses; its package lists are fetched once a day at most.
    fn private(cache: &Path) -> anyhow::Result<Apt> {
        let dir = cache.join("apt");
        for sub in ["lists/partial", "archives/partial", "etc"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let (debian, security) = host_mirrors()?;
        let sources: String = OTHER_SUITES
            .iter()
            .map(|(archive, suite)| {
                let uri = if *archive == "debian-security" {
                    &security
                } else {
                    &debian
                };
                format!(
                    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main\n"
                )
            })
            .collect();
        fs::write(dir.join("etc/sources.list"), sources)?;
        let config = format!(
            "Dir::Etc::SourceList \"{d}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/etc/none\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::Status \"/var/lib/dpkg/status\";\n\
             Dir::Cache \"{d}\";\n\
             Dir::Cache::Archives \"{d}/archives\";\n\
             Acquire::Languages \"none\";\n",
            d = dir.display()
        );
        fs::write(dir.join("etc/apt.conf"), config)?;
        let apt = Apt::Private(dir.clone());
        let fresh = fs::metadata(dir.join("lists/updated"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < Duration::from_secs(86_400)));
        if !fresh {
            exec(apt.command("apt-get").args(["update", "-q"]))?;
            fs::write(dir.join("lists/updated"), "")?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if let Apt::Private(dir) = self {
            cmd.env("APT_CONFIG", dir.join("etc/apt.conf"));
        }
        cmd
    }

    /// The newest package whose name matches `pattern`.
    fn newest(&self, pattern: &str) -> anyhow::Result<Option<String>> {
        let found = capture(
            self.command("apt-cache")
                .args(["search", "--names-only"])
                .arg(pattern),
        )?;
        // The unsigned image where both are served: nothing here checks signatures.
        Ok(found
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .max_by_key(|name| (version_key(name), name.ends_with("-unsigned")))
            .map(str::to_string))
    }

    /// Downloads `package` into `cache`, unless it is there already.
    fn download(&self, package: &str, cache: &Path) -> anyhow::Result<PathBuf> {
        let find = || -> anyhow::Result<Option<PathBuf>> {
            Ok(fs::read_dir(cache)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                    })
                }))
        };
        if let Some(deb) = find()? {
            return Ok(deb);
        }
        exec(
            self.command("apt-get")
                .args(["download", "-q", package])
                .current_dir(cache),
        )?;
        find()?.with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// The URIs of the `debian` and `debian-security` archives in this host's apt sources.
fn host_mirrors() -> anyhow::Result<(String, String)> {
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == "sources" || e == "list")
            {
                text.push_str(&fs::read_to_string(&path).unwrap_or_default());
                text.push('\n');
            }
        }
    }
    let uris: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .collect();
    let security = uris
        .iter()
        .find(|u| u.trim_end_matches('/').ends_with("/debian-security"));
    let debian = uris
        .iter()
        .find(|u| u.trim_end_matches('/').ends_with("/debian"));
    match (debian, security) {
        (Some(d), Some(s)) => Ok((d.to_string(), s.to_string())),
        _ => bail!(
            "no Debian archive in this host's apt sources: pass the kernel as a .deb file instead"
        ),
    }
}

/// The test binaries of mpath-tests as (name, path), built if needed.
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let output = Command::new(env!("CARGO"))
        .args([
            "test",
            "-p",
            "mpath-tests",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !output.status.success() {
        bail!("building the test binaries failed");
    }
    let mut binaries = Vec::new();
    for line in BufReader::new(&output.stdout[..]).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_test = message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == true
            && message["target"]["kind"] == serde_json::json!(["test"]);
        if let (true, Some(exe), Some(name)) = (
            is_test,
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) {
            binaries.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    binaries.sort();
    Ok(binaries)
}

/// The script that runs each test binary in the tests' package directory, its output,
/// exit code and duration written to the output directory; `env` adds variables.
fn tests_script(
    root: &Path,
    plan: &[(String, PathBuf, Vec<String>)],
    scale: u32,
    limit: u64,
    env: &str,
) -> String {
    let mut script = format!(
        r#"ulimit -n 65536
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1 MPATH_TIME_SCALE={scale} {env}
OUT={GUEST_OUT}
uname -r > $OUT/uname
cd {tests_dir}
"#,
        tests_dir = root.join("tests").display()
    );
    for (name, path, args) in plan {
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        script.push_str(&format!(
            "echo \"guest: running {name}\" > /dev/console\n\
             start=$(date +%s)\n\
             timeout -k 10 {limit} {exe} {args} > $OUT/{name}.log 2>&1\n\
             echo $? > $OUT/{name}.rc\n\
             echo $(( $(date +%s) - start )) > $OUT/{name}.secs\n",
            exe = path.display(),
            args = args.join(" "),
        ));
    }
    script
}

/// Runs a command and returns its standard output as bytes; fails naming the command.
fn capture_bytes(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(out.stdout)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Boots the guest and waits for it to power off, or kills it at `watchdog`. With `net`,
/// qemu runs in its namespace with its NICs, and the QMP relay runs while qemu does.
fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    out: &Path,
    kvm: bool,
    watchdog: Duration,
    net: Option<&VirtioNet>,
) -> anyhow::Result<bool> {
    let qemu = "qemu-system-x86_64";
    if capture(Command::new("sh").args(["-c", &format!("command -v {qemu}")])).is_err() {
        bail!("{qemu} is missing: cargo xtask setup installs qemu-system-x86");
    }
    let share = |path: &Path, tag: &str, readonly: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
            path.display(),
            if readonly { ",readonly=on" } else { "" }
        )
    };
    let mut cmd = match net {
        Some(net) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", net.netns().path().display()))
                .arg(qemu)
                .args(net.qemu_args());
            cmd
        }
        None => Command::new(qemu),
    };
    if kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]);
    }
    cmd.args([
        "-m",
        "4G",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(kernel.vmlinuz())
    .arg("-initrd")
    .arg(initramfs)
    .args([
        "-append",
        "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
    ])
    .arg("-virtfs")
    .arg(share(Path::new("/"), "hostroot", true))
    .arg("-virtfs")
    .arg(share(&kernel.modules(), "modules", true))
    .arg("-virtfs")
    .arg(share(out, "out", false))
    .stdin(Stdio::null())
    .stdout(fs::File::create(out.join("console.log"))?)
    .stderr(Stdio::inherit());
    eprintln!(
        "xtask: booting {} in qemu ({}), console in {}",
        kernel.release,
        if kvm { "KVM" } else { "TCG" },
        out.join("console.log").display()
    );
    let mut child = cmd.spawn().context("starting qemu")?;
    if let Some(net) = net {
        net.start_relay();
    }
    let deadline = Instant::now() + watchdog;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if Instant::now() > deadline {
            let _: Result<_, _> = child.kill();
            let _: Result<_, _> = child.wait();
            eprintln!("xtask: the guest ran past its watchdog ({watchdog:?}) and was killed");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Prints the guest's kernel and a line per test binary; fails when any binary failed.
fn summarize(
    out: &Path,
    plan: &[(String, PathBuf, Vec<String>)],
    kernel: &Kernel,
    kvm: bool,
    elapsed: Duration,
    powered_off: bool,
) -> anyhow::Result<()> {
    let uname = fs::read_to_string(out.join("uname")).unwrap_or_default();
    let uname = uname.trim();
    println!(
        "guest: uname -r {} ({}, {:.0} s in all)",
        if uname.is_empty() {
            "unknown: the guest never reached its tests"
        } else {
            uname
        },
        if kvm { "KVM" } else { "TCG" },
        elapsed.as_secs_f64()
    );
    let mut failed = Vec::new();
    let (mut passed_total, mut failed_total) = (0, 0);
    for (name, _, _) in plan {
        let rc = fs::read_to_string(out.join(format!("{name}.rc"))).ok();
        let secs = fs::read_to_string(out.join(format!("{name}.secs"))).unwrap_or_default();
        let log = fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        let (passed, failed_n) = counts(&log);
        passed_total += passed;
        failed_total += failed_n;
        let needs: BTreeSet<&str> = log
            .lines()
            .filter_map(|l| {
                l.find(MISSING_FEATURE)
                    .map(|at| l[at + MISSING_FEATURE.len()..].trim_end_matches(['"', '\'']))
            })
            .collect();
        let verdict = match rc.as_deref().map(str::trim) {
            Some("0") => "ok".to_string(),
            Some("124") | Some("137") => "timed out".to_string(),
            Some(code) => format!("FAILED (exit {code})"),
            None => "not run".to_string(),
        };
        println!(
            "guest: {name:<12} {verdict:<18} {passed} passed, {failed_n} failed, {secs} s",
            secs = secs.trim(),
        );
        for need in &needs {
            println!("guest: {name:<12}   this kernel has no {need}");
        }
        for line in log.lines().filter_map(|l| l.strip_prefix(MEASURED)) {
            println!("guest: {name:<12}   {line}");
        }
        if rc.as_deref().map(str::trim) != Some("0") {
            failed.push(name.clone());
            for line in failure_excerpt(&log) {
                println!("guest: {name} | {line}");
            }
            println!(
                "guest: {name}: log in {}",
                out.join(format!("{name}.log")).display()
            );
        }
    }
    println!("guest: {passed_total} passed, {failed_total} failed");
    if !powered_off && failed.is_empty() {
        bail!(
            "the guest did not power off cleanly; console in {}",
            out.join("console.log").display()
        );
    }
    if !failed.is_empty() {
        bail!("on {}: {} failed", kernel.release, failed.join(", "));
    }
    Ok(())
}

/// Lines of a failed binary's log for CI's output, which keeps only its end and not the
/// guest's files: the start of libtest's `failures:` section (the panics), or the log's end
/// when there is none (a crash or a timeout).
fn failure_excerpt(log: &str) -> Vec<&str> {
    const LINES: usize = 60;
    let lines: Vec<&str> = log.lines().collect();
    match lines.iter().position(|l| *l == "failures:") {
        Some(at) => lines[at..].iter().take(LINES).copied().collect(),
        None => lines[lines.len().saturating_sub(LINES)..].to_vec(),
    }
}

/// (passed, failed) from libtest's `test result:` line.
fn counts(log: &str) -> (u32, u32) {
    let Some(line) = log.lines().rev().find(|l| l.starts_with("test result:")) else {
        return (0, 0);
    };
    let number_before = |word: &str| {
        line.split(';')
            .find(|part| part.trim_end().ends_with(word))
            .and_then(|part| part.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (number_before("passed"), number_before("failed"))
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_drop_directories_suffixes_and_dashes() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(module_name("kernel/net/9p/9pnet_virtio.ko"), "9pnet_virtio");
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio-pci.ko.zst"),
            "virtio_pci"
        );
    }

    #[test]
    fn the_newest_package_wins_by_number_not_by_text() {
        let mut names = [
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-41-amd64-unsigned",
            "linux-image-6.1.0-10-amd64-unsigned",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names[2], "linux-image-6.1.0-41-amd64-unsigned");
    }

    #[test]
    fn reads_libtest_counts() {
        let log = "running 3 tests\n\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s\n";
        assert_eq!(counts(log), (2, 1));
        assert_eq!(counts("no summary"), (0, 0));
    }

    #[test]
    fn a_failure_excerpt_starts_at_the_panics_or_is_the_logs_end() {
        let log = "running 2 tests\nstep 1\n\nfailures:\n\n---- t stdout ----\npanicked\n";
        assert_eq!(
            failure_excerpt(log),
            ["failures:", "", "---- t stdout ----", "panicked"]
        );
        let crash: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let excerpt = failure_excerpt(&crash);
        assert_eq!(excerpt.len(), 60);
        assert_eq!(excerpt[0], "line 40");
        assert_eq!(excerpt[59], "line 99");
    }
}
