//! The cluster's processes, found again through their pid files in
//! `.cluster/run/`, so `down` (another process) can stop what `up` started.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::state_dir;

/// A process of the cluster, found again through its pid file.
pub struct Component {
    pub name: String,
}

impl Component {
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl Component {
    pub fn pid_file(&self) -> PathBuf {
        state_dir().join("run").join(format!("{}.pid", self.name))
    }

    pub fn log_file(&self) -> PathBuf {
        state_dir().join("logs").join(format!("{}.log", self.name))
    }

    pub fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }

    /// Starts `cmd` in a session of its own (so a terminal's Ctrl-C reaches
    /// only `up`, which then stops everything in order) unless it runs.
    pub fn start(&self, cmd: &mut Command) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            eprintln!("    {} already running (pid {pid})", self.name);
            return Ok(());
        }
        std::fs::create_dir_all(state_dir().join("run"))?;
        std::fs::create_dir_all(state_dir().join("logs"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())?;
        // SAFETY: setsid is async-signal-safe and touches no Rust state.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("start {}: {e}", self.name))?;
        std::fs::write(self.pid_file(), child.id().to_string())?;
        eprintln!(
            "    {} started (pid {}, log {})",
            self.name,
            child.id(),
            self.log_file().display()
        );
        Ok(())
    }

    /// SIGTERM, up to 10 s of grace, then SIGKILL.
    pub fn stop(&self) {
        let Some(pid) = self.pid() else {
            let _ = std::fs::remove_file(self.pid_file());
            return;
        };
        // SAFETY: plain signal delivery to a pid we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pid().is_some() && Instant::now() < deadline {
            reap();
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.pid().is_some() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        reap();
        let _ = std::fs::remove_file(self.pid_file());
        eprintln!("    {} stopped", self.name);
    }

    pub fn wait_ready(
        &self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // Still alive a moment after answering: what answered was this
            // process and not an older one on the same port.
            if ready() {
                std::thread::sleep(Duration::from_millis(300));
                reap();
                if self.pid().is_some() {
                    return Ok(());
                }
            }
            if self.pid().is_none() {
                anyhow::bail!("{} exited; see {}", self.name, self.log_file().display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "{} not ready after {timeout:?}; see {}",
            self.name,
            self.log_file().display()
        )
    }
}

/// Reaps exited children of `up` so pid checks see them gone.
pub fn reap() {
    // SAFETY: waitpid with WNOHANG on any child never blocks.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Where a component stands in start order: etcd, API servers, the
/// scheduler, the controller-manager, then agents.
fn start_rank(name: &str) -> usize {
    [
        "etcd",
        "apiserver",
        "scheduler",
        "controller-manager",
        "agent",
    ]
    .iter()
    .position(|p| name.starts_with(p))
    .unwrap_or(usize::MAX)
}

/// Every component with a pid file, in start order; `down` stops them in
/// reverse.
pub fn all_components() -> Vec<Component> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir().join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".pid").map(String::from)
        })
        .collect();
    names.sort_by(|a, b| (start_rank(a), a).cmp(&(start_rank(b), b)));
    names.into_iter().map(Component::named).collect()
}
