//! Node IPAM: every node gets a podCIDR carved from `--cluster-cidr`. The
//! allocation is read back from the Node objects, so it survives restarts,
//! and a deleted node's range is free again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::context::{Error, Result};
pub use apimachinery::cidr::Cidr;

struct Ctx {
    client: kube::Client,
    nodes: Store<Node>,
    cluster: Cidr,
    mask: u8,
    /// Assigned by this process but maybe not yet in the cache.
    recent: Mutex<HashMap<String, String>>,
}

/// Runs the allocator until the process ends.
pub async fn run(client: kube::Client, cluster: Cidr, mask: u8) {
    let controller = Controller::new(Api::<Node>::all(client.clone()), watcher::Config::default())
        // One at a time: two nodes must never be handed the same range.
        .with_config(kube::runtime::controller::Config::default().concurrency(1));
    let nodes = controller.store();
    let ctx = Arc::new(Ctx {
        client,
        nodes,
        cluster,
        mask,
        recent: Mutex::new(HashMap::new()),
    });
    controller
        .run(
            reconcile,
            |n: Arc<Node>, e: &Error, _| {
                tracing::warn!("allocating a podCIDR for {}: {e}", n.name_any());
                Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = node.name_any();
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty())
    {
        ctx.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        return Ok(Action::await_change());
    }
    // Only a complete list tells which ranges are taken.
    ctx.nodes
        .wait_until_ready()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut used: HashSet<String> = HashSet::new();
    let live: HashSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    for n in ctx.nodes.state() {
        if let Some(c) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
            used.insert(c);
        }
    }
    {
        let mut recent = ctx.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|n, _| live.contains(n));
        if recent.contains_key(&name) {
            // Already assigned; the cache has not caught up.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        used.extend(recent.values().cloned());
    }
    let mut chosen = None;
    for i in 0.. {
        let Some(c) = ctx.cluster.subnet(ctx.mask, i) else {
            break;
        };
        if !used.contains(&c.to_string()) {
            chosen = Some(c.to_string());
            break;
        }
    }
    let Some(cidr) = chosen else {
        return Err(Error::Other(format!(
            "no podCIDR left in {} for /{} ranges",
            ctx.cluster, ctx.mask
        )));
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}, "metadata": {"resourceVersion": node.metadata.resource_version}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    tracing::info!("node {name} gets podCIDR {cidr}");
    ctx.recent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, cidr);
    Ok(Action::await_change())
}
