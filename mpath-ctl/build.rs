//! Builds the eBPF programs (crate `mpath-ebpf`) for the BPF target with the pinned nightly
//! and leaves the object in OUT_DIR, where `include_bytes_aligned!` embeds it into mpathd and
//! mpathctl.

include!("../mpath-ebpf/toolchain.rs");

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "mpath-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../mpath-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}
