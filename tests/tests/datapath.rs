//! Loading the datapath on a pin directory that another mpath release left behind.

use mpath_common::{PIN_LAYOUT_VERSION, map_names};
use mpath_ctl::datapath::Datapath;
use mpath_tests::PinDir;

#[test]
fn opening_the_datapath_removes_the_pins_of_other_layout_versions_only() {
    let pins = PinDir::new();
    let root = pins.path();
    for dir in ["v1/maps", "v1/links", "v31/links", "notes"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let buckets_pinned =
        |datapath: &Datapath| datapath.pins().maps().join(map_names::BUCKETS).exists();
    let datapath = Datapath::open(root).unwrap();
    assert!(!root.join("v1").exists());
    assert!(!root.join("v31").exists());
    assert!(root.join("notes").exists(), "not a layout: not mpath's");
    assert_eq!(datapath.pins().dir(), root.join(PIN_LAYOUT_VERSION));
    assert!(buckets_pinned(&datapath));
    drop(datapath);
    // A second start keeps the current layout's pins (and so the maps' contents).
    let datapath = Datapath::open(root).unwrap();
    assert!(buckets_pinned(&datapath));
    std::fs::remove_dir(root.join("notes")).unwrap();
}
