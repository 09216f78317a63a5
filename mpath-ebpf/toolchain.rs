/// The nightly that builds the eBPF programs, pinned so that a newer nightly's LLVM never
/// drifts from the one bpf-linker was built against ("Invalid record" errors). One definition,
/// `include!`d by mpath-ctl's build script (which builds with it) and by `cargo xtask setup`
/// (which installs it with rust-src and builds bpf-linker for its LLVM). After changing it,
/// run `cargo xtask setup` again.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
