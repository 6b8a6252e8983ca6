//! Small helpers shared by the tasks.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root (the parent of xtask/).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Prints a progress line for a long step.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Runs `cmd`, failing with a message that names it.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    anyhow::ensure!(status.success(), "{:?} failed ({status})", cmd);
    Ok(())
}

/// A `cargo` command in the workspace root, with the environment `cargo
/// run` gave xtask removed: build scripts that watch CARGO_PKG_* and the
/// like (ring's does) would otherwise rerun, and everything above them
/// rebuild, whenever the same target was last built from a plain shell.
pub fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("CARGO_PKG_")
            || n.starts_with("CARGO_MANIFEST_")
            || matches!(
                n.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// Runs the stable cargo of this build in the workspace root.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(cargo_command().args(args))
}

/// Whether `cmd` runs and exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What a failed build most often ran out of, in one line: the free space
/// where cargo writes and the memory the kernel could still hand out. A
/// linker killed for either prints only its own command line, which says
/// neither.
pub fn resources() -> String {
    let target = root().join("target");
    let dir = if target.exists() { target } else { root() };
    let disk = std::ffi::CString::new(dir.to_string_lossy().as_bytes())
        .ok()
        .and_then(|path| {
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: `path` is NUL-terminated and `st` is a valid out pointer.
            (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0)
                .then(|| st.f_bavail as f64 * st.f_frsize as f64 / GIB)
        });
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| kib * 1024.0 / GIB);
    let show = |v: Option<f64>| v.map_or("unknown".to_string(), |g| format!("{g:.1} GiB"));
    format!(
        "free disk under {}: {}; memory available: {}",
        dir.display(),
        show(disk),
        show(memory)
    )
}

const GIB: f64 = (1u64 << 30) as f64;
