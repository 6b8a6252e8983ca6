//! Hollow nodes: Node objects with Leases and a stand-in kubelet that
//! marks pods bound to them Running and Ready and finishes their deletion.
//! No containers run. They let the scheduler and controllers be exercised
//! (and benchmarked) at thousands of nodes on one machine, as Kubernetes'
//! kubemark does.
//!
//! A pod annotated `hollow.kestrel.dev/exit-code: "N"` stands for one whose
//! containers ran to completion: it goes straight to Succeeded (N = 0) or
//! Failed (any other N) with that exit code, so run-to-completion
//! workloads can be exercised too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use crate::component::ClientArgs;

/// Pod annotation making a hollow node finish the pod with that exit code.
pub const EXIT_CODE_ANNOTATION: &str = "hollow.kestrel.dev/exit-code";

/// Flags of `control-plane hollow-nodes`.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Node names are PREFIX-INDEX.
    #[arg(long, default_value = "hollow")]
    pub name_prefix: String,
    /// Index of the first node (several processes can share a prefix).
    #[arg(long, default_value_t = 0)]
    pub start_index: usize,
    /// Spread nodes over this many zones (topology.kubernetes.io/zone).
    #[arg(long, default_value_t = 0)]
    pub zones: usize,
    /// Capacity of each node.
    #[arg(long, default_value = "4")]
    pub cpu: String,
    #[arg(long, default_value = "16Gi")]
    pub memory: String,
    #[arg(long, default_value = "110")]
    pub pods: String,
    /// Extra labels for every node (key=value, repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Lease renewal period in seconds (0: no leases).
    #[arg(long, default_value_t = 10)]
    pub lease_interval_seconds: u64,
    /// Mark pods bound to these nodes Running and Ready.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub run_pods: bool,
    /// API calls in flight at once.
    #[arg(long, default_value_t = 32)]
    pub parallelism: usize,
}

impl Config {
    fn names(&self) -> Vec<String> {
        (self.start_index..self.start_index + self.count)
            .map(|i| format!("{}-{i}", self.name_prefix))
            .collect()
    }
}

fn node_object(config: &Config, index: usize, name: &str) -> Node {
    let mut labels: std::collections::BTreeMap<String, String> = [
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        ),
        ("node.kestrel.dev/hollow".to_string(), "true".to_string()),
    ]
    .into();
    if config.zones > 0 {
        labels.insert(
            "topology.kubernetes.io/zone".into(),
            format!("zone-{}", index % config.zones),
        );
    }
    for l in &config.labels {
        if let Some((k, v)) = l.split_once('=') {
            labels.insert(k.into(), v.into());
        }
    }
    let resources = json!({"cpu": config.cpu, "memory": config.memory, "pods": config.pods, "ephemeral-storage": "100Gi"});
    let now = crate::component::now();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": format!("10.255.{}.{}", (index / 250) % 250, index % 250 + 1)},
                          {"type": "Hostname", "address": name}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "hollow node is ready", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "nodeInfo": {"kubeletVersion": "v1.32.0-hollow", "containerRuntimeVersion": "hollow://0", "kernelVersion": "", "osImage": "hollow", "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
        },
    }))
    .expect("a well-formed node")
}

/// Registers the nodes (or refreshes them), then renews leases and plays
/// kubelet for their pods until SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = config.client.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let names = config.names();
    let permits = Arc::new(tokio::sync::Semaphore::new(config.parallelism.max(1)));
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let node = node_object(&config, config.start_index + i, name);
        let nodes = nodes.clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permits.acquire_owned().await;
            register(&nodes, node).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    tracing::info!("registered {} hollow nodes", names.len());
    println!("ready: {} nodes", names.len());

    if config.lease_interval_seconds > 0 {
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let names = names.clone();
        let every = Duration::from_secs(config.lease_interval_seconds);
        let permits = permits.clone();
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::new();
                for name in &names {
                    let leases = leases.clone();
                    let name = name.clone();
                    let permits = permits.clone();
                    batch.push(tokio::spawn(async move {
                        let _p = permits.acquire_owned().await;
                        if let Err(e) = renew(&leases, &name, every).await {
                            tracing::warn!("lease {name}: {e}");
                        }
                    }));
                }
                for b in batch {
                    let _ = b.await;
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    if config.run_pods {
        let index: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), config.start_index + i))
            .collect();
        let pods: Api<Pod> = Api::all(client.clone());
        let stream = watcher(pods, watcher::Config::default()).default_backoff();
        let client = client.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(stream);
            let mut ips: HashMap<String, u32> = HashMap::new();
            while let Some(ev) = s.next().await {
                let pod = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!("watching pods: {e}");
                        continue;
                    }
                };
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                let Some(&idx) = index.get(&node) else {
                    continue;
                };
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                let permits = permits.clone();
                if pod.metadata.deletion_timestamp.is_some() {
                    // The containers "stopped": release the pod for good.
                    tokio::spawn(async move {
                        let _p = permits.acquire_owned().await;
                        let dp = DeleteParams {
                            grace_period_seconds: Some(0),
                            preconditions: Some(Preconditions {
                                uid: pod.uid(),
                                resource_version: None,
                            }),
                            ..Default::default()
                        };
                        let _ = api.delete(&pod.name_any(), &dp).await;
                    });
                    continue;
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                if phase.is_some_and(|p| p != "Pending") {
                    continue;
                }
                let n = ips.entry(node.clone()).or_default();
                *n += 1;
                let ip = format!(
                    "10.{}.{}.{}",
                    128 + (idx / 250) % 120,
                    idx % 250,
                    (*n % 250) + 2
                );
                let host_ip = format!("10.255.{}.{}", (idx / 250) % 250, idx % 250 + 1);
                tokio::spawn(async move {
                    let _p = permits.acquire_owned().await;
                    let now = crate::component::now();
                    let containers: Vec<_> = pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| json!({
                        "name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                        "restartCount": 0, "state": {"running": {"startedAt": now}},
                    })).collect();
                    let exit: Option<i32> = pod
                        .annotations()
                        .get(EXIT_CODE_ANNOTATION)
                        .and_then(|v| v.parse().ok());
                    if let Some(code) = exit {
                        let containers: Vec<_> = pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| json!({
                            "name": c.name, "image": c.image, "imageID": "", "ready": false, "started": false,
                            "restartCount": 0, "state": {"terminated": {"exitCode": code, "startedAt": now,
                                "finishedAt": now, "reason": if code == 0 { "Completed" } else { "Error" }}},
                        })).collect();
                        let patch = json!({"status": {
                            "phase": if code == 0 { "Succeeded" } else { "Failed" },
                            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "startTime": now,
                            "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                            ],
                            "containerStatuses": containers,
                        }});
                        if let Err(e) = api
                            .patch_status(
                                &pod.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(patch),
                            )
                            .await
                        {
                            tracing::debug!("finishing {}: {e}", pod.name_any());
                        }
                        return;
                    }
                    let patch = json!({"status": {
                        "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                        "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
                        "conditions": [
                            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                            {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        ],
                        "containerStatuses": containers,
                    }});
                    if let Err(e) = api
                        .patch_status(
                            &pod.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(patch),
                        )
                        .await
                    {
                        tracing::debug!("starting {}: {e}", pod.name_any());
                    }
                });
            }
        });
    }
    crate::component::shutdown_signal().await;
    Ok(())
}

async fn register(nodes: &Api<Node>, node: Node) -> anyhow::Result<()> {
    let name = node.name_any();
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => anyhow::bail!("registering {name}: {e}"),
    }
    let status = json!({"status": serde_json::to_value(&node.status)?});
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

async fn renew(leases: &Api<Lease>, name: &str, every: Duration) -> Result<(), kube::Error> {
    let now = crate::component::micro_time();
    let duration = (every.as_secs() * 4).max(1) as i32;
    match leases.get_opt(name).await? {
        Some(_) => {
            let patch = json!({"spec": {"holderIdentity": name, "renewTime": now, "leaseDurationSeconds": duration}});
            leases
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.into()),
                    lease_duration_seconds: Some(duration),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}
