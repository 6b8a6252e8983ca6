//! Running code inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so each call runs on
//! a short-lived thread of its own and the rest of the process, tokio's
//! workers included, never leaves the node's namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A handle on a network namespace, kept open so it stays valid even when
/// its name under /run/netns is removed.
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// Opens a namespace by path (`/run/netns/NAME` or `/proc/PID/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("network namespace {}: {e}", path.display()),
            )
        })?;
        Ok(Self { file })
    }

    /// Opens a namespace made by `ip netns add NAME`.
    pub fn named(name: &str) -> io::Result<Self> {
        Self::open(Path::new("/run/netns").join(name))
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: fd is an open namespace file borrowed from self for
                    // the whole scope; setns only affects this thread.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| io::Error::other("thread inside the network namespace panicked"))?
        })
    }
}

/// Moves the calling thread into the network namespace at `path` (the
/// whole process, when it has only this thread).
pub fn enter(path: &Path) -> io::Result<()> {
    let ns = NetNs::open(path)?;
    // SAFETY: a valid namespace fd; setns affects only this thread.
    if unsafe { libc::setns(ns.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` in `netns`, or on the calling thread when there is none.
pub fn run_in<T, F>(netns: Option<&NetNs>, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    match netns {
        Some(ns) => ns.run(f),
        None => Ok(f()),
    }
}
