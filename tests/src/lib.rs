//! What mpath's integration tests share: private bpffs pin directories, crafted packets, the
//! XDP program rig, mpathd's metrics, an echo responder for the lab router, the files of
//! dist/, and network managers in sandboxes beside mpathd.

pub mod carrier;
pub mod daemon;
pub mod flows;
pub mod hooks;
pub mod ifupdown;
pub mod managed;
pub mod matcher;
pub mod metrics;
pub mod network_manager;
pub mod networkd;
pub mod packets;
pub mod responder;
pub mod sandbox;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// A file of dist/, what a host installs.
pub fn dist_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(file)
}

/// The text of a file of dist/.
pub fn dist_text(file: &str) -> String {
    let path = dist_path(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A pin directory of its own for one test's datapath, removed with everything pinned in it
/// when dropped (also when the test panics), so tests run in parallel and leave nothing behind.
pub struct PinDir(PathBuf);

/// Prefix of every test pin directory under /sys/fs/bpf; the test runner checks none is left.
pub const PIN_DIR_PREFIX: &str = "mpath-test-";

impl PinDir {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/{PIN_DIR_PREFIX}{}-{n}",
            std::process::id()
        ));
        mpath_ctl::datapath::ensure_bpffs(&dir).expect("bpffs at /sys/fs/bpf");
        PinDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(errors) = mpath_ctl::datapath::teardown(&self.0) {
            for e in errors {
                eprintln!("removing {}: {e}", self.0.display());
            }
        }
    }
}
