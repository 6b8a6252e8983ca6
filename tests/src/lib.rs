//! The harness every end-to-end test shares: a real etcd, network
//! namespaces that clean up after themselves, free ports, and the real
//! kubectl at a fixed version.
//!
//! Everything a test creates is named with [`names::prefix`] (the test
//! process's pid) and removed on drop, which also runs while a failing test
//! unwinds; `cargo xtask test` first removes what a killed test run left.

pub mod benchkit;
pub mod cluster;
pub mod datapath;
pub mod dist;
pub mod etcd;
pub mod forward;
pub mod hollow;
pub mod kubectl;
pub mod names;
pub mod net;
pub mod netbench;
pub mod netpol;
pub mod networked;
pub mod node;
pub mod nspawn;
pub mod ports;
pub mod process;
pub mod secured;
pub mod terminal;

/// Fails the test with a clear message unless it runs as root.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root ({what}); run the suite as root, e.g. `sudo -E cargo xtask test`"
        );
    }
}

/// Directory of the workspace (the parent of `tests/`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Compiles `tests/probe/<source>` into `out` with rustc, statically
/// linked, so it runs from a hostPath volume in any image.
pub fn build_probe(source: &str, out: &std::path::Path) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("probe")
        .join(source);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = std::process::Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(out)
        .arg(&src)
        .status()
        .expect("running rustc");
    assert!(status.success(), "building {}", src.display());
}
