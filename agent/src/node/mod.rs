//! The agent's Node: registration with real capacity, allocatable and
//! conditions, a Lease renewed every `lease_interval`, and status patched
//! when it changes (and at least every `status_interval`).

pub mod credentials;
pub mod machine;
pub mod renewal;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

/// Settings of the node part of the agent.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub state_dir: PathBuf,
    pub max_pods: u64,
    /// Reserved for the system and the agent: (cpu millicores, memory bytes).
    pub reserved_cpu_millis: u64,
    pub reserved_memory: u64,
    /// Hard eviction thresholds: memory available, and disk available as a
    /// share of the total.
    pub eviction_memory: u64,
    pub eviction_disk_percent: u64,
    pub node_ip: Option<String>,
    pub labels: Vec<(String, String)>,
    pub lease_interval: Duration,
    pub status_interval: Duration,
    pub runtime_version: String,
    /// Port of the node API, advertised in status.daemonEndpoints.
    pub api_port: u16,
    /// The pod CIDR given on the command line, recorded in the Node at
    /// creation so no allocator races to give it another.
    pub pod_cidr: Option<String>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `capacity` and `allocatable` in the wire form.
pub fn resources(c: &machine::Capacity, cfg: &NodeConfig) -> (Value, Value) {
    let capacity = json!({
        "cpu": c.cpus.to_string(),
        "memory": format!("{}Ki", c.memory_bytes / 1024),
        "ephemeral-storage": format!("{}Ki", c.ephemeral_storage_bytes / 1024),
        "pods": c.pods.to_string(),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    let cpu = (c.cpus * 1000).saturating_sub(cfg.reserved_cpu_millis);
    let memory = c
        .memory_bytes
        .saturating_sub(cfg.reserved_memory)
        .saturating_sub(cfg.eviction_memory);
    let disk = c.ephemeral_storage_bytes
        - c.ephemeral_storage_bytes * cfg.eviction_disk_percent.min(100) / 100;
    let allocatable = json!({
        "cpu": format!("{cpu}m"),
        "memory": format!("{}Ki", memory / 1024),
        "ephemeral-storage": disk.to_string(),
        "pods": c.pods.to_string(),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    (capacity, allocatable)
}

/// The four pressure-style conditions and Ready, as (type, status, reason,
/// message), from current usage.
pub fn conditions(
    u: &machine::Usage,
    cfg: &NodeConfig,
    runtime_ok: bool,
) -> Vec<(&'static str, bool, &'static str, String)> {
    let mem_pressure = u.memory_available_bytes < cfg.eviction_memory;
    let disk_pressure = u.disk_total_bytes > 0
        && u.disk_available_bytes * 100 < u.disk_total_bytes * cfg.eviction_disk_percent;
    // Kubernetes has no default PID threshold; 95% of pid_max in use is
    // close enough to fork failures to warn the scheduler.
    let pid_pressure = u.pids_in_use * 100 > u.pid_max * 95;
    vec![
        if mem_pressure {
            (
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "node has memory pressure".into(),
            )
        } else {
            (
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "node has sufficient memory available".into(),
            )
        },
        if disk_pressure {
            (
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                "node has disk pressure".into(),
            )
        } else {
            (
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "node has no disk pressure".into(),
            )
        },
        if pid_pressure {
            (
                "PIDPressure",
                true,
                "KubeletHasInsufficientPID",
                "node has PID pressure".into(),
            )
        } else {
            (
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "node has sufficient PID available".into(),
            )
        },
        if runtime_ok {
            (
                "Ready",
                true,
                "KubeletReady",
                "agent is posting ready status".into(),
            )
        } else {
            (
                "Ready",
                false,
                "KubeletNotReady",
                "container runtime is not ready".into(),
            )
        },
    ]
}

/// The full status the agent reports.
fn status(cfg: &NodeConfig, previous: Option<&Node>, runtime_ok: bool) -> anyhow::Result<Value> {
    let cap = machine::capacity(&cfg.state_dir, cfg.max_pods)?;
    let usage = machine::usage(&cfg.state_dir)?;
    let (capacity, allocatable) = resources(&cap, cfg);
    let ts = now();
    let old: Vec<_> = previous
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conds: Vec<Value> = conditions(&usage, cfg, runtime_ok)
        .into_iter()
        .map(|(t, s, reason, message)| {
            let status = if s { "True" } else { "False" };
            // The transition time moves only when the status does.
            let since = old
                .iter()
                .find(|c| c.type_ == t && c.status == status)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| ts.clone());
            json!({"type": t, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": ts, "lastTransitionTime": since})
        })
        .collect();
    conds.push(json!({"type": "NetworkUnavailable", "status": "False", "reason": "AgentNetworkReady",
        "message": "the agent configures pod networking", "lastHeartbeatTime": ts,
        "lastTransitionTime": old.iter().find(|c| c.type_ == "NetworkUnavailable" && c.status == "False")
            .and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_else(|| ts.clone())}));
    let ip = cfg
        .node_ip
        .clone()
        .or_else(|| machine::internal_ip().map(|i| i.to_string()));
    let mut addresses = Vec::new();
    if let Some(ip) = ip {
        addresses.push(json!({"type": "InternalIP", "address": ip}));
    }
    addresses.push(json!({"type": "Hostname", "address": cfg.name}));
    let version = format!("v1.32.0-kestrel-{}", env!("CARGO_PKG_VERSION"));
    Ok(json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conds,
        "addresses": addresses,
        "nodeInfo": machine::node_info(&cfg.runtime_version, &version),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.api_port}},
    }))
}

/// Without timestamps, to tell a real change from a heartbeat.
fn comparable(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(cs) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    s
}

/// Creates the Node if it is missing (with labels) and reports its status.
pub async fn register(client: &kube::Client, cfg: &NodeConfig) -> anyhow::Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(cfg.name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!(machine::arch()));
    labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
    labels.insert("beta.kubernetes.io/arch".into(), json!(machine::arch()));
    for (k, v) in &cfg.labels {
        labels.insert(k.clone(), json!(v));
    }
    // Where local-path volumes of this node live, for the provisioner.
    let storage = std::path::absolute(cfg.state_dir.join("storage"))?;
    std::fs::create_dir_all(&storage)?;
    let annotations = json!({"kestrel.io/local-path-dir": storage.to_string_lossy()});
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels, "annotations": annotations},
    });
    if let Some(cidr) = &cfg.pod_cidr {
        node["spec"] = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    let node: Node = serde_json::from_value(node)?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!("registered node {}", cfg.name),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Re-registration keeps what others set (podCIDR, taints) and
            // refreshes our labels.
            let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
            api.patch(&cfg.name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    let current = api.get(&cfg.name).await?;
    let s = status(cfg, Some(&current), true)?;
    let updated = api
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": s})),
        )
        .await?;
    Ok(updated)
}

/// Renews the Lease and reports status until the future is dropped.
pub async fn heartbeat(client: kube::Client, cfg: NodeConfig, runtime_ok: impl Fn() -> bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut last_reported: Option<(Value, Instant)> = None;
    let mut next_status = Instant::now();
    loop {
        if let Err(e) = renew_lease(&leases, &cfg).await {
            tracing::warn!("renewing the node lease: {e}");
        }
        if Instant::now() >= next_status {
            next_status = Instant::now() + Duration::from_secs(10).min(cfg.status_interval);
            match nodes.get(&cfg.name).await {
                Ok(current) => match status(&cfg, Some(&current), runtime_ok()) {
                    Ok(s) => {
                        let changed = last_reported.as_ref().is_none_or(|(v, at)| {
                            comparable(v) != comparable(&s) || at.elapsed() >= cfg.status_interval
                        });
                        if changed {
                            match nodes
                                .patch_status(
                                    &cfg.name,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"status": s})),
                                )
                                .await
                            {
                                Ok(_) => last_reported = Some((s, Instant::now())),
                                Err(e) => tracing::warn!("reporting node status: {e}"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!("reading the machine's state: {e}"),
                },
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // Someone deleted our Node: register again.
                    if let Err(e) = register(&nodes.clone().into_client(), &cfg).await {
                        tracing::warn!("re-registering: {e}");
                    }
                }
                Err(e) => tracing::warn!("reading our Node: {e}"),
            }
        }
        tokio::time::sleep(cfg.lease_interval).await;
    }
}

async fn renew_lease(leases: &Api<Lease>, cfg: &NodeConfig) -> Result<(), kube::Error> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let duration = (cfg.lease_interval.as_secs() * 4).max(1) as i32;
    match leases.get_opt(&cfg.name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(cfg.name.clone());
            spec.lease_duration_seconds = Some(duration);
            spec.renew_time = Some(now);
            leases
                .replace(&cfg.name, &PostParams::default(), &lease)
                .await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.name.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig {
            name: "n".into(),
            state_dir: "/".into(),
            max_pods: 110,
            reserved_cpu_millis: 100,
            reserved_memory: 100 << 20,
            eviction_memory: 100 << 20,
            eviction_disk_percent: 10,
            node_ip: None,
            labels: vec![],
            lease_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            runtime_version: "libcontainer://0.7".into(),
            api_port: 10250,
            pod_cidr: None,
        }
    }

    #[test]
    fn allocatable_subtracts_reservations_and_eviction_thresholds() {
        let c = machine::Capacity {
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 100 << 30,
            pods: 110,
        };
        let (cap, alloc) = resources(&c, &cfg());
        assert_eq!(cap["cpu"], "2");
        assert_eq!(cap["memory"], format!("{}Ki", 4u64 << 20));
        assert_eq!(alloc["cpu"], "1900m");
        assert_eq!(
            alloc["memory"],
            format!("{}Ki", ((4u64 << 30) - (200 << 20)) / 1024)
        );
        assert_eq!(
            alloc["ephemeral-storage"],
            ((100u64 << 30) * 9 / 10).to_string()
        );
        assert_eq!(alloc["pods"], "110");
    }

    #[test]
    fn pressure_follows_thresholds() {
        let mut u = machine::Usage {
            memory_available_bytes: 1 << 30,
            disk_available_bytes: 50,
            disk_total_bytes: 100,
            pids_in_use: 100,
            pid_max: 32768,
        };
        let c = conditions(&u, &cfg(), true);
        assert!(c
            .iter()
            .all(|(t, s, _, _)| if *t == "Ready" { *s } else { !*s }));
        u.memory_available_bytes = 1 << 20;
        u.disk_available_bytes = 5;
        let c = conditions(&u, &cfg(), true);
        let get = |t: &str| c.iter().find(|x| x.0 == t).unwrap().1;
        assert!(get("MemoryPressure"));
        assert!(get("DiskPressure"));
        assert!(!get("PIDPressure"));
    }
}
