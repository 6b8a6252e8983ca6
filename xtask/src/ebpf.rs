//! `cargo xtask build-ebpf`.

use std::path::PathBuf;
use std::process::Command;

use crate::util;

/// Builds agent-ebpf and returns the object's path.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    let root = util::root();
    let target_dir = root.join("target/ebpf");
    util::step("building the eBPF programs (nightly, bpfel-unknown-none)");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--target-dir"])
        .arg(&target_dir)
        .current_dir(root.join("agent-ebpf"));
    if release {
        cmd.arg("--release");
    }
    // Settings of the stable cargo that runs xtask must not reach nightly.
    for var in ["RUSTC", "RUSTUP_TOOLCHAIN", "RUSTFLAGS", "CARGO_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    util::run(&mut cmd).map_err(|e| {
        anyhow::anyhow!("{e}\nthe eBPF toolchain may be missing: run `cargo xtask setup`")
    })?;
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir.join(format!("bpfel-unknown-none/{profile}/agent-ebpf")))
}
