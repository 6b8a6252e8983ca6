//! Network namespaces held by file descriptor, and short-lived threads that
//! enter them.
//!
//! setns(2) changes only the calling thread, and a netlink socket or an open
//! of /proc/sys/net belongs to the namespace of the thread that made it. So
//! every namespace-bound resource is created on a fresh thread that enters
//! the namespace and then exits; no tokio worker ever changes namespace, and
//! the node namespace is pinned by fd when an operation starts rather than
//! inferred from whichever worker happens to poll it later.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug)]
pub(crate) struct NetnsFd(OwnedFd);

impl NetnsFd {
    /// The namespace of the calling thread (not of the process: a thread
    /// that entered a namespace sees its own).
    pub(crate) fn current() -> io::Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        // O_CLOEXEC (std's default): no process the agent spawns inherits it.
        Ok(Self(File::open(path)?.into()))
    }

    /// Whether the fd names a network namespace (and not, say, a regular file
    /// or another kind of namespace).
    pub(crate) fn is_netns(&self) -> bool {
        // SAFETY: the ioctl takes no argument and only inspects the fd.
        let kind = unsafe { libc::ioctl(self.0.as_raw_fd(), NS_GET_NSTYPE as _) };
        kind == libc::CLONE_NEWNET
    }

    /// Whether both fds name the same namespace (same nsfs inode).
    pub(crate) fn same_as(&self, other: &NetnsFd) -> io::Result<bool> {
        let a = fstat(self.0.as_fd())?;
        let b = fstat(other.0.as_fd())?;
        Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }
}

fn fstat(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call and st is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Runs `f` on a new thread that has entered `ns`, and waits for it without
/// blocking the async runtime. The thread exits afterwards, so nothing else
/// ever runs in the namespace it entered.
pub(crate) async fn run_in<T, F>(ns: &NetnsFd, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let ns = ns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kestrel-netns".into())
        .spawn(move || {
            // SAFETY: ns is an open namespace fd; setns affects this thread only.
            let r = if unsafe { libc::setns(ns.raw(), libc::CLONE_NEWNET) } != 0 {
                Err(io::Error::last_os_error())
            } else {
                f()
            };
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| io::Error::other("the namespace helper thread panicked"))?
}
