//! One pod on this node: its sandbox, its containers through the runtime
//! helper, restarts with CrashLoopBackOff, the status Kubernetes users
//! read, and graceful termination.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::ResourceExt;
use serde_json::Value;
use tokio::sync::watch;

use super::sandbox::{self, Sandbox};
use super::{logs, Env};

mod container;
mod service_env;
mod status;
mod termination;
mod token;
mod volumes;

pub use termination::{cleanup_orphan, remove_cgroup};

/// An ephemeral container as the container it runs as: the same fields,
/// less the target.
fn ephemeral_as_container(c: &k8s_openapi::api::core::v1::EphemeralContainer) -> Container {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("targetContainerName");
    }
    serde_json::from_value(v).unwrap_or_else(|_| Container {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        ..Default::default()
    })
}

const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started: String,
    },
    Terminated {
        code: i32,
        signal: Option<i32>,
        reason: String,
        started: String,
        finished: String,
    },
}

struct Run {
    name: String,
    image: String,
    image_id: String,
    init: bool,
    /// An ephemeral container: started once, never restarted, not part of
    /// the pod's phase or readiness.
    ephemeral: bool,
    attempt: u32,
    restarts: u32,
    id: Option<String>,
    pid: Option<i32>,
    state: State,
    last: Option<State>,
    started_at: Option<Instant>,
    backoff: Duration,
    next_start: Option<Instant>,
    logs: Vec<tokio::task::JoinHandle<()>>,
    probes: Vec<super::probes::Prober>,
    /// Readiness: true without a readiness probe once running.
    ready: bool,
}

impl Run {
    /// A container not yet created, due to start at once.
    fn waiting(c: &Container, init: bool, ephemeral: bool, restarts: u32) -> Self {
        Run {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            init,
            ephemeral,
            attempt: restarts,
            restarts,
            id: None,
            pid: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            started_at: None,
            backoff: Duration::ZERO,
            next_start: Some(Instant::now()),
            logs: Vec::new(),
            probes: Vec::new(),
            ready: false,
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A pod's worker; `run` drives it until the pod is gone.
pub struct Worker {
    env: Arc<Env>,
    pod: Arc<Pod>,
    uid: String,
    sandbox: Sandbox,
    runs: Vec<Run>,
    start_time: Option<String>,
    reported: Option<Value>,
    /// The pod's network attachment, once made (saved in the sandbox so a
    /// restarted agent finds it again).
    endpoint: Option<crate::network::Endpoint>,
    /// Whether the pod's start-up was measured (or cannot be: adopted).
    start_seen: bool,
    /// Why the agent refuses to run the pod at all (it then reports the
    /// pod Failed with that message).
    refused: Option<String>,
    /// The pod's ServiceAccount tokens, for its projected volumes.
    tokens: std::sync::Mutex<token::Tokens>,
}

impl Worker {
    pub fn new(env: Arc<Env>, pod: Arc<Pod>) -> Self {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses: BTreeMap<String, i32> = pod
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .map(|c| (c.name.clone(), c.restart_count))
            .collect();
        let mk = |c: &Container, init: bool| {
            let restarts = statuses.get(&c.name).copied().unwrap_or(0).max(0) as u32;
            Run::waiting(c, init, false, restarts)
        };
        let mut runs: Vec<Run> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| mk(c, true))
            .collect();
        runs.extend(spec.containers.iter().map(|c| mk(c, false)));
        for c in spec.ephemeral_containers.iter().flatten() {
            let mut r = Run::waiting(&ephemeral_as_container(c), false, true, 0);
            // One that already ran (before an agent restart) is not run
            // again; `adopt` finds it if it still runs.
            let seen = pod
                .status
                .iter()
                .flat_map(|s| s.ephemeral_container_statuses.iter().flatten())
                .find(|s| s.name == c.name)
                .and_then(|s| s.state.as_ref())
                .filter(|s| s.waiting.is_none());
            if let Some(st) = seen {
                let t = st.terminated.as_ref();
                r.next_start = None;
                r.state = State::Terminated {
                    code: t.map_or(137, |t| t.exit_code),
                    signal: t.and_then(|t| t.signal),
                    reason: t
                        .and_then(|t| t.reason.clone())
                        .unwrap_or_else(|| "Error".into()),
                    started: now(),
                    finished: now(),
                };
            }
            runs.push(r);
        }
        Self {
            sandbox: Sandbox::new(env.pods_dir.join(&uid).join("sandbox")),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string()),
            env,
            pod,
            uid,
            runs,
            reported: None,
            endpoint: None,
            start_seen: false,
            refused: None,
            tokens: Default::default(),
        }
    }

    fn endpoint_file(&self) -> PathBuf {
        self.sandbox.dir.join("network.json")
    }

    /// Gives the sandbox its network: the saved attachment when a previous
    /// agent made one, else a new one.
    async fn ensure_network(&mut self) -> Result<(), String> {
        if self.endpoint.is_some() {
            return Ok(());
        }
        let saved = std::fs::read(self.endpoint_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::network::Endpoint>(&b).ok());
        if let Some(ep) = saved {
            self.env
                .network
                .readopt(&ep)
                .map_err(|e| format!("{e:#}"))?;
            self.env.policy.pod_attached(&self.pod, ep.ip).await;
            self.endpoint = Some(ep);
            return Ok(());
        }
        let ep = self
            .env
            .network
            .attach(&self.uid, &self.sandbox.ns_path("net"))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let json = serde_json::to_vec(&ep).map_err(|e| e.to_string())?;
        if let Err(e) = std::fs::write(self.endpoint_file(), json) {
            self.env
                .network
                .detach(&self.uid, &self.sandbox.ns_path("net"), Some(&ep))
                .await;
            return Err(format!("saving the pod's network state: {e}"));
        }
        // The pod's policy is in the maps before any of its containers runs.
        self.env.policy.pod_attached(&self.pod, ep.ip).await;
        tracing::info!(pod = %self.pod.name_any(), ip = %ep.ip, "pod network attached");
        self.endpoint = Some(ep);
        Ok(())
    }

    fn pod_dir(&self) -> PathBuf {
        self.env.pods_dir.join(&self.uid)
    }

    fn log_dir(&self) -> PathBuf {
        self.env.log_dir.join(format!(
            "{}_{}_{}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any(),
            self.uid
        ))
    }

    async fn event(&self, type_: &str, reason: &str, message: String) {
        super::event(&self.env, &self.pod, type_, reason, message);
    }

    /// Finds containers a previous agent started for this pod.
    async fn adopt(&mut self) {
        let Ok(list) = self.env.runtime.list().await else {
            return;
        };
        let prefix = format!("{}_", self.uid);
        for c in list.into_iter().filter(|c| c.id.starts_with(&prefix)) {
            let mut parts = c.id[prefix.len()..].rsplitn(2, '_');
            let (Some(attempt), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let attempt: u32 = attempt.parse().unwrap_or(0);
            let uid = self.uid.clone();
            let Some(r) = self.runs.iter_mut().find(|r| r.name == name) else {
                continue;
            };
            if c.status == "running" {
                r.attempt = attempt;
                r.id = Some(c.id.clone());
                r.pid = c.pid;
                r.next_start = None;
                r.started_at = Some(Instant::now());
                let started = self
                    .pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.iter().find(|s| s.name == name))
                    .and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.as_ref())
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(now);
                r.state = State::Running { started };
                let spec_c = self
                    .pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .find(|x| x.name == name)
                    .cloned()
                    .unwrap_or_default();
                r.probes = super::probes::Prober::for_container(&spec_c, Instant::now());
                r.ready = !r
                    .probes
                    .iter()
                    .any(|p| p.kind == super::probes::Kind::Readiness);
                let bundle = c.bundle.clone();
                // A restarted agent holds the stdin FIFO again.
                if bundle.join("stdin").exists() {
                    let _ = crate::attach::open_stdin(&c.id, &bundle.join("stdin"), false);
                }
                let log = self
                    .env
                    .log_dir
                    .join(format!(
                        "{}_{}_{uid}",
                        self.pod.namespace().unwrap_or_default(),
                        self.pod.name_any()
                    ))
                    .join(&r.name)
                    .join(format!("{attempt}.log"));
                for (fifo, stream) in [
                    (bundle.join("stdout"), "stdout"),
                    (bundle.join("stderr"), "stderr"),
                ] {
                    if let Ok(t) = logs::copy(fifo, log.clone(), stream) {
                        r.logs.push(t);
                    }
                }
                self.start_seen = true;
                tracing::info!("adopted running container {}", c.id);
            } else {
                // It stopped while no agent watched: its exit is known to the
                // helper, or lost with a reboot.
                let exit = c.pid.and_then(|p| self.env.runtime.recent_exit(p));
                let _ = self.env.runtime.delete(&c.id, true).await;
                sandbox::unmount(&c.bundle.join("rootfs"));
                if let Some(r) = self.runs.iter_mut().find(|r| r.name == name) {
                    r.attempt = attempt;
                    r.state = State::Terminated {
                        code: exit.map(|e| e.code).unwrap_or(137),
                        signal: exit.and_then(|e| e.signal),
                        reason: "Error".into(),
                        started: now(),
                        finished: now(),
                    };
                }
            }
        }
    }

    /// Runs until the pod is gone or deleted and cleaned up.
    pub async fn run(mut self, mut updates: watch::Receiver<Option<Arc<Pod>>>) {
        // Counted while this worker lives, whichever way it ends.
        struct Running;
        impl Drop for Running {
            fn drop(&mut self) {
                crate::metrics::METRICS.pods.dec();
            }
        }
        crate::metrics::METRICS.pods.inc();
        let _running = Running;
        let mut exits = self.env.runtime.exits();
        self.adopt().await;
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&mut exits).await;
                self.teardown().await;
                let api: Api<Pod> = Api::namespaced(
                    self.env.client.clone(),
                    &self.pod.namespace().unwrap_or_default(),
                );
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: self.pod.uid(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                if let Err(e) = api.delete(&self.pod.name_any(), &dp).await {
                    tracing::debug!("releasing pod {}: {e}", self.pod.name_any());
                }
                return;
            }
            self.reconcile().await;
            self.report().await;
            self.probe().await;
            self.renew_tokens().await;
            let wake = self
                .runs
                .iter()
                .filter_map(|r| r.next_start)
                .chain(
                    self.runs
                        .iter()
                        .filter(|r| r.pid.is_some())
                        .flat_map(|r| r.probes.iter().map(|p| p.next)),
                )
                .chain(self.token_wake())
                .min()
                .map(|t| t.max(Instant::now()))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                changed = updates.changed() => {
                    let latest = updates.borrow().clone();
                    match (changed, latest) {
                        (Ok(()), Some(p)) => {
                            self.pod = p;
                            self.add_ephemeral();
                        }
                        _ => {
                            // Gone from the API: stop everything without
                            // telling anyone.
                            self.terminate(&mut exits).await;
                            self.teardown().await;
                            return;
                        }
                    }
                }
                e = exits.recv() => {
                    if let Ok(e) = e {
                        self.exited(e).await;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Ephemeral containers added to the pod since the worker last looked:
    /// each is started once.
    fn add_ephemeral(&mut self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        for c in spec.ephemeral_containers.iter().flatten() {
            if self.runs.iter().any(|r| r.name == c.name) {
                continue;
            }
            self.runs
                .push(Run::waiting(&ephemeral_as_container(c), false, true, 0));
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// The pod's app containers (not its init containers).
    fn app_containers(&self) -> Vec<Container> {
        self.pod
            .spec
            .iter()
            .flat_map(|s| s.containers.clone())
            .collect()
    }

    /// Runs the probes that are due. A failed startup or liveness probe
    /// kills the container (its restart policy then applies); readiness
    /// only flips the Ready condition.
    async fn probe(&mut self) {
        use super::probes::Kind;
        let netns = self.sandbox.ns_path("net");
        let containers = self.app_containers();
        for i in 0..self.runs.len() {
            let (Some(id), Some(_)) = (self.runs[i].id.clone(), self.runs[i].pid) else {
                continue;
            };
            let ports: Vec<(String, i32)> = containers
                .iter()
                .find(|c| c.name == self.runs[i].name)
                .into_iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                .collect();
            let started = self.runs[i]
                .probes
                .iter()
                .find(|p| p.kind == Kind::Startup)
                .is_none_or(|p| p.passing == Some(true));
            for j in 0..self.runs[i].probes.len() {
                let p = &self.runs[i].probes[j];
                if p.next > Instant::now() || (p.kind != Kind::Startup && !started) {
                    continue;
                }
                let kind = p.kind;
                let result = p.check(&self.env.runtime, &id, netns.clone(), &ports).await;
                let verdict = self.runs[i].probes[j].record(result.is_ok());
                if let Err(why) = &result {
                    let name = self.runs[i].name.clone();
                    self.event(
                        "Warning",
                        "Unhealthy",
                        format!("{} probe failed: {why} (container {name})", kind.name()),
                    )
                    .await;
                }
                match (kind, verdict) {
                    (Kind::Readiness, Some(v)) => self.runs[i].ready = v,
                    (Kind::Liveness | Kind::Startup, Some(false)) => {
                        let name = self.runs[i].name.clone();
                        self.event(
                            "Normal",
                            "Killing",
                            format!(
                                "Container {name} failed {} probe, will be restarted",
                                kind.name().to_lowercase()
                            ),
                        )
                        .await;
                        let _ = self.env.runtime.kill(&id, libc::SIGKILL).await;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Starts what should run now: init containers one by one, then the app
    /// containers.
    async fn reconcile(&mut self) {
        if self.refused.is_some() {
            return;
        }
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
        if let Some(why) = volumes.and_then(volumes::invalid_volume) {
            self.event("Warning", "InvalidVolume", format!("Pod refused: {why}"))
                .await;
            for r in &mut self.runs {
                r.next_start = None;
                r.state = State::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: why.clone(),
                };
            }
            self.refused = Some(why);
            return;
        }
        if !self.sandbox.exists() {
            let name = self.pod.name_any();
            let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name}\n");
            let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let resolv =
                crate::dns::resolv::resolv_conf(&self.pod, self.env.dns.as_ref(), &node_resolv);
            if let Err(e) = self.sandbox.create(&name, &hosts, &resolv) {
                self.event(
                    "Warning",
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e}"),
                )
                .await;
                for r in &mut self.runs {
                    r.next_start = Some(Instant::now() + Duration::from_secs(5));
                }
                return;
            }
            self.start_time.get_or_insert_with(now);
        }
        if let Err(e) = self.ensure_network().await {
            self.event(
                "Warning",
                "FailedCreatePodSandBox",
                format!("Failed to set up the pod network: {e}"),
            )
            .await;
            for r in &mut self.runs {
                r.next_start = Some(Instant::now() + Duration::from_secs(5));
            }
            return;
        }
        for i in 0..self.runs.len() {
            let r = &self.runs[i];
            if r.init {
                match &r.state {
                    State::Terminated { code: 0, .. } => continue,
                    State::Running { .. } => return,
                    _ => {}
                }
            }
            let due = r.pid.is_none() && r.next_start.is_some_and(|t| t <= Instant::now());
            if due {
                self.start(i).await;
            }
            if self.runs[i].init {
                // The next init container waits for this one to succeed.
                return;
            }
        }
    }
}
