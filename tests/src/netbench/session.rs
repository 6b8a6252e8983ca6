//! How a bench program keeps its output and its end in hand: stdout for
//! the table alone, and Ctrl-C turned into an error that unwinds.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, ensure, Result};

/// Points this process's stdout at its stderr until dropped, so that
/// what the programs the harness starts print goes to the log and stdout
/// carries only the table.
pub struct StdoutToStderr {
    saved: std::os::fd::OwnedFd,
}

impl StdoutToStderr {
    pub fn new() -> Result<Self> {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        std::io::stdout().flush()?;
        // SAFETY: dup and dup2 on the standard descriptors, which stay open.
        let saved = unsafe { libc::dup(1) };
        ensure!(
            saved >= 0,
            "dup stdout: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor dup just returned, owned from here on.
        let saved = unsafe { std::os::fd::OwnedFd::from_raw_fd(saved) };
        // SAFETY: as above.
        if unsafe { libc::dup2(2, 1) } < 0 {
            bail!("dup2 stderr: {}", std::io::Error::last_os_error());
        }
        Ok(Self { saved })
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let _ = std::io::stdout().flush();
        // SAFETY: restores the descriptor saved in new.
        unsafe { libc::dup2(self.saved.as_raw_fd(), 1) };
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`interrupted`] reads: a
/// bench stopped with Ctrl-C then returns an error and unwinds, and the
/// namespaces, nodes and processes it built are removed on the way out.
/// Children get the default action back when they exec.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once SIGINT or SIGTERM arrived, so the caller stops and cleans up.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
