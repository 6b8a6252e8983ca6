//! Pods on this node: the manager watches the pods bound here and runs one
//! worker per pod (sandbox, containers, status, termination).

pub mod atomic_writer;
pub mod logs;
pub mod probes;
pub mod sandbox;
pub mod spec;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kit::watch::{Change, Store};
use kube::api::Api;
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio::sync::watch;

use crate::image::ImageStore;
use crate::runtime::Runtime;

/// What every pod worker shares.
pub struct Env {
    pub client: kube::Client,
    /// Events about pods, written in the background.
    pub recorder: kit::events::Recorder,
    pub runtime: Runtime,
    pub images: ImageStore,
    pub node_name: String,
    pub node_ip: Option<String>,
    pub pods_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Pod cgroups live under this path in every hierarchy.
    pub cgroup_root: String,
    /// Registries pulled from over plain HTTP (besides loopback ones).
    pub insecure_registries: Vec<String>,
    /// Pod addresses, veths and the datapath.
    pub network: Arc<crate::network::Network>,
    /// NetworkPolicy: pods' entries are written before their containers start.
    pub policy: Arc<crate::policy::Engine>,
    /// The cluster DNS ClusterFirst pods use, if the agent serves one.
    pub dns: Option<crate::dns::ClusterDns>,
}

/// Creates `dir` (and its parents) and makes it reachable by root alone:
/// pod directories hold container root filesystems (setuid binaries of
/// images), secrets and configurations with their environments.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Records a core/v1 Event about `pod` from this agent; queued, so the
/// pod's worker never waits on the API server for it.
pub fn event(env: &Env, pod: &Pod, type_: &str, reason: &str, message: String) {
    let reference = kit::events::reference(pod);
    env.recorder.record(reference, type_, reason, message);
}

/// Watches the pods bound to this node and keeps a worker per pod until
/// the watch ends.
pub async fn run(env: Arc<Env>) {
    if let Err(e) = private_dir(&env.pods_dir) {
        tracing::warn!("making {} private: {e}", env.pods_dir.display());
    }
    let api: Api<Pod> = Api::all(env.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", env.node_name));
    let mut stream = std::pin::pin!(kit::watch::events(api, cfg));
    let mut pods: Store<Arc<Pod>> = Store::default();
    // A worker runs one pod, not one name: a pod deleted and created again
    // under its name gets a new worker.
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let uid = |p: &Pod| p.uid().unwrap_or_default();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("watching this node's pods: {e}");
                continue;
            }
        };
        let relisted = matches!(ev, watcher::Event::InitDone);
        for Change { key, old } in pods.apply(ev, |p| Some(Arc::new(p))) {
            let pod = pods.get(&key).cloned();
            if let Some(old) = old.map(|p| uid(&p)) {
                if pod.as_deref().map(uid) != Some(old.clone()) {
                    if let Some(tx) = workers.remove(&old) {
                        let _ = tx.send(None);
                    }
                }
            }
            let Some(pod) = pod else {
                continue;
            };
            match workers.get(&uid(&pod)) {
                Some(tx) if !tx.is_closed() => {
                    let _ = tx.send(Some(pod));
                }
                _ => {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let id = uid(&pod);
                    let w = worker::Worker::new(env.clone(), pod);
                    tokio::spawn(w.run(rx));
                    workers.insert(id, tx);
                }
            }
        }
        if relisted {
            // Pods deleted while no agent ran left their sandboxes.
            let seen: HashSet<String> = pods.values().map(|p| uid(p)).collect();
            if let Ok(entries) = std::fs::read_dir(&env.pods_dir) {
                for e in entries.flatten() {
                    let id = e.file_name().to_string_lossy().to_string();
                    if !seen.contains(&id) && !workers.contains_key(&id) {
                        worker::cleanup_orphan(&env, &id).await;
                    }
                }
            }
        }
    }
}
