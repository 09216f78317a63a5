//! Loads mpath's eBPF programs, attaches them to group NICs and pins everything under one
//! bpffs directory, so that a restarted mpathd re-attaches to the running datapath instead of
//! tearing it down.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/mpath`):
//! `v4/maps/<MAP>`, `v4/links/{tc,xdp}-<ifindex>` and the source hook's
//! `v4/links/source-{connect,sendmsg}{4,6}` ([`sources`]). The layout version is part of the
//! path: aya adopts a pinned map without checking its layout.
//!
//! The egress program goes on through a tcx link where the kernel has tcx (6.6), else as a
//! classic cls_bpf filter ([`legacy_tc`]), which has no pin: it stays in the NIC's qdisc by
//! itself and is found again by dumping the NIC's filters.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

pub mod btf;
pub mod carrier_hook;
pub mod legacy_tc;
pub mod maps;
pub mod pins;
pub mod sources;

use aya::{
    Ebpf, EbpfLoader,
    maps::MapType,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
};
use mpath_common::{PIN_LAYOUT_VERSION, map_names, program_names};

/// Where probe replies are matched: `probe_rx` in the configuration.
pub use crate::config::ProbeRx;
pub use crate::config::TcAttach;
use legacy_tc::Hook;

use maps::{Maps, MapsError};
use pins::PinLayout;

/// The eBPF object built by build.rs from the `mpath-ebpf` crate.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mpath"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not on a BPF filesystem and bpffs could not be mounted at /sys/fs/bpf: {source}; \
         mount it with `mount -t bpf bpf /sys/fs/bpf` or set bpf_pin_dir to a directory on bpffs"
    )]
    NoBpffs { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {}", error_chain(source))]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
    #[error(
        "another mpathd is running with pin directory {}{}: a second one would replace its probe key and maps",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse { path: PathBuf, holder: Option<u32> },
    #[error(
        "mpathd is running with pin directory {}{}: stop it first (its datapath and routes are in use)",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Running { path: PathBuf, holder: Option<u32> },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("this kernel has no {feature}, which mpath needs (Linux {since} and later have it)")]
    MissingFeature {
        feature: &'static str,
        since: &'static str,
    },
    #[error(
        "tc_attach = \"tcx\" but this kernel has no tcx links (Linux 6.6 and later have them); \
         use \"auto\" or \"legacy\""
    )]
    NoTcx,
    #[error("listing the NICs' egress filters: {0}")]
    FilterDump(io::Error),
    #[error("the tc filters of {ifname}: {source}")]
    Filters { ifname: String, source: io::Error },
    #[error(
        "{ifname}: the {hook} filter at priority {priority} handle {handle:#x} (kind {kind}{name}) \
         is not mpathd's; mpathd puts its cls_bpf filter there: delete that filter or move it"
    )]
    FilterPlaceTaken {
        ifname: String,
        hook: Hook,
        priority: u16,
        handle: u32,
        kind: String,
        name: String,
    },
    #[error(
        "eBPF program {}: native XDP refused ({native}), generic XDP refused ({generic})",
        program_names::PROBE_RX_XDP
    )]
    Xdp { native: String, generic: String },
    #[error("the carrier hook cannot run: {reason}")]
    CarrierHook { reason: String },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// What [`Datapath::attach`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub ifindex: u32,
    /// With `probe_rx = "xdp"`: why the driver refused native XDP, when the matcher runs as
    /// generic XDP.
    pub native_xdp_refused: Option<String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How the egress program is attached to the NICs, chosen once per datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcKind {
    /// A tcx link (Linux 6.6), pinned like the XDP link and replaced atomically through it.
    Tcx,
    /// A direct-action cls_bpf filter on the clsact qdisc, see [`legacy_tc`].
    Legacy,
}

/// The loaded programs, their maps and the NICs they are attached to.
pub struct Datapath {
    /// Held for the datapath's life: no second mpathd may load onto the same pins.
    lock: PinLock,
    ebpf: Ebpf,
    pins: PinLayout,
    pub maps: Maps,
    tc_kind: TcKind,
    /// The cookie of mpathd's network namespace, which the source hook keeps to; `None` on a
    /// kernel that does not tell it.
    netns_cookie: Option<u64>,
    /// Attached NICs by ifindex, with where their probe replies are matched.
    attached: BTreeMap<u32, ProbeRx>,
    /// Where the running kernel's `struct net_device` keeps its ifindex, for the carrier hook;
    /// `None` without the kernel's BTF.
    netdev_ifindex_offset: Option<u32>,
}

impl Datapath {
    #[cfg(any(test, feature = "testing"))]
    /// [`Datapath::open_with`] attaching the egress program through tcx where the kernel has
    /// it.
    pub fn open(pin_root: &Path) -> Result<Self, DatapathError> {
        Self::open_with(pin_root, TcAttach::Auto)
    }

    /// Loads the programs, reusing the maps pinned under `pin_root` (so their contents, such as
    /// bucket tables and counters, survive a restart) or pinning new ones there. Refused,
    /// before anything under `pin_root` changes, while another datapath holds its lock, and
    /// on a kernel that lacks a feature the programs need, which the error names.
    pub(crate) fn open_with(pin_root: &Path, tc_attach: TcAttach) -> Result<Self, DatapathError> {
        ensure_bpffs(pin_root)?;
        let lock = PinLock::acquire(pin_root)?;
        // The probe replies travel to mpathd through a ring buffer: without one the object
        // would fail to load with a bare EINVAL.
        if !aya::sys::is_map_supported(MapType::RingBuf).unwrap_or(true) {
            return Err(DatapathError::MissingFeature {
                feature: "BPF ring buffer",
                since: "5.8",
            });
        }
        let tc_kind = match (tc_attach, has_tcx()?) {
            (TcAttach::Auto | TcAttach::Tcx, true) => TcKind::Tcx,
            (TcAttach::Tcx, false) => return Err(DatapathError::NoTcx),
            (TcAttach::Auto, false) | (TcAttach::Legacy, _) => TcKind::Legacy,
        };
        retire_other_layouts(pin_root)?;
        let pins = PinLayout::new(pin_root);
        for path in [pins.maps(), pins.links()] {
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let outgrown = sources::unpin_outgrown_routes(&pins.maps())?;
        let netns_cookie = sources::netns_cookie().ok();
        let netdev_ifindex_offset = btf::Btf::kernel()
            .ok()
            .and_then(|btf| btf.member_offset("net_device", "ifindex"));
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.maps())
            .override_global("MPATH_NETNS_COOKIE", &netns_cookie.unwrap_or(0), true)
            .override_global(
                "MPATH_NETDEV_IFINDEX_OFFSET",
                &netdev_ifindex_offset.unwrap_or(0),
                true,
            )
            .load(EBPF_OBJECT)?;
        spread_program(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                name: program_names::SPREAD,
                source,
            })?;
        tc_program(&mut ebpf, Hook::Ingress)?
            .load()
            .map_err(|source| DatapathError::Program {
                name: program_names::PROBE_RX,
                source,
            })?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.sources.take_over(outgrown)?;
        Ok(Datapath {
            lock,
            ebpf,
            pins,
            maps,
            tc_kind,
            netns_cookie,
            attached: BTreeMap::new(),
            netdev_ifindex_offset,
        })
    }

    #[cfg(any(test, feature = "testing"))]
    /// The probe matcher at tc ingress, for running it on crafted packets
    /// (BPF_PROG_TEST_RUN) in tests and benchmarks.
    pub fn probe_rx(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        tc_program(&mut self.ebpf, Hook::Ingress)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The XDP probe matcher (loaded on first use), for BPF_PROG_TEST_RUN.
    pub fn probe_rx_xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The spreading program, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn spread(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        spread_program(&mut self.ebpf)
    }

    #[cfg(any(test, feature = "testing"))]
    /// Where this datapath's pins are.
    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// Attaches the programs to the NIC `ifname`: the spreading program on egress, and the
    /// probe matcher on tc ingress or, with `probe_rx` XDP, as an XDP program (native where
    /// the driver takes it, else generic). A link already pinned for it (left by an earlier
    /// mpathd) is updated in place to the freshly loaded program, and so is a cls_bpf filter
    /// of mpathd's: the NIC is never without a program, not even for a packet. A pinned link
    /// whose NIC is gone (a reused ifindex) cannot be updated: it is replaced by a fresh
    /// attachment. A program of the other kind (tcx against cls_bpf after a kernel change,
    /// the tc matcher against the XDP one) is removed once the new one runs, so that two
    /// never run on one hook.
    pub fn attach(&mut self, ifname: &str, probe_rx: ProbeRx) -> Result<Attached, DatapathError> {
        let ifindex = ifindex_of(ifname)?;
        self.restore_layout()?;
        self.attach_tc(ifname, ifindex, Hook::Egress)?;
        let native_xdp_refused = match probe_rx {
            ProbeRx::Tc => {
                self.attach_tc(ifname, ifindex, Hook::Ingress)?;
                detach_pinned_link(&self.pins.link(XDP, ifindex))?;
                None
            }
            ProbeRx::Xdp => {
                let refused = self.attach_xdp(ifindex)?;
                self.detach_tc(ifindex, Hook::Ingress)?;
                refused
            }
        };
        self.attached.insert(ifindex, probe_rx);
        Ok(Attached {
            ifindex,
            native_xdp_refused,
        })
    }

    /// The program of `hook` on a NIC, through a pinned tcx link or mpathd's cls_bpf filter
    /// as this datapath does it; the other kind is removed first, so that two programs never
    /// run on one hook.
    fn attach_tc(&mut self, ifname: &str, ifindex: u32, hook: Hook) -> Result<(), DatapathError> {
        let path = self.pins.link(tc_pin_kind(hook), ifindex);
        match self.tc_kind {
            TcKind::Tcx => {
                delete_filter(ifindex, hook)?;
                self.attach_tcx(ifname, hook, &path)
            }
            TcKind::Legacy => {
                detach_pinned_link(&path)?;
                self.attach_legacy(ifname, ifindex, hook)
            }
        }
    }

    /// Takes the program of `hook` off a NIC, whichever kind carries it.
    fn detach_tc(&mut self, ifindex: u32, hook: Hook) -> Result<(), DatapathError> {
        detach_pinned_link(&self.pins.link(tc_pin_kind(hook), ifindex))?;
        delete_filter(ifindex, hook)
    }

    /// The program of `hook` through a tcx link, pinned at `path` (an existing pin updated).
    fn attach_tcx(&mut self, ifname: &str, hook: Hook, path: &Path) -> Result<(), DatapathError> {
        let name = hook.program();
        let prog = tc_program(&mut self.ebpf, hook)?;
        let program = |source| DatapathError::Program { name, source };
        let updated = match pinned_link(path)? {
            Some(link) => SchedClassifierLink::try_from(link)
                .ok()
                .and_then(|link| prog.attach_to_link(link).ok()),
            None => None,
        };
        let id = match updated {
            Some(id) => id,
            None => prog
                .attach_with_options(
                    ifname,
                    attach_type(hook),
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(program)?,
        };
        let link = FdLink::try_from(prog.take_link(id).map_err(program)?).map_err(|e| {
            DatapathError::Link {
                path: path.to_owned(),
                source: e,
            }
        })?;
        pin(link, path).map(drop)
    }

    /// The program of `hook` as mpathd's cls_bpf filter on the NIC's clsact qdisc (added if
    /// missing). A filter of mpathd's already there gets the new program in place, by
    /// priority and handle, which the kernel swaps atomically.
    fn attach_legacy(
        &mut self,
        ifname: &str,
        ifindex: u32,
        hook: Hook,
    ) -> Result<(), DatapathError> {
        let name = hook.program();
        let program = |source| DatapathError::Program { name, source };
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(program(e.into())),
        }
        let filters =
            legacy_tc::filters(ifindex, hook).map_err(|source| DatapathError::Filters {
                ifname: ifname.into(),
                source,
            })?;
        let handle = TcHandle::from(legacy_tc::HANDLE);
        let prog = tc_program(&mut self.ebpf, hook)?;
        let id = match filters.iter().find(|f| f.holds_mpathd_place()) {
            Some(filter) if filter.is_mpathd(hook) => {
                let link = SchedClassifierLink::attached(
                    ifname,
                    attach_type(hook),
                    legacy_tc::PRIORITY,
                    handle,
                    None,
                )
                .map_err(|_not_found| DatapathError::NoSuchInterface(ifname.into()))?;
                prog.attach_to_link(link).map_err(program)?
            }
            Some(filter) => {
                return Err(DatapathError::FilterPlaceTaken {
                    ifname: ifname.into(),
                    hook,
                    priority: filter.priority,
                    handle: filter.handle,
                    kind: filter.kind.clone(),
                    name: filter
                        .name
                        .as_ref()
                        .map(|n| format!(", program {n}"))
                        .unwrap_or_default(),
                });
            }
            None => prog
                .attach_with_options(
                    ifname,
                    attach_type(hook),
                    TcAttachOptions::Netlink(NlOptions {
                        priority: legacy_tc::PRIORITY,
                        handle,
                        classid: None,
                    }),
                )
                .map_err(program)?,
        };
        // aya deletes the filter when its link object is dropped, but mpathd's filter is to
        // outlive this process like a pinned link does: the object is forgotten. It holds no
        // descriptor, only the filter's address.
        std::mem::forget(prog.take_link(id).map_err(program)?);
        Ok(())
    }

    /// The XDP matcher on NIC `ifindex` through a pinned link (an existing one updated, in
    /// the mode it has): native where the driver takes it, else generic, which every NIC
    /// takes; returns why the driver refused native XDP when it did.
    fn attach_xdp(&mut self, ifindex: u32) -> Result<Option<String>, DatapathError> {
        let path = self.pins.link(XDP, ifindex);
        let prog = xdp_program(&mut self.ebpf)?;
        let program = |source| DatapathError::Program {
            name: program_names::PROBE_RX_XDP,
            source,
        };
        let updated = match pinned_link(&path)? {
            Some(link) => XdpLink::try_from(link)
                .ok()
                .and_then(|link| prog.attach_to_link(link).ok()),
            None => None,
        };
        let (id, refused) = match updated {
            Some(id) => (id, None),
            None => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => (id, None),
                Err(native) => {
                    let native = error_chain(&native);
                    let id = prog
                        .attach_to_if_index(ifindex, XdpMode::Skb)
                        .map_err(|generic| DatapathError::Xdp {
                            native: native.clone(),
                            generic: error_chain(&generic),
                        })?;
                    (id, Some(native))
                }
            },
        };
        // Before 5.9 aya attaches XDP through netlink, which gives no link to pin.
        let link = FdLink::try_from(prog.take_link(id).map_err(program)?).map_err(
            |_netlink_attached| DatapathError::MissingFeature {
                feature: "BPF links for XDP",
                since: "5.9",
            },
        )?;
        pin(link, &path)?;
        Ok(refused)
    }

    /// Whether every program `attach` put on NIC `ifindex` is still on it: `false` when
    /// someone detached a link (`bpftool link detach`) or deleted mpathd's filter. A NIC this
    /// datapath did not attach has nothing to lose.
    pub(crate) fn still_attached(&self, ifindex: u32) -> Result<bool, DatapathError> {
        let Some(probe_rx) = self.attached.get(&ifindex) else {
            return Ok(true);
        };
        let ingress = match probe_rx {
            ProbeRx::Tc => Some(Hook::Ingress),
            ProbeRx::Xdp => None,
        };
        for hook in std::iter::once(Hook::Egress).chain(ingress) {
            let on = match self.tc_kind {
                TcKind::Tcx => {
                    link_ifindex(&self.pins.link(tc_pin_kind(hook), ifindex))? == Some(ifindex)
                }
                TcKind::Legacy => {
                    legacy_tc::has_mpathd_filter(ifindex, hook).map_err(|source| {
                        DatapathError::Filters {
                            ifname: format!("ifindex {ifindex}"),
                            source,
                        }
                    })?
                }
            };
            if !on {
                return Ok(false);
            }
        }
        if *probe_rx == ProbeRx::Xdp {
            return Ok(link_ifindex(&self.pins.link(XDP, ifindex))? == Some(ifindex));
        }
        Ok(true)
    }

    /// Pins the layout again if someone removed it while this datapath runs (`rm -r` of the
    /// pin directory): the directories, the lock and the maps, so that NICs attached from now
    /// on can pin their links and a restarted mpathd adopts the maps. NICs attached before
    /// keep their programs through this process's descriptors; a restart attaches them anew.
    fn restore_layout(&mut self) -> Result<(), DatapathError> {
        let (maps, links) = (self.pins.maps(), self.pins.links());
        if links.is_dir() && maps.join(map_names::SETTINGS).exists() {
            return Ok(());
        }
        tracing::warn!(
            "the datapath's pins under {} were removed while mpathd runs: pinning them again",
            self.pins.dir().display()
        );
        if !self.lock.holds_current_dir() {
            self.lock = PinLock::acquire(&self.lock.path)?;
        }
        for path in [&maps, &links] {
            fs::create_dir_all(path).map_err(io_err(path))?;
        }
        self.maps.pin_missing(&maps)?;
        Ok(())
    }

    /// Detaches every program from a NIC and removes its pins and mpathd's cls_bpf filters.
    /// A NIC that is gone or was never attached is not an error: its links went with it.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.attached.remove(&ifindex);
        detach_pinned_link(&self.pins.link(XDP, ifindex))?;
        for hook in Hook::ALL {
            self.detach_tc(ifindex, hook)?;
        }
        Ok(())
    }

    /// Takes a NIC out of the datapath: detached, and gone from the maps. Errors are logged,
    /// not returned: whoever forgets a NIC carries on either way.
    pub(crate) fn forget(&mut self, ifindex: u32) {
        if let Err(e) = self.detach(ifindex) {
            tracing::warn!("detaching the datapath from ifindex {ifindex}: {e}");
        }
        if let Err(e) = self.maps.remove_nic(ifindex) {
            tracing::warn!("removing ifindex {ifindex} from the datapath's maps: {e}");
        }
    }

    /// ifindexes of NICs that carry this datapath, attached by this or an earlier mpathd:
    /// those with pinned links and those with mpathd's cls_bpf filter.
    pub(crate) fn pinned_nics(&self) -> Result<Vec<u32>, DatapathError> {
        let mut nics = pinned_nics(&self.pins.links())?;
        nics.extend(legacy_tc::nics_with_mpathd_filter().map_err(DatapathError::FilterDump)?);
        nics.sort_unstable();
        nics.dedup();
        Ok(nics)
    }
}

/// The pin directory's lock, held by `mpathd --teardown` from before it touches anything
/// until it is done, so that it never takes away what a running mpathd uses and no mpathd
/// starts in the middle of it.
pub struct TeardownLock {
    _held: Option<PinLock>,
}

impl TeardownLock {
    /// Refused while an mpathd runs on `pin_root`. Nothing to lock when it does not exist.
    pub fn acquire(pin_root: &Path) -> Result<Self, DatapathError> {
        if !pin_root.exists() {
            return Ok(TeardownLock { _held: None });
        }
        match PinLock::acquire(pin_root) {
            Ok(lock) => Ok(TeardownLock { _held: Some(lock) }),
            Err(DatapathError::InUse { path, holder }) => {
                Err(DatapathError::Running { path, holder })
            }
            Err(e) => Err(e),
        }
    }
}

/// An exclusive `flock` on the pin directory itself (bpffs takes no regular files, but locks
/// a directory like any other), released when the holder exits, however it exits.
struct PinLock {
    path: PathBuf,
    dir: fs::File,
}

impl PinLock {
    fn acquire(pin_root: &Path) -> Result<Self, DatapathError> {
        fs::create_dir_all(pin_root).map_err(io_err(pin_root))?;
        let dir = fs::File::open(pin_root).map_err(io_err(pin_root))?;
        match dir.try_lock() {
            Ok(()) => Ok(PinLock {
                path: pin_root.to_owned(),
                dir,
            }),
            Err(fs::TryLockError::WouldBlock) => Err(DatapathError::InUse {
                path: pin_root.to_owned(),
                holder: lock_holder(&dir),
            }),
            Err(fs::TryLockError::Error(e)) => Err(io_err(pin_root)(e)),
        }
    }

    /// Whether the directory at the lock's path is still the locked one: not once it was
    /// removed (and perhaps made again).
    fn holds_current_dir(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (fs::metadata(&self.path), self.dir.metadata()) {
            (Ok(now), Ok(locked)) => now.dev() == locked.dev() && now.ino() == locked.ino(),
            _ => false,
        }
    }
}

/// The pid holding a `flock` on `file`, from /proc/locks (`1: FLOCK ADVISORY WRITE <pid>
/// <major>:<minor>:<inode> 0 EOF`), when it can be told.
fn lock_holder(file: &fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
        .and_then(|fields| fields.get(4)?.parse().ok())
}

/// Removes the pins of other layout versions, left by an mpathd of another release: their
/// programs cannot share this release's maps, and two spreading programs on one NIC would
/// fight. Until this release attaches its own, the NICs briefly run without a program, which
/// costs spreading and probe matching for that moment but no packet.
fn retire_other_layouts(pin_root: &Path) -> Result<(), DatapathError> {
    let entries = match fs::read_dir(pin_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(pin_root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(pin_root))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_layout = name
            .strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_layout && name != PIN_LAYOUT_VERSION {
            let path = entry.path();
            tracing::warn!(
                "removing the datapath pinned under {} by an mpathd of another release (layout {name}, this one uses {PIN_LAYOUT_VERSION})",
                path.display()
            );
            detach_links(&path.join("links"))?;
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Detaches every link pinned in `links` (see [`detach_pinned_link`]).
fn detach_links(links: &Path) -> Result<(), DatapathError> {
    if let Ok(entries) = fs::read_dir(links) {
        for entry in entries {
            detach_pinned_link(&entry.map_err(io_err(links))?.path())?;
        }
    }
    Ok(())
}

/// Removes the datapath from the host: mpathd's cls_bpf filters on the NICs of this network
/// namespace (other filters stay), then every link pinned under `pin_root`, detached from its
/// hook, and every pin. Used when mpath is taken off a host; a daemon restart never does
/// this. Goes on past each failure (a pin removed still lets its link go with its last
/// reference), and returns every one.
pub fn teardown(pin_root: &Path) -> Result<(), Vec<DatapathError>> {
    let mut errors = Vec::new();
    match legacy_tc::nics_with_mpathd_filter() {
        Ok(nics) => {
            for ifindex in nics {
                for hook in Hook::ALL {
                    errors.extend(delete_filter(ifindex, hook).err());
                }
            }
        }
        Err(e) => errors.push(DatapathError::FilterDump(e)),
    }
    let pins = PinLayout::new(pin_root);
    // Each link detached first: programs are off their hooks when this returns.
    if let Ok(entries) = fs::read_dir(pins.links()) {
        for entry in entries {
            let detached = entry
                .map_err(io_err(&pins.links()))
                .and_then(|entry| detach_pinned_link(&entry.path()));
            errors.extend(detached.err());
        }
    }
    match fs::remove_dir_all(pins.dir()) {
        Ok(()) => {
            // Drop the (now empty) pin root too, unless something else lives there.
            match fs::remove_dir(pin_root) {
                Err(e)
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                    ) =>
                {
                    errors.push(io_err(pin_root)(e));
                }
                _ => {}
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(io_err(pins.dir())(e)),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether the kernel has tcx (6.6), asked by querying loopback's tcx egress programs:
/// kernels without tcx refuse the attach type with EINVAL. Distributions backport, so the
/// kernel's version number would not tell.
pub fn has_tcx() -> Result<bool, DatapathError> {
    match SchedClassifier::query_tcx("lo", TcAttachType::Egress) {
        Ok(_) => Ok(true),
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            Ok(false)
        }
        Err(source) => Err(DatapathError::Program {
            name: program_names::SPREAD,
            source,
        }),
    }
}

/// Removes the pin at `path`, if there is one.
fn remove_pin(path: &Path) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn pinned_nics(links: &Path) -> Result<Vec<u32>, DatapathError> {
    let entries = match fs::read_dir(links) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(links)(e)),
    };
    let mut nics = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(links))?;
        let name = entry.file_name();
        // `<kind>-<ifindex>`, of any kind a NIC's programs are pinned as.
        let nic_pin = name
            .to_str()
            .and_then(|n| n.rsplit_once('-'))
            .filter(|(kind, _)| {
                [tc_pin_kind(Hook::Egress), tc_pin_kind(Hook::Ingress), XDP].contains(kind)
            });
        if let Some(ifindex) = nic_pin.and_then(|(_, i)| i.parse().ok()) {
            nics.push(ifindex);
        }
    }
    nics.sort_unstable();
    nics.dedup();
    Ok(nics)
}

/// mpathd's cls_bpf filter on `hook` of NIC `ifindex` deleted, if there is one.
fn delete_filter(ifindex: u32, hook: Hook) -> Result<(), DatapathError> {
    legacy_tc::delete_mpathd_filter(ifindex, hook)
        .map(drop)
        .map_err(|source| DatapathError::Filters {
            ifname: format!("ifindex {ifindex}"),
            source,
        })
}

/// The pin name of the tcx link of `hook` (egress keeps the name of the layout's first
/// release).
fn tc_pin_kind(hook: Hook) -> &'static str {
    match hook {
        Hook::Egress => "tc",
        Hook::Ingress => "tc-ingress",
    }
}

/// The pin name of the XDP link.
const XDP: &str = "xdp";

fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Egress => TcAttachType::Egress,
        Hook::Ingress => TcAttachType::Ingress,
    }
}

fn tc_program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
    program(ebpf, hook.program())
}

fn spread_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    program(ebpf, program_names::SPREAD)
}

/// The XDP matcher, loaded on first use: only NICs of `probe_rx = "xdp"` need it, and a
/// kernel without multi-buffer XDP (5.18) refuses it.
fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let prog: &mut Xdp = program(ebpf, program_names::PROBE_RX_XDP)?;
    if prog.fd().is_err() {
        prog.load().map_err(|source| DatapathError::Program {
            name: program_names::PROBE_RX_XDP,
            source,
        })?;
    }
    Ok(prog)
}

/// An error with its causes, as `a: b: c`: aya's errors name the failed call and keep the
/// errno in their source.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        cause = e.source();
    }
    text
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Detaches the link pinned at `path` from its hook and removes the pin. Removing the pin
/// alone would leave the program running until the kernel frees the link, some time after
/// the last reference goes (an RCU grace period): sockets opened meanwhile still meet it.
/// aya has no call for either step, so this makes the two bpf(2) calls itself.
fn detach_pinned_link(path: &Path) -> Result<(), DatapathError> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct LinkDetachAttr {
        link_fd: u32,
    }
    let Some(link) = open_pin(path)? else {
        return Ok(());
    };
    let detach = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    // SAFETY: `detach` holds no pointer; the descriptor stays open until the call returns.
    let detached = unsafe { bpf(BPF_LINK_DETACH, &detach) };
    // A link type without a detach refuses: such a link goes with its last reference below.
    if let Err(e) = detached
        && e.raw_os_error() != Some(libc::EOPNOTSUPP)
    {
        return Err(io_err(path)(e));
    }
    remove_pin(path)
}

/// bpf(2) with command `cmd` and the attribute struct `attr` (the leading fields of the
/// kernel's `union bpf_attr` for that command): its non-negative result, or the errno.
///
/// # Safety
/// Every pointer in `attr` must be valid for what the command reads or writes through it.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the kernel reads `size_of::<T>()` bytes from `attr`, which has that many; the
    // caller vouches for the pointers inside.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The ifindex of the NIC the link pinned at `path` is attached to: `Some(0)` once it was
/// detached from its hook, `None` when nothing is pinned there.
fn link_ifindex(path: &Path) -> Result<Option<u32>, DatapathError> {
    // An XDP or tcx link's target starts with the ifindex (a tcx link's attach type follows).
    Ok(link_target(path)?.map(|word| word as u32))
}

/// The first word of what the link pinned at `path` is attached to (struct bpf_link_info's
/// union: an XDP or tcx link's ifindex, a cgroup link's cgroup id), which the kernel zeroes
/// when the link is detached; `None` when nothing is pinned there.
fn link_target(path: &Path) -> Result<Option<u64>, DatapathError> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let Some(link) = open_pin(path)? else {
        return Ok(None);
    };
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the union.
    let mut info = [0u64; 8];
    let attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `info` is valid for `info_len` bytes and outlives the call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) }.map_err(io_err(path))?;
    Ok(Some(info[2]))
}

/// The object pinned at `path` opened (BPF_OBJ_GET), if there is one.
fn open_pin(path: &Path) -> Result<Option<OwnedFd>, DatapathError> {
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io_err(path)(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let get = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the path `get` points to outlives the call.
    match unsafe { bpf(BPF_OBJ_GET, &get) } {
        // SAFETY: bpf(2) returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Opens the link pinned at `path`, if there is one.
fn pinned_link(path: &Path) -> Result<Option<FdLink>, DatapathError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(link.into())),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DatapathError::Link {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Pins a link at `path`, replacing an older pin of the same link.
fn pin(link: FdLink, path: &Path) -> Result<PinnedLink, DatapathError> {
    remove_pin(path)?;
    link.pin(path).map_err(|e| DatapathError::Io {
        path: path.to_owned(),
        source: io::Error::other(e),
    })
}

/// The ifindex of `ifname` in this thread's network namespace.
pub(crate) fn ifindex_of(ifname: &str) -> Result<u32, DatapathError> {
    let c = CString::new(ifname)
        .map_err(|_nul_inside| DatapathError::NoSuchInterface(ifname.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DatapathError::NoSuchInterface(ifname.into())),
        i => Ok(i),
    }
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills `buf`; `c` is a valid path string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `pin_root` lies on a bpffs, mounting one at /sys/fs/bpf when the pin root is
/// below it and nothing is mounted there yet (as on a fresh machine).
pub fn ensure_bpffs(pin_root: &Path) -> Result<(), DatapathError> {
    let existing = pin_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing).map_err(io_err(existing))? {
        return Ok(());
    }
    let mount_point = Path::new("/sys/fs/bpf");
    let no_bpffs = |source| DatapathError::NoBpffs {
        path: pin_root.to_owned(),
        source,
    };
    if !pin_root.starts_with(mount_point) {
        return Err(no_bpffs(io::Error::other(
            "the pin directory is not below /sys/fs/bpf",
        )));
    }
    // SAFETY: constant, NUL-terminated arguments.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(no_bpffs(io::Error::last_os_error()));
    }
    Ok(())
}
