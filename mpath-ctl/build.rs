//! Builds the eBPF programs (crate `mpath-ebpf`) for the BPF target with the pinned nightly
//! and leaves the object in OUT_DIR, where `include_bytes_aligned!` embeds it into mpathd and
//! mpathctl.

include!("../mpath-ebpf/toolchain.rs");

fn main() -> anyhow::Result<()> {
    commit();
    let ebpf = aya_build::Package {
        name: "mpath-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../mpath-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}

/// `MPATH_COMMIT` for `mpath_build_info`: the commit built, from the environment (a package
/// built from a tarball can say it), else from git, else `unknown`.
fn commit() {
    println!("cargo:rerun-if-env-changed=MPATH_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_string())
    };
    let commit = std::env::var("MPATH_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // A new commit moves HEAD (or the branch it names): build again then.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    // Branches live in the common directory, shared by every worktree.
    let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]);
    if let (Some(common), Some(branch)) = (common, git(&["symbolic-ref", "-q", "HEAD"])) {
        println!("cargo:rerun-if-changed={common}/{branch}");
    }
    println!("cargo:rustc-env=MPATH_COMMIT={commit}");
}
