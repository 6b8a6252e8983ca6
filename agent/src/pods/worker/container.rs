//! Starting one container: its image (pulled when missing), its bundle
//! (overlay rootfs, config.json, log FIFOs) and the runtime calls.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::Container;
use kube::api::Api;
use kube::ResourceExt;

use super::{now, State, Worker, INITIAL_BACKOFF, MAX_BACKOFF};
use crate::pods::logs;
use crate::pods::sandbox;
use crate::pods::spec::{config_json, Bind, ContainerSpec};

impl Worker {
    pub(super) async fn start(&mut self, i: usize) {
        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        let mut target_pid = None;
        let c: Container = if self.runs[i].ephemeral {
            let Some(e) = pod_spec
                .ephemeral_containers
                .iter()
                .flatten()
                .find(|e| e.name == self.runs[i].name)
            else {
                self.runs[i].next_start = None;
                return;
            };
            // It shares the target's processes when the target runs.
            target_pid = e.target_container_name.as_ref().and_then(|t| {
                self.runs
                    .iter()
                    .find(|r| &r.name == t && !r.ephemeral)
                    .and_then(|r| r.pid)
            });
            super::ephemeral_as_container(e)
        } else if self.runs[i].init {
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
        let result = self
            .create(&c, &image, &bundle, &id, attempt, target_pid)
            .await;
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
                run.probes = crate::pods::probes::Prober::for_container(&c, Instant::now());
                run.ready = !run
                    .probes
                    .iter()
                    .any(|p| p.kind == crate::pods::probes::Kind::Readiness);
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
    pub(super) async fn image(
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
                crate::metrics::METRICS.image_pull.observe(t.elapsed());
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

    pub(super) async fn create(
        &self,
        c: &Container,
        image: &crate::image::Image,
        bundle: &std::path::Path,
        id: &str,
        attempt: u32,
        target_pid: Option<i32>,
    ) -> Result<(i32, Vec<tokio::task::JoinHandle<()>>), String> {
        let rootfs = bundle.join("rootfs");
        crate::pods::private_dir(&self.pod_dir()).map_err(|e| e.to_string())?;
        crate::pods::private_dir(bundle).map_err(|e| e.to_string())?;
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
        // The API server's variables go over the image's and under the
        // container's own, as kubelet orders them.
        for var in self.api_server_env().await {
            if let Some((name, _)) = var.split_once('=') {
                env.retain(|x| !x.starts_with(&format!("{name}=")));
            }
            env.push(var);
        }
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
                source: source.path,
                destination: m.mount_path.clone(),
                read_only: source.read_only || m.read_only.unwrap_or(false),
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
            pidns: target_pid.map(|p| std::path::PathBuf::from(format!("/proc/{p}/ns/pid"))),
            terminal: c.tty == Some(true),
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
        write_private(
            &bundle.join("config.json"),
            config_json(&spec).to_string().as_bytes(),
        )
        .map_err(|e| format!("writing config.json: {e}"))?;
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
        if c.tty == Some(true) {
            let (pid, task) = self.create_tty(c, bundle, id, &log).await?;
            tasks.push(task);
            return self.started(c, id, tasks, pid).await;
        }
        // A container that asks for stdin reads a FIFO that attach writes.
        let stdin = match c.stdin == Some(true) {
            true => {
                let fifo = bundle.join("stdin");
                let _ = std::fs::remove_file(&fifo);
                logs::mkfifo(&fifo).map_err(|e| e.to_string())?;
                crate::attach::open_stdin(id, &fifo, c.stdin_once == Some(true))
                    .map_err(|e| format!("opening the stdin of {}: {e}", c.name))?;
                Some(fifo)
            }
            false => None,
        };
        let created = self
            .env
            .runtime
            .create(
                id,
                bundle,
                Some(bundle.join("stdout")),
                Some(bundle.join("stderr")),
                stdin,
            )
            .await
            .map_err(|e| {
                crate::attach::close_stdin(id);
                e.to_string()
            })?;
        self.started(c, id, tasks, created.pid).await
    }

    /// Starts a created container; its pid and log copiers.
    async fn started(
        &self,
        c: &Container,
        id: &str,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        created_pid: Option<i32>,
    ) -> Result<(i32, Vec<tokio::task::JoinHandle<()>>), String> {
        self.event("Normal", "Created", format!("Created container {}", c.name))
            .await;
        let started = self
            .env
            .runtime
            .start(id)
            .await
            .map_err(|e| e.to_string())?;
        Ok((created_pid.or(started.pid).unwrap_or(0), tasks))
    }

    /// Creates a container whose process runs on a PTY (`tty: true`): the
    /// agent keeps the master, copies what the process writes to its log
    /// and lets attach write to it.
    async fn create_tty(
        &self,
        c: &Container,
        bundle: &std::path::Path,
        id: &str,
        log: &std::path::Path,
    ) -> Result<(Option<i32>, tokio::task::JoinHandle<()>), String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // A unix socket's path must fit in 108 bytes: a short name.
        let console = self.env.pods_dir.join(format!("tty-{nanos:x}.sock"));
        let _ = std::fs::remove_file(&console);
        let listener = tokio::net::UnixListener::bind(&console)
            .map_err(|e| format!("console socket {}: {e}", console.display()))?;
        let created = self
            .env
            .runtime
            .create_tty(id, bundle, console.clone())
            .await;
        let _ = std::fs::remove_file(&console);
        let created = created.map_err(|e| e.to_string())?;
        let master = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::exec::recv_master(&listener),
        )
        .await
        .map_err(|_| "the container sent no terminal".to_string())?
        .map_err(|e| format!("the container's terminal: {e}"))?;
        let master = std::fs::File::from(master);
        let reader = master.try_clone().map_err(|e| e.to_string())?;
        crate::attach::open_terminal(id, master, c.stdin_once == Some(true));
        let log = log.to_path_buf();
        Ok((
            created.pid,
            tokio::task::spawn_blocking(move || logs::copy_terminal(reader, &log)),
        ))
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

/// Writes a file only root may read (config.json holds the container's
/// environment, secrets included), whatever mode an older file had.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)
}
