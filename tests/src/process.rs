//! Child processes that are killed when the test lets go of them.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Guarded {
    pub child: Child,
    pub name: String,
}

impl Guarded {
    /// Spawns `cmd`, naming it for error messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<Self> {
        let child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("start {name}: {e}")))?;
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
