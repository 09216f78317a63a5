//! Where the datapath's pins live under a pin root (`bpf_pin_dir`): the maps and the links
//! of this release's layout, `<root>/<PIN_LAYOUT_VERSION>/{maps,links}`.

use std::path::{Path, PathBuf};

use mpath_common::PIN_LAYOUT_VERSION;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

impl PinLayout {
    pub fn new(root: &Path) -> PinLayout {
        PinLayout {
            dir: root.join(PIN_LAYOUT_VERSION),
        }
    }

    /// This layout's directory, which holds everything below.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The maps, each pinned under its name in `mpath_common::map_names`.
    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    /// The links that keep the programs attached to the NICs.
    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// The link of program `kind` (`tc`, `xdp`) on NIC `ifindex`.
    pub fn link(&self, kind: &str, ifindex: u32) -> PathBuf {
        self.links().join(format!("{kind}-{ifindex}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_versioned_under_the_root() {
        let pins = PinLayout::new(Path::new("/sys/fs/bpf/mpath"));
        let dir = Path::new("/sys/fs/bpf/mpath").join(PIN_LAYOUT_VERSION);
        assert_eq!(pins.dir(), dir);
        assert_eq!(pins.maps(), dir.join("maps"));
        assert_eq!(pins.link("xdp", 7), dir.join("links/xdp-7"));
    }
}
