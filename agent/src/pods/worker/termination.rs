//! A container's exit and restart policy, the pod's graceful termination
//! (preStop hooks, SIGTERM, the grace period, SIGKILL) and the removal of
//! what a pod leaves on the node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::{now, State, Worker, INITIAL_BACKOFF, MAX_BACKOFF};
use crate::pods::sandbox::{self, Sandbox};
use crate::runtime::Exit;

impl Worker {
    pub(super) async fn exited(&mut self, e: Exit) {
        let Some(i) = self.runs.iter().position(|r| r.pid == Some(e.pid)) else {
            return;
        };
        let id = self.runs[i].id.clone().unwrap_or_default();
        crate::attach::close_stdin(&id);
        let oom = oom_killed(&self.env.cgroup_root, &self.uid, &id);
        let _ = self.env.runtime.delete(&id, true).await;
        let bundle = self
            .pod_dir()
            .join("containers")
            .join(format!("{}-{}", self.runs[i].name, self.runs[i].attempt));
        sandbox::unmount(&bundle.join("rootfs"));
        let policy = self.restart_policy().to_string();
        let r = &mut self.runs[i];
        // Let the log copiers drain what the container wrote last.
        let tasks = std::mem::take(&mut r.logs);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for t in tasks {
                t.abort();
            }
        });
        let started = match &r.state {
            State::Running { started } => started.clone(),
            _ => now(),
        };
        let reason = if oom {
            "OOMKilled"
        } else if e.code == 0 {
            "Completed"
        } else {
            "Error"
        };
        r.pid = None;
        r.id = None;
        r.state = State::Terminated {
            code: e.code,
            signal: e.signal,
            reason: reason.into(),
            started,
            finished: now(),
        };
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => e.code != 0,
            _ => !r.init || e.code != 0,
        };
        let restart = restart && !(r.init && e.code == 0) && !r.ephemeral;
        if restart {
            // Ten minutes of running resets the backoff, as in kubelet.
            if r.started_at
                .is_some_and(|s| s.elapsed() > Duration::from_secs(600))
            {
                r.backoff = Duration::ZERO;
            }
            r.next_start = Some(Instant::now() + r.backoff);
            r.backoff = if r.backoff.is_zero() {
                INITIAL_BACKOFF
            } else {
                (r.backoff * 2).min(MAX_BACKOFF)
            };
            r.last = Some(r.state.clone());
            r.attempt += 1;
            r.restarts += 1;
            if r.next_start > Some(Instant::now()) {
                r.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        r.backoff.as_secs() / 2,
                        r.name,
                        self.pod.name_any(),
                        self.pod.namespace().unwrap_or_default(),
                        self.uid
                    ),
                };
            }
        } else {
            r.next_start = None;
        }
        if reason == "OOMKilled" {
            let name = r.name.clone();
            self.event(
                "Warning",
                "OOMKilled",
                format!("Container {name} was killed: out of memory"),
            )
            .await;
        }
    }

    /// SIGTERM, the grace period, then SIGKILL, for every running container.
    pub(super) async fn terminate(&mut self, exits: &mut tokio::sync::broadcast::Receiver<Exit>) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        let running: Vec<String> = self.runs.iter().filter_map(|r| r.id.clone()).collect();
        if running.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
        self.pre_stop(Duration::from_secs(grace)).await;
        for id in &running {
            let _ = self.env.runtime.kill(id, libc::SIGTERM).await;
        }
        // As kubelet does, a hook that used up the grace period still
        // leaves the containers a moment to act on SIGTERM.
        let floor = tokio::time::Instant::now() + Duration::from_secs(grace.min(2));
        let deadline = deadline.max(floor);
        while self.runs.iter().any(|r| r.pid.is_some()) {
            match tokio::time::timeout_at(deadline, exits.recv()).await {
                Ok(Ok(e)) => self.exited_for_good(e).await,
                Ok(Err(_)) => {}
                Err(_) => break,
            }
        }
        for r in self.runs.iter().filter(|r| r.pid.is_some()) {
            if let Some(id) = &r.id {
                let _ = self.env.runtime.kill(id, libc::SIGKILL).await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.runs.iter().any(|r| r.pid.is_some()) {
            match tokio::time::timeout_at(deadline, exits.recv()).await {
                Ok(Ok(e)) => self.exited_for_good(e).await,
                Ok(Err(_)) => {}
                Err(_) => break,
            }
        }
    }

    /// Runs the preStop exec hooks of the running containers, all at once,
    /// for at most `grace`; a failing hook is an event, not a reason to
    /// keep the container.
    pub(super) async fn pre_stop(&self, grace: Duration) {
        let containers = self.app_containers();
        let hooks: Vec<(String, String, Vec<String>)> = self
            .runs
            .iter()
            .filter(|r| r.pid.is_some())
            .filter_map(|r| {
                let c = containers.iter().find(|c| c.name == r.name)?;
                let cmd = c
                    .lifecycle
                    .as_ref()?
                    .pre_stop
                    .as_ref()?
                    .exec
                    .as_ref()?
                    .command
                    .clone()?;
                Some((r.id.clone()?, r.name.clone(), cmd))
            })
            .collect();
        let runtime = &self.env.runtime;
        let results = futures::future::join_all(hooks.iter().map(|(id, name, cmd)| async move {
            (
                name,
                crate::pods::probes::exec_in(runtime, id, cmd, grace).await,
            )
        }))
        .await;
        for (name, result) in results {
            if let Err(why) = result {
                self.event(
                    "Warning",
                    "FailedPreStopHook",
                    format!("PreStopHook failed in container {name}: {why}"),
                )
                .await;
            }
        }
    }

    pub(super) async fn exited_for_good(&mut self, e: Exit) {
        if let Some(r) = self.runs.iter_mut().find(|r| r.pid == Some(e.pid)) {
            r.pid = None;
            if let Some(id) = r.id.take() {
                crate::attach::close_stdin(&id);
                let _ = self.env.runtime.delete(&id, true).await;
            }
        }
    }

    /// Removes everything the pod left on the node.
    pub(super) async fn teardown(&mut self) {
        if let Ok(list) = self.env.runtime.list().await {
            for c in list
                .iter()
                .filter(|c| c.id.starts_with(&format!("{}_", self.uid)))
            {
                crate::attach::close_stdin(&c.id);
                let _ = self.env.runtime.delete(&c.id, true).await;
            }
        }
        for r in &mut self.runs {
            for t in r.logs.drain(..) {
                t.abort();
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.pod_dir().join("containers")) {
            for e in entries.flatten() {
                sandbox::unmount(&e.path().join("rootfs"));
            }
        }
        self.env
            .network
            .detach(
                &self.uid,
                &self.sandbox.ns_path("net"),
                self.endpoint.take().as_ref(),
            )
            .await;
        self.env
            .policy
            .pod_detached(
                self.pod.namespace().as_deref().unwrap_or_default(),
                &self.pod.name_any(),
            )
            .await;
        let _ = self.sandbox.destroy();
        remove_cgroup(&format!("{}/pod{}", self.env.cgroup_root, self.uid));
        let _ = std::fs::remove_dir_all(self.pod_dir());
        let _ = std::fs::remove_dir_all(self.log_dir());
    }
}

/// Whether the kernel's OOM killer hit the container's cgroup.
fn oom_killed(root: &str, pod_uid: &str, id: &str) -> bool {
    let rel = format!("{}/pod{pod_uid}/{id}", root.trim_start_matches('/'));
    let v1 = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"))
        .unwrap_or_default();
    let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|b| std::fs::read_to_string(format!("{b}/{rel}/memory.events")).unwrap_or_default())
        .collect::<String>();
    v1.lines().chain(v2.lines()).any(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// Removes what a pod that no longer exists left on the node (found when
/// the agent starts).
pub async fn cleanup_orphan(env: &crate::pods::Env, uid: &str) {
    if let Ok(list) = env.runtime.list().await {
        for c in list.iter().filter(|c| c.id.starts_with(&format!("{uid}_"))) {
            let _ = env.runtime.delete(&c.id, true).await;
        }
    }
    let dir = env.pods_dir.join(uid);
    if let Ok(entries) = std::fs::read_dir(dir.join("containers")) {
        for e in entries.flatten() {
            sandbox::unmount(&e.path().join("rootfs"));
        }
    }
    let sandbox = Sandbox::new(dir.join("sandbox"));
    let saved = std::fs::read(sandbox.dir.join("network.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::network::Endpoint>(&b).ok());
    env.network
        .detach(uid, &sandbox.ns_path("net"), saved.as_ref())
        .await;
    let _ = sandbox.destroy();
    remove_cgroup(&format!("{}/pod{uid}", env.cgroup_root));
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(entries) = std::fs::read_dir(&env.log_dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .ends_with(&format!("_{uid}"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tracing::info!("cleaned up after pod {uid}, which no longer exists");
}

/// Removes a pod's cgroup directory (and its empty children) from every
/// hierarchy; libcontainer removes only the containers' own leaves.
pub fn remove_cgroup(path: &str) {
    let rel = path.trim_start_matches('/');
    let mut bases = vec![
        PathBuf::from("/sys/fs/cgroup"),
        PathBuf::from("/sys/fs/cgroup/unified"),
    ];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        bases.extend(entries.flatten().map(|e| e.path()));
    }
    for b in bases {
        let dir = b.join(rel);
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}
