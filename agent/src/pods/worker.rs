//! One pod on this node: its sandbox, its containers through the runtime
//! helper, restarts with CrashLoopBackOff, the status Kubernetes users
//! read, and graceful termination.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::sandbox::{self, Sandbox};
use super::spec::{config_json, Bind, ContainerSpec};
use super::{logs, Env};
use crate::runtime::Exit;

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
        let mk = |c: &Container, init: bool| Run {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            init,
            attempt: statuses.get(&c.name).copied().unwrap_or(0).max(0) as u32,
            restarts: statuses.get(&c.name).copied().unwrap_or(0).max(0) as u32,
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
        };
        let mut runs: Vec<Run> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| mk(c, true))
            .collect();
        runs.extend(spec.containers.iter().map(|c| mk(c, false)));
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
        super::event(&self.env, &self.pod, type_, reason, message).await;
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
                crate::metrics::PODS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        crate::metrics::PODS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                .min()
                .map(|t| t.max(Instant::now()))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                changed = updates.changed() => {
                    let latest = updates.borrow().clone();
                    match (changed, latest) {
                        (Ok(()), Some(p)) => self.pod = p,
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

    async fn start(&mut self, i: usize) {
        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        let c: Container = if self.runs[i].init {
            pod_spec.init_containers.clone().unwrap_or_default()[i].clone()
        } else {
            let n = pod_spec.init_containers.as_ref().map_or(0, Vec::len);
            pod_spec.containers[i - n].clone()
        };
        let image_ref = c.image.clone().unwrap_or_default();
        let image = match self.image(&c, &image_ref).await {
            Ok(img) => img,
            Err((reason, why)) => {
                let run = &mut self.runs[i];
                let first = !matches!(&run.state, State::Waiting { reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff");
                run.backoff = if first {
                    INITIAL_BACKOFF
                } else {
                    (run.backoff * 2).min(MAX_BACKOFF)
                };
                run.next_start = Some(Instant::now() + run.backoff);
                let reason = if reason == "ErrImagePull" && !first {
                    "ImagePullBackOff".to_string()
                } else {
                    reason
                };
                run.state = State::Waiting {
                    message: if reason == "ImagePullBackOff" {
                        format!("Back-off pulling image {image_ref:?}: {why}")
                    } else {
                        why.clone()
                    },
                    reason,
                };
                self.event(
                    "Warning",
                    "Failed",
                    format!("Failed to pull image {image_ref:?}: {why}"),
                )
                .await;
                return;
            }
        };
        let pod_name = self.pod.name_any();
        let attempt = self.runs[i].attempt;
        let id = format!("{}_{}_{}", self.uid, c.name, attempt);
        let bundle = self
            .pod_dir()
            .join("containers")
            .join(format!("{}-{attempt}", c.name));
        let result = self.create(&c, &image, &bundle, &id, attempt).await;
        let run = &mut self.runs[i];
        match result {
            Ok((pid, tasks)) => {
                run.id = Some(id);
                run.pid = Some(pid);
                run.image_id = image.digest.clone();
                run.started_at = Some(Instant::now());
                run.next_start = None;
                run.logs = tasks;
                run.state = State::Running { started: now() };
                run.probes = super::probes::Prober::for_container(&c, Instant::now());
                run.ready = !run
                    .probes
                    .iter()
                    .any(|p| p.kind == super::probes::Kind::Readiness);
                let name = c.name.clone();
                self.event("Normal", "Started", format!("Started container {name}"))
                    .await;
            }
            Err(why) => {
                run.backoff = if run.backoff.is_zero() {
                    INITIAL_BACKOFF
                } else {
                    (run.backoff * 2).min(MAX_BACKOFF)
                };
                run.next_start = Some(Instant::now() + run.backoff);
                run.state = State::Waiting {
                    reason: "CreateContainerError".into(),
                    message: why.clone(),
                };
                let _ = self.env.runtime.delete(&id, true).await;
                sandbox::unmount(&bundle.join("rootfs"));
                self.event(
                    "Warning",
                    "Failed",
                    format!("Error: {why} (pod {pod_name})"),
                )
                .await;
            }
        }
    }

    /// The container's image: from the node's store, pulled when missing
    /// (for every pull policy but Never; Always does not re-pull an image
    /// already on the node, so nodes without a registry still start pods).
    async fn image(
        &self,
        c: &Container,
        image_ref: &str,
    ) -> Result<crate::image::Image, (String, String)> {
        let images = self.env.images.clone();
        let r = image_ref.to_string();
        let local = tokio::task::spawn_blocking(move || images.resolve(&r))
            .await
            .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?
            .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?;
        if let Some(img) = local {
            return Ok(img);
        }
        if c.image_pull_policy.as_deref() == Some("Never") {
            return Err((
                "ErrImageNeverPull".into(),
                format!("Container image {image_ref:?} is not present with pull policy of Never"),
            ));
        }
        let registry = crate::image::pull::registry_of(image_ref);
        let mut secrets = Vec::new();
        let ns = self.pod.namespace().unwrap_or_default();
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.env.client.clone(), &ns);
        for s in self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            if let Ok(secret) = api.get(&s.name).await {
                secrets.push(secret);
            }
        }
        let auth = crate::image::pull::auth_from_secrets(&registry, &secrets);
        self.event("Normal", "Pulling", format!("Pulling image {image_ref:?}"))
            .await;
        let t = Instant::now();
        match crate::image::pull::pull(
            &self.env.images,
            image_ref,
            auth,
            &self.env.insecure_registries,
        )
        .await
        {
            Ok(img) => {
                crate::metrics::IMAGE_PULL.observe(t.elapsed());
                self.event(
                    "Normal",
                    "Pulled",
                    format!(
                        "Successfully pulled image {image_ref:?} in {:.3}s",
                        t.elapsed().as_secs_f64()
                    ),
                )
                .await;
                Ok(img)
            }
            Err(e) => Err(("ErrImagePull".into(), e)),
        }
    }

    async fn create(
        &self,
        c: &Container,
        image: &crate::image::Image,
        bundle: &std::path::Path,
        id: &str,
        attempt: u32,
    ) -> Result<(i32, Vec<tokio::task::JoinHandle<()>>), String> {
        let rootfs = bundle.join("rootfs");
        sandbox::mount_rootfs(
            &image.layers,
            &bundle.join("upper"),
            &bundle.join("work"),
            &rootfs,
        )
        .map_err(|e| e.to_string())?;
        let cfg = &image.config;
        // Kubernetes' rule: command replaces the entrypoint, args the cmd.
        let args: Vec<String> = match (&c.command, &c.args) {
            (Some(cmd), Some(a)) => cmd.iter().chain(a).cloned().collect(),
            (Some(cmd), None) => cmd.clone(),
            (None, Some(a)) => cfg.entrypoint.iter().chain(a).cloned().collect(),
            (None, None) => cfg.entrypoint.iter().chain(&cfg.cmd).cloned().collect(),
        };
        if args.is_empty() {
            return Err("no command specified".into());
        }
        let mut env: Vec<String> = cfg.env.clone();
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => self.pod.name_any(),
                        Some("metadata.namespace") => self.pod.namespace().unwrap_or_default(),
                        Some("metadata.uid") => self.uid.clone(),
                        Some("spec.nodeName") => self.env.node_name.clone(),
                        Some("status.hostIP") => self.env.node_ip.clone().unwrap_or_default(),
                        Some("status.podIP") => self
                            .endpoint
                            .as_ref()
                            .map(|e| e.ip.to_string())
                            .unwrap_or_default(),
                        _ => String::new(),
                    }
                }
                (None, None) => String::new(),
            };
            env.retain(|x| !x.starts_with(&format!("{}=", e.name)));
            env.push(format!("{}={value}", e.name));
        }
        env.push(format!("HOSTNAME={}", self.pod.name_any()));
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        let (mut uid, mut gid) = parse_user(cfg.user.as_deref().unwrap_or(""), &rootfs);
        if let Some(u) = sc.run_as_user.or(pod_sc.run_as_user) {
            uid = u as u32;
        }
        if let Some(g) = sc.run_as_group.or(pod_sc.run_as_group) {
            gid = g as u32;
        }
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true) && uid == 0 {
            return Err("container has runAsNonRoot and image will run as root".into());
        }
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let cpu =
            |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                m.get("cpu")
                    .and_then(|q| apimachinery::quantity::cpu_millis(&q.0).ok())
            };
        let mut binds = vec![
            Bind {
                source: self.sandbox.dir.join("hosts"),
                destination: "/etc/hosts".into(),
                read_only: false,
            },
            Bind {
                source: self.sandbox.dir.join("hostname"),
                destination: "/etc/hostname".into(),
                read_only: false,
            },
            Bind {
                source: self.sandbox.dir.join("resolv.conf"),
                destination: "/etc/resolv.conf".into(),
                read_only: false,
            },
        ];
        for m in c.volume_mounts.iter().flatten() {
            let source = self.volume_path(&m.name).await?;
            binds.push(Bind {
                source,
                destination: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        let spec = ContainerSpec {
            rootfs: rootfs.clone(),
            args,
            env,
            cwd: c
                .working_dir
                .clone()
                .or_else(|| cfg.working_dir.clone())
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            groups: pod_sc
                .supplemental_groups
                .iter()
                .flatten()
                .filter_map(|g| u32::try_from(*g).ok())
                .collect(),
            hostname: self.pod.name_any(),
            netns: Some(self.sandbox.ns_path("net")),
            ipcns: Some(self.sandbox.ns_path("ipc")),
            utsns: Some(self.sandbox.ns_path("uts")),
            cgroups_path: format!("{}/pod{}/{id}", self.env.cgroup_root, self.uid),
            cpu_shares: cpu(&requests).map(|m| (m * 1024 / 1000).max(2) as u64),
            cpu_quota: cpu(&limits).map(|m| m * 100),
            memory_limit: limits
                .get("memory")
                .and_then(|q| apimachinery::quantity::value(&q.0).ok()),
            binds,
            privileged: sc.privileged == Some(true),
            read_only_rootfs: sc.read_only_root_filesystem == Some(true),
            caps_add: sc
                .capabilities
                .as_ref()
                .and_then(|c| c.add.clone())
                .unwrap_or_default(),
            caps_drop: sc
                .capabilities
                .as_ref()
                .and_then(|c| c.drop.clone())
                .unwrap_or_default(),
            no_new_privileges: sc.allow_privilege_escalation != Some(true)
                && sc.privileged != Some(true),
            seccomp: sc
                .seccomp_profile
                .as_ref()
                .or(pod_sc.seccomp_profile.as_ref())
                .is_none_or(|p| p.type_ != "Unconfined"),
        };
        std::fs::write(bundle.join("config.json"), config_json(&spec).to_string())
            .map_err(|e| e.to_string())?;
        let log = self.log_dir().join(&c.name).join(format!("{attempt}.log"));
        std::fs::create_dir_all(log.parent().unwrap_or(&self.env.log_dir))
            .map_err(|e| e.to_string())?;
        let mut tasks = Vec::new();
        for stream in ["stdout", "stderr"] {
            let fifo = bundle.join(stream);
            logs::mkfifo(&fifo).map_err(|e| e.to_string())?;
            tasks.push(
                logs::copy(
                    fifo,
                    log.clone(),
                    if stream == "stdout" {
                        "stdout"
                    } else {
                        "stderr"
                    },
                )
                .map_err(|e| e.to_string())?,
            );
        }
        let created = self
            .env
            .runtime
            .create(
                id,
                bundle,
                Some(bundle.join("stdout")),
                Some(bundle.join("stderr")),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.event("Normal", "Created", format!("Created container {}", c.name))
            .await;
        self.env
            .runtime
            .start(id)
            .await
            .map_err(|e| e.to_string())?;
        Ok((created.pid.unwrap_or(0), tasks))
    }

    /// The host directory behind a pod volume.
    async fn volume_path(&self, name: &str) -> Result<PathBuf, String> {
        let vol = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == name))
            .ok_or_else(|| format!("volume {name:?} is mounted but not defined"))?;
        let dir = self.pod_dir().join("volumes").join(name);
        if let Some(h) = &vol.host_path {
            return Ok(PathBuf::from(&h.path));
        }
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if vol.empty_dir.is_some() {
            return Ok(dir);
        }
        let ns = self.pod.namespace().unwrap_or_default();
        let files: BTreeMap<String, Vec<u8>> = if let Some(cm) = &vol.config_map {
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(self.env.client.clone(), &ns);
            let obj = api
                .get(&cm.name)
                .await
                .map_err(|e| format!("configmap {:?}: {e}", cm.name))?;
            obj.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        } else if let Some(s) = &vol.secret {
            let api: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(self.env.client.clone(), &ns);
            let name = s.secret_name.clone().unwrap_or_default();
            let obj = api
                .get(&name)
                .await
                .map_err(|e| format!("secret {name:?}: {e}"))?;
            obj.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else if vol.downward_api.is_some() {
            let labels = self
                .pod
                .labels()
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\"\n"))
                .collect::<String>();
            let annotations = self
                .pod
                .annotations()
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\"\n"))
                .collect::<String>();
            vol.downward_api
                .iter()
                .flat_map(|d| d.items.iter().flatten())
                .filter_map(|item| {
                    let path = item.field_ref.as_ref()?.field_path.as_str();
                    let value = match path {
                        "metadata.labels" => labels.clone(),
                        "metadata.annotations" => annotations.clone(),
                        "metadata.name" => self.pod.name_any(),
                        "metadata.namespace" => ns.clone(),
                        "metadata.uid" => self.uid.clone(),
                        _ => return None,
                    };
                    Some((item.path.clone(), value.into_bytes()))
                })
                .collect()
        } else {
            return Err(format!("volume {name:?}: only emptyDir, hostPath, configMap, secret and downwardAPI are supported"));
        };
        for (k, v) in files {
            if k.contains("..") || k.starts_with('/') {
                return Err(format!("volume {name:?}: bad key {k:?}"));
            }
            let p = dir.join(&k);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&p, v).map_err(|e| e.to_string())?;
        }
        Ok(dir)
    }

    async fn exited(&mut self, e: Exit) {
        let Some(i) = self.runs.iter().position(|r| r.pid == Some(e.pid)) else {
            return;
        };
        let id = self.runs[i].id.clone().unwrap_or_default();
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
        let restart = restart && !(r.init && e.code == 0);
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
    async fn terminate(&mut self, exits: &mut tokio::sync::broadcast::Receiver<Exit>) {
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
    async fn pre_stop(&self, grace: Duration) {
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
            (name, super::probes::exec_in(runtime, id, cmd, grace).await)
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

    async fn exited_for_good(&mut self, e: Exit) {
        if let Some(r) = self.runs.iter_mut().find(|r| r.pid == Some(e.pid)) {
            r.pid = None;
            if let Some(id) = r.id.take() {
                let _ = self.env.runtime.delete(&id, true).await;
            }
        }
    }

    /// Removes everything the pod left on the node.
    async fn teardown(&mut self) {
        if let Ok(list) = self.env.runtime.list().await {
            for c in list
                .iter()
                .filter(|c| c.id.starts_with(&format!("{}_", self.uid)))
            {
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
        let _ = self.sandbox.destroy();
        remove_cgroup(&format!("{}/pod{}", self.env.cgroup_root, self.uid));
        let _ = std::fs::remove_dir_all(self.pod_dir());
        let _ = std::fs::remove_dir_all(self.log_dir());
    }

    fn status(&self) -> Value {
        let policy = self.restart_policy();
        let apps: Vec<&Run> = self.runs.iter().filter(|r| !r.init).collect();
        let inits_done = self
            .runs
            .iter()
            .filter(|r| r.init)
            .all(|r| matches!(r.state, State::Terminated { code: 0, .. }));
        let running = apps
            .iter()
            .filter(|r| matches!(r.state, State::Running { .. }))
            .count();
        let all_started_once = apps.iter().all(|r| !matches!(r.state, State::Waiting { ref reason, .. } if reason == "ContainerCreating" || reason == "ErrImagePull" || reason == "ImagePullBackOff" || reason == "CreateContainerError"));
        let terminal: Vec<&&Run> = apps
            .iter()
            .filter(|r| matches!(r.state, State::Terminated { .. }) && r.next_start.is_none())
            .collect();
        let init_failed = self.runs.iter().any(|r| {
            r.init
                && matches!(r.state, State::Terminated { code, .. } if code != 0)
                && r.next_start.is_none()
        });
        let phase = if init_failed {
            "Failed"
        } else if !apps.is_empty() && terminal.len() == apps.len() {
            if terminal
                .iter()
                .all(|r| matches!(r.state, State::Terminated { code: 0, .. }))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if running > 0 || (inits_done && all_started_once && policy != "Never") {
            "Running"
        } else {
            "Pending"
        };
        let ready = running == apps.len() && !apps.is_empty() && apps.iter().all(|r| r.ready);
        let ts = now();
        let old = self.pod.status.clone().unwrap_or_default();
        let since = |t: &str, status: &str| {
            old.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == t && c.status == status)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| ts.clone())
        };
        let cond = |t: &str, ok: bool| {
            let s = if ok { "True" } else { "False" };
            json!({"type": t, "status": s, "lastTransitionTime": since(t, s)})
        };
        let state_json = |s: &State| match s {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            State::Running { started } => json!({"running": {"startedAt": started}}),
            State::Terminated {
                code,
                signal,
                reason,
                started,
                finished,
            } => {
                let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished});
                if let Some(sig) = signal {
                    t["signal"] = json!(sig);
                }
                json!({"terminated": t})
            }
        };
        let container_status = |r: &Run| {
            let mut v = json!({
                "name": r.name, "image": r.image, "imageID": r.image_id,
                "ready": matches!(r.state, State::Running { .. }) && r.ready,
                "started": matches!(r.state, State::Running { .. }),
                "restartCount": r.restarts,
                "state": state_json(&r.state),
                "lastState": r.last.as_ref().map(state_json).unwrap_or_else(|| json!({})),
            });
            if let Some(id) = &r.id {
                v["containerID"] = json!(format!("libcontainer://{id}"));
            }
            v
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", self.sandbox.exists()),
                cond("Initialized", inits_done),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", true),
            ],
            "containerStatuses": apps.iter().map(|r| container_status(r)).collect::<Vec<_>>(),
            "qosClass": old.qos_class.clone().unwrap_or_else(|| "BestEffort".into()),
        });
        if self.runs.iter().any(|r| r.init) {
            status["initContainerStatuses"] = json!(self
                .runs
                .iter()
                .filter(|r| r.init)
                .map(container_status)
                .collect::<Vec<_>>());
        }
        if let Some(t) = &self.start_time {
            status["startTime"] = json!(t);
        }
        if let Some(ep) = &self.endpoint {
            status["podIP"] = json!(ep.ip.to_string());
            status["podIPs"] = json!([{"ip": ep.ip.to_string()}]);
        }
        if let Some(ip) = &self.env.node_ip {
            status["hostIP"] = json!(ip);
            status["hostIPs"] = json!([{"ip": ip}]);
        }
        status
    }

    /// Patches the pod's status when it changed.
    async fn report(&mut self) {
        let status = self.status();
        if self.reported.as_ref() == Some(&status) {
            return;
        }
        // First seen running by this agent (an adopted pod was running
        // already and says nothing about start-up).
        if status["phase"] == "Running" && !self.start_seen {
            self.start_seen = true;
            if let Some(created) = &self.pod.metadata.creation_timestamp {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
                if let Ok(d) = std::time::Duration::try_from(age) {
                    crate::metrics::POD_START.observe(d);
                }
            }
        }
        let api: Api<Pod> = Api::namespaced(
            self.env.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        match api
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(p) => {
                self.pod = Arc::new(p);
                self.reported = Some(status);
            }
            Err(e) => tracing::debug!("reporting pod {}: {e}", self.pod.name_any()),
        }
    }
}

/// uid and gid from an image's `User` (`uid`, `uid:gid`, or a name looked
/// up in the image's /etc/passwd).
fn parse_user(user: &str, rootfs: &std::path::Path) -> (u32, u32) {
    if user.is_empty() {
        return (0, 0);
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let lookup = |name: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup(u).unwrap_or((0, 0)),
    };
    if let Ok(n) = g.parse::<u32>() {
        gid = n;
    }
    (uid, gid)
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
pub async fn cleanup_orphan(env: &super::Env, uid: &str) {
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
