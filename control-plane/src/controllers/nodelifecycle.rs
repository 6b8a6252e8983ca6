//! Node lifecycle: a node whose Lease and status both stop being renewed
//! for the grace period is marked Unknown, tainted `unreachable` (or
//! `not-ready` when it reports NotReady), its pods are marked not ready,
//! and pods that do not tolerate the NoExecute taint long enough are
//! evicted so their controllers recreate them elsewhere. Nodes are tainted
//! NoExecute at a limited rate per zone, and not at all while every zone
//! is down (see `disruption`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apimachinery::taints::toleration_seconds;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use super::context::{self, Context};
use crate::component::events::reference;
pub use disruption::Policy;
use disruption::{zone_of, Disruption};

mod disruption;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Timing and eviction limits of the lifecycle checks.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub period: Duration,
    pub grace: Duration,
    pub eviction: Policy,
}

/// What one check found about a node.
struct Health {
    node: Arc<Node>,
    /// The Ready condition's status: "True", "False" or "Unknown".
    status: String,
    zone: String,
}

/// Runs the node lifecycle loop until the process ends.
pub async fn run(ctx: Arc<Context>, settings: Settings) {
    let nodes = context::cache(Api::<Node>::all(ctx.client.clone()));
    let leases = context::cache(Api::<Lease>::namespaced(
        ctx.client.clone(),
        "kube-node-lease",
    ));
    let _ = nodes.wait_until_ready().await;
    let _ = leases.wait_until_ready().await;
    let evictions = ctx.metrics.counter(
        "node_lifecycle_evictions_total",
        "Pods evicted from failed nodes.",
    );
    // When each node's heartbeat was last seen to change, by our clock, so
    // clock skew between nodes and this process does not matter.
    let mut seen: HashMap<String, (String, Instant)> = HashMap::new();
    // When each node was first seen not Ready, so the longest-failed node
    // of a zone is the next one tainted for eviction.
    let mut unhealthy_since: HashMap<String, Instant> = HashMap::new();
    let mut disruption = Disruption::new(settings.eviction);
    let mut ticker = tokio::time::interval(settings.period);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let all = nodes.state();
        collect_orphaned_pods(&ctx, &all).await;
        seen.retain(|n, _| all.iter().any(|x| x.name_any() == *n));
        unhealthy_since.retain(|n, _| all.iter().any(|x| x.name_any() == *n));
        let mut health = Vec::with_capacity(all.len());
        for node in all {
            let name = node.name_any();
            let renew = leases
                .get(&ObjectRef::new(&name).within("kube-node-lease"))
                .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone()));
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned());
            let beat = format!(
                "{:?}|{:?}",
                renew.map(|t| t.0),
                ready
                    .as_ref()
                    .and_then(|r| r.last_heartbeat_time.clone())
                    .map(|t| t.0)
            );
            let entry = seen.entry(name.clone()).or_insert((beat.clone(), now));
            if entry.0 != beat {
                *entry = (beat, now);
            }
            let stale = now.duration_since(entry.1) > settings.grace;
            let mut status = ready
                .as_ref()
                .map(|r| r.status.clone())
                .unwrap_or_else(|| "Unknown".into());
            if stale && status != "Unknown" {
                mark_unknown(&ctx, &node).await;
                status = "Unknown".into();
            }
            if status == "True" {
                unhealthy_since.remove(&name);
            } else {
                unhealthy_since.entry(name).or_insert(now);
            }
            let zone = zone_of(node.labels()).to_string();
            health.push(Health { node, status, zone });
        }

        let changes = disruption.observe(
            health.iter().map(|h| (h.zone.as_str(), h.status == "True")),
            now,
        );
        for (zone, state) in &changes.zones {
            tracing::info!("zone {zone:?} is now in state {state:?}");
        }
        match changes.brake {
            Some(true) => tracing::warn!(
                "no node in any zone is Ready: evictions stop until one is, since this is likelier a cut-off control plane than every node failing"
            ),
            Some(false) => {
                tracing::info!("a node is Ready again: evictions resume at the zones' rates");
                // Every node gets a fresh grace period, as a node cut off
                // with the others may only now reach us again.
                for entry in seen.values_mut() {
                    entry.1 = now;
                }
            }
            None => {}
        }

        // Longest-failed first, so a zone's limited evictions go in order.
        health.sort_by_key(|h| unhealthy_since.get(&h.node.name_any()).copied());
        for h in health {
            let key = match h.status.as_str() {
                "True" => None,
                "False" => Some(NOT_READY),
                _ => Some(UNREACHABLE),
            };
            let tainted = has_no_execute(&h.node);
            // A node already tainted for eviction keeps (or swaps) its taint
            // without waiting for the limiter; a new one waits its turn.
            let no_execute = match key {
                Some(k) if !disruption.braked() && (tainted || disruption.admit(&h.zone, now)) => {
                    Some(k)
                }
                _ => None,
            };
            let taints = sync_taints(&ctx, &h.node, key, no_execute).await;
            if h.status != "True" {
                let name = h.node.name_any();
                for pod in ctx.pods.state() {
                    if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str())
                    {
                        continue;
                    }
                    mark_pod_not_ready(&ctx, &pod).await;
                    if evict_due(&pod, &taints) {
                        evictions.inc();
                        evict(&ctx, &pod).await;
                    }
                }
            }
        }
    }
}

/// Does the node carry one of the lifecycle NoExecute taints?
fn has_no_execute(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.effect == "NoExecute" && (t.key == UNREACHABLE || t.key == NOT_READY))
        })
}

/// Pod garbage collection: a pod bound to a node that no longer exists
/// can never be stopped by its agent, so it is deleted for good (as
/// Kubernetes' PodGC does), letting its controller replace it.
async fn collect_orphaned_pods(ctx: &Context, nodes: &[std::sync::Arc<Node>]) {
    let known: std::collections::HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut checked: HashMap<String, bool> = HashMap::new();
    for pod in ctx.pods.state() {
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        if known.contains(&node) {
            continue;
        }
        // The cache may lag behind a node that just registered: ask.
        let gone = match checked.get(&node) {
            Some(g) => *g,
            None => {
                let g = matches!(api.get_opt(&node).await, Ok(None));
                checked.insert(node.clone(), g);
                g
            }
        };
        if !gone {
            continue;
        }
        let pods: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if pods.delete(&pod.name_any(), &dp).await.is_ok() {
            tracing::info!(
                "deleted pod {}/{} bound to the missing node {node}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            );
        }
    }
}

async fn mark_unknown(ctx: &Context, node: &Node) {
    let now = crate::component::now();
    let conditions: Vec<_> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                   "message": "Kubelet stopped posting node status.",
                   "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now})
        })
        .collect();
    let conditions = if conditions.is_empty() {
        vec![
            json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.", "lastTransitionTime": now}),
        ]
    } else {
        conditions
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"status": {"conditions": conditions}});
    match api
        .patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(
                "node {} stopped heartbeating: Ready is Unknown",
                node.name_any()
            );
            ctx.recorder.record(
                reference(node),
                "Normal",
                "NodeNotReady",
                format!("Node {} status is now: NodeNotReady", node.name_any()),
            );
        }
        Err(e) => tracing::warn!("marking node {} Unknown: {e}", node.name_any()),
    }
}

/// Makes the node's lifecycle taints exactly `no_schedule` (NoSchedule)
/// and `no_execute` (NoExecute) and returns the taints in force.
async fn sync_taints(
    ctx: &Context,
    node: &Node,
    no_schedule: Option<&str>,
    no_execute: Option<&str>,
) -> Vec<Taint> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let mut next: Vec<Taint> = current.iter().filter(|t| !ours(t)).cloned().collect();
    for (key, effect) in [(no_schedule, "NoSchedule"), (no_execute, "NoExecute")] {
        let Some(key) = key else { continue };
        let existing = current
            .iter()
            .find(|t| t.key == key && t.effect == effect)
            .cloned();
        next.push(existing.unwrap_or_else(|| Taint {
            key: key.to_string(),
            effect: effect.into(),
            value: None,
            time_added: (effect == "NoExecute").then(crate::component::now),
        }));
    }
    if next == current {
        return current;
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch =
        json!({"spec": {"taints": next}, "metadata": {"resourceVersion": node.resource_version()}});
    match api
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => next,
        Err(e) => {
            tracing::debug!("tainting node {}: {e}", node.name_any());
            current
        }
    }
}

async fn mark_pod_not_ready(ctx: &Context, pod: &Pod) {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    if ready.is_none_or(|c| c.status == "False") || !context::pod_active(pod) {
        return;
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False",
        "reason": "NodeNotReady", "lastTransitionTime": crate::component::now()}]}});
    if let Err(e) = api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        tracing::debug!("marking pod {} not ready: {e}", pod.name_any());
    }
}

/// Has the pod outstayed its tolerance of the node's NoExecute taints?
fn evict_due(pod: &Pod, taints: &[Taint]) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let now = Timestamp::now();
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        // Unbounded tolerations never expire; otherwise the shortest decides.
        let seconds = match toleration_seconds(&tolerations, taint) {
            None => return true,
            Some(None) => continue,
            Some(Some(s)) => s,
        };
        let since = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        if now.duration_since(since).as_secs() >= seconds {
            return true;
        }
    }
    false
}

async fn evict(ctx: &Context, pod: &Pod) {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {
            tracing::info!("evicting {ns}/{} from its failed node", pod.name_any());
            ctx.recorder.record(
                reference(pod),
                "Normal",
                "TaintManagerEviction",
                format!("Marking for deletion Pod {ns}/{}", pod.name_any()),
            );
        }
        Err(e) => tracing::debug!("evicting {ns}/{}: {e}", pod.name_any()),
    }
}
