//! Where the socket hooks attach, and how pod processes end up under them.
//!
//! cgroup sock_addr programs run for the processes of the cgroup v2 group
//! they attach to and of every group below it. The agent attaches them at
//! its own subtree of the v2 hierarchy (`--cgroup-root`, or the wider
//! `--service-cgroup`), never at the hierarchy's root unless told to.
//!
//! On a pure cgroup v2 host libcontainer puts each container in
//! `<cgroup-root>/pod<uid>/<id>`, inside that subtree. On a hybrid host it
//! uses the v1 controllers only and leaves the v2 group untouched, so a
//! container would stay in whatever v2 group its parent (the runtime
//! helper) was in. The helper therefore joins `<cgroup-root>/runtime` of
//! the v2 hierarchy when it starts; containers and `kubectl exec`
//! processes, which it forks, inherit that group on both layouts.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup v2 group the runtime helper joins, below the cgroup root.
pub const RUNTIME_GROUP: &str = "runtime";

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on pure v2
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones; None on v1-only hosts.
pub fn v2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts: Vec<PathBuf> = info.lines().filter_map(cgroup2_mount_point).collect();
    // Prefer the conventional places if several are mounted.
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(m) = mounts.iter().find(|m| m.as_os_str() == p) {
            return Some(m.clone());
        }
    }
    mounts.into_iter().next()
}

/// The mount point of a mountinfo line for a cgroup2 filesystem.
fn cgroup2_mount_point(line: &str) -> Option<PathBuf> {
    // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
    let (head, tail) = line.split_once(" - ")?;
    if tail.split_whitespace().next()? != "cgroup2" {
        return None;
    }
    let point = head.split_whitespace().nth(4)?;
    // mountinfo escapes spaces and the like as octal.
    Some(PathBuf::from(point.replace("\\040", " ")))
}

/// `path` (a cgroup path like `/kestrel`) inside the v2 hierarchy at `mount`.
pub fn group_dir(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// The v2 group of the runtime helper for `cgroup_root`, if the host has a
/// v2 hierarchy.
pub fn runtime_group(cgroup_root: &str) -> Option<PathBuf> {
    Some(group_dir(&v2_mount()?, cgroup_root).join(RUNTIME_GROUP))
}

/// Moves the calling process into the v2 group `dir` (made if missing).
/// Must run before the process forks what should inherit it.
pub fn join(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // "0" is the writing process itself.
    std::fs::write(dir.join("cgroup.procs"), "0")
        .map_err(|e| io::Error::new(e.kind(), format!("joining {}: {e}", dir.display())))
}

/// Waits up to `timeout` for `dir` to hold no process (a process that was
/// told to exit may still be on its way out), then removes it. Returns
/// whether it is gone.
pub fn remove_when_empty(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                tracing::warn!("removing cgroup {}: {e}", dir.display());
                return false;
            }
        }
    }
}

/// Whether cgroup path `inner` is `outer` or below it.
pub fn contains(outer: &str, inner: &str) -> bool {
    let outer = outer.trim_matches('/');
    let inner = inner.trim_matches('/');
    outer.is_empty()
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_in_mountinfo() {
        let hybrid = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            cgroup2_mount_point(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let v1 = "33 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_mount_point(v1), None);
    }

    #[test]
    fn subtree_containment() {
        assert!(contains("/", "/kestrel"));
        assert!(contains("/kestrel", "/kestrel"));
        assert!(contains("/kestrel", "/kestrel/pods"));
        assert!(!contains("/kestrel", "/kestrel2"));
        assert!(!contains("/a", "/kestrel"));
        assert_eq!(
            group_dir(Path::new("/sys/fs/cgroup/unified"), "/kestrel"),
            PathBuf::from("/sys/fs/cgroup/unified/kestrel")
        );
    }
}
