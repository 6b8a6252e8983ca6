//! Compiles the eBPF programs in `agent-ebpf` and hands their object file to
//! the agent, which embeds it. `KESTREL_EBPF_OBJECT=/path` skips the build
//! and embeds a prebuilt object instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out_dir.join("agent-ebpf.o");
    println!("cargo:rerun-if-env-changed=KESTREL_EBPF_OBJECT");

    if let Some(prebuilt) = env::var_os("KESTREL_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        std::fs::copy(&prebuilt, &embedded)
            .unwrap_or_else(|e| panic!("KESTREL_EBPF_OBJECT={}: {e}", prebuilt.display()));
        return;
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("../agent-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../agent-ebpf-common").display()
    );
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "rust-toolchain.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(path).display());
    }
    // A target directory of its own: the outer build holds the lock on ours.
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("ebpf"),
        None => manifest_dir.join("../target/ebpf"),
    };

    let object = build(&ebpf_dir, &target_dir);
    std::fs::copy(&object, &embedded).unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
}

fn build(ebpf_dir: &Path, target_dir: &Path) -> PathBuf {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(ebpf_dir);
    // The outer (stable) build's settings must not leak into the nightly one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status();
    let hint = "the eBPF toolchain is missing or broken: run `cargo xtask setup`, \
                or point KESTREL_EBPF_OBJECT at an object built by `cargo xtask build-ebpf`";
    match status {
        Ok(s) if s.success() => target_dir.join("bpfel-unknown-none/release/agent-ebpf"),
        Ok(s) => panic!("building agent-ebpf failed ({s}): {hint}"),
        Err(e) => panic!("cannot run rustup ({e}): {hint}"),
    }
}
