//! The harness every end-to-end test shares: a real etcd, network
//! namespaces that clean up after themselves, free ports, and the real
//! kubectl at a fixed version.
//!
//! Everything a test creates is named with [`names::prefix`] (the test
//! process's pid) and removed on drop, which also runs while a failing test
//! unwinds; `cargo xtask test` first removes what a killed test run left.

pub mod benchkit;
pub mod cluster;
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
