//! DaemonSets: one pod on every node that should run it (its node
//! selector and required affinity admit the node, and the pod tolerates the
//! node's taints, with the daemon tolerations added). Pods carry required
//! node affinity on their node's name and are bound by the default
//! scheduler, as in Kubernetes. Template changes roll out node by node
//! within maxUnavailable and maxSurge (RollingUpdate) or as pods are deleted
//! (OnDelete), each template kept as a ControllerRevision for
//! `kubectl rollout history` and `undo`.

mod nodes;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apimachinery::selectors::selector_matches;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::context::{self, controller_of, Context, Error, Result};
use super::history;
use crate::component::events::reference;
use plan::{Counts, View};

/// Back-off before replacing a node's failed daemon pod again: it starts
/// at one second and doubles up to 15 minutes, so a pod the node keeps
/// rejecting does not turn into a hot loop.
const FAILED_BACKOFF_MIN: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(900);

struct Ctx {
    shared: Arc<Context>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    /// (DaemonSet uid, node) → (when the next replacement may go, its delay).
    failed: Mutex<HashMap<(String, String), (Instant, Duration)>>,
}

/// Runs the DaemonSet controller until the process ends.
pub async fn run(shared: Arc<Context>, concurrency: u16) {
    let client = shared.client.clone();
    let (pods, pod_events) = (shared.pods.clone(), shared.pod_feed.subscribe());
    let (nodes, node_events) = context::reflected(Api::<Node>::all(client.clone()));
    let (revisions, revision_events) =
        context::reflected(Api::<ControllerRevision>::all(client.clone()));
    let ctx = Arc::new(Ctx {
        shared,
        pods,
        nodes,
        revisions,
        failed: Mutex::default(),
    });
    let controller = Controller::new(Api::<DaemonSet>::all(client), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let all = controller.store();
    let orphans = controller.store();
    controller
        .owns_stream(revision_events)
        .watches_stream(pod_events, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            match controller_of(pod.metadata.owner_references.as_ref()) {
                Some(r) if r.kind == "DaemonSet" => vec![ObjectRef::new(&r.name).within(&ns)],
                Some(_) => vec![],
                // An orphan may be adopted by any DaemonSet selecting it.
                None => orphans
                    .state()
                    .iter()
                    .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
                    .filter(|d| {
                        selector_matches(d.spec.as_ref().map(|s| &s.selector), pod.labels())
                    })
                    .map(|d| ObjectRef::from_obj(&**d))
                    .collect(),
            }
        })
        // Any node change (labels, taints, a new node) may move daemons.
        .watches_stream(node_events, move |_: Node| {
            all.state()
                .iter()
                .map(|d| ObjectRef::from_obj(&**d))
                .collect::<Vec<_>>()
        })
        .run(
            |o, c| context::bounded(reconcile(o, c)),
            |ds: Arc<DaemonSet>, e: &Error, _| {
                tracing::warn!(
                    "syncing DaemonSet {}/{}: {e}",
                    ds.namespace().unwrap_or_default(),
                    ds.name_any()
                );
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

fn ignore_404<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action> {
    // Decisions need the whole picture: never act on a cache still listing.
    for ready in [
        ctx.pods.wait_until_ready().await,
        ctx.nodes.wait_until_ready().await,
        ctx.revisions.wait_until_ready().await,
    ] {
        ready.map_err(|e| Error::Other(e.to_string()))?;
    }
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.shared.client;
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let selector = ds.spec.as_ref().map(|s| &s.selector);
    let pods = context::claim_pods(&ctx.pods, &pods_api, &*ds, selector, |_| true).await?;
    let history::Synced {
        hash,
        name: current,
        owned: owned_revisions,
    } = history::sync(client, &ctx.revisions, &*ds).await?;

    let present: HashMap<String, bool> = pods
        .iter()
        .map(|p| (p.name_any(), p.metadata.deletion_timestamp.is_some()))
        .collect();
    let (creating, deleting) = ctx.shared.expectations.outstanding(&uid, &present);
    let spec = nodes::daemon_pod_spec(&ds);
    let all_nodes: Vec<Arc<Node>> = ctx.nodes.state();
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let view = View {
        spec: &spec,
        nodes: &all_nodes,
        pods: &pods,
        hash: &hash,
        min_ready,
        now: Timestamp::now(),
    };
    let mut requeue: Option<Duration> = None;
    if creating > 0 || deleting > 0 {
        // Wait for the cache to show what was already done.
        requeue = Some(Duration::from_secs(1));
    } else {
        let (max_surge, max_unavailable) = plan::surge_and_unavailable(&ds, view.desired());
        let surge = plan::rolls_out(&ds) && max_surge > 0;
        let mut decided = view.manage(surge);
        if decided.is_empty() && plan::rolls_out(&ds) {
            decided = view.rolling_update(max_surge, max_unavailable);
        }
        if let Some(wait) = execute(&ctx, &ds, &pods_api, &hash, decided).await? {
            requeue = Some(wait);
        }
    }

    // History: revisions no pod runs any more, beyond the limit.
    let in_use: BTreeSet<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.labels().get(nodes::HASH_LABEL).cloned())
        .collect();
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10);
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    for old in history::stale(&owned_revisions, &current, &in_use, limit) {
        ignore_404(revisions.delete(&old, &DeleteParams::default()).await)?;
    }

    let counts = view.counts();
    if counts.available < counts.ready {
        // Pods become available by waiting minReadySeconds, not by an event.
        requeue.get_or_insert(Duration::from_secs(1));
    }
    write_status(&ctx, &ds, counts).await?;
    Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(300))))
}

/// Carries a plan out; returns when to look again if a node is backing
/// off from failed pods.
async fn execute(
    ctx: &Ctx,
    ds: &DaemonSet,
    api: &Api<Pod>,
    hash: &str,
    mut decided: plan::Plan,
) -> Result<Option<Duration>> {
    let uid = ds.uid().unwrap_or_default();
    let mut wait = None;
    {
        let mut failed = ctx.failed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for (node, pod) in std::mem::take(&mut decided.failed) {
            let key = (uid.clone(), node.clone());
            match failed.get(&key) {
                Some((next, _)) if *next > now => {
                    let left = *next - now;
                    wait = Some(wait.map_or(left, |w: Duration| w.min(left)));
                    continue;
                }
                _ => {}
            }
            let delay = failed.get(&key).map_or(FAILED_BACKOFF_MIN, |(_, d)| {
                (*d * 2).min(FAILED_BACKOFF_MAX)
            });
            failed.insert(key, (now + delay, delay));
            ctx.shared.recorder.record(
                reference(ds),
                "Warning",
                "FailedDaemonPod",
                format!("Found failed daemon pod {pod} on node {node}, will try to kill it"),
            );
            decided.delete.push(pod);
        }
    }
    for pod in &decided.delete {
        if context::delete_expected(&ctx.shared, api, &uid, pod).await? {
            ctx.shared.recorder.record(
                reference(ds),
                "Normal",
                "SuccessfulDelete",
                format!("Deleted pod: {pod}"),
            );
        }
    }
    // Slow start, as Kubernetes does: 1, 2, 4, ... at once, stopping at
    // the first error so a broken template does not flood the API.
    let mut left: &[String] = &decided.create;
    let mut batch = 1;
    while !left.is_empty() {
        let (now, rest) = left.split_at(batch.min(left.len()));
        let pp = PostParams::default();
        let new_pods: Vec<Pod> = now.iter().map(|n| nodes::pod_for(ds, n, hash)).collect();
        let results = futures::future::join_all(new_pods.iter().map(|p| api.create(&pp, p))).await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => {
                    ctx.shared.expectations.created(&uid, p.name_any());
                    ctx.shared.recorder.record(
                        reference(ds),
                        "Normal",
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    );
                }
                Err(e) if first_err.is_none() => {
                    ctx.shared.recorder.record(
                        reference(ds),
                        "Warning",
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    );
                    first_err = Some(e);
                }
                Err(_) => {}
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        left = rest;
        batch *= 2;
    }
    Ok(wait)
}

/// Writes the status counts when they changed.
async fn write_status(ctx: &Ctx, ds: &DaemonSet, c: Counts) -> Result<()> {
    let generation = ds.metadata.generation.unwrap_or(0);
    let old = ds.status.clone().unwrap_or_default();
    let unavailable = c.desired - c.available;
    let unchanged = old.desired_number_scheduled == c.desired
        && old.current_number_scheduled == c.current
        && old.number_misscheduled == c.misscheduled
        && old.number_ready == c.ready
        && old.updated_number_scheduled.unwrap_or(0) == c.updated
        && old.number_available.unwrap_or(0) == c.available
        && old.number_unavailable.unwrap_or(0) == unavailable
        && old.observed_generation == Some(generation);
    if unchanged {
        return Ok(());
    }
    let api: Api<DaemonSet> = Api::namespaced(
        ctx.shared.client.clone(),
        &ds.namespace().unwrap_or_default(),
    );
    let patch = json!({"status": {
        "desiredNumberScheduled": c.desired,
        "currentNumberScheduled": c.current,
        "numberMisscheduled": c.misscheduled,
        "numberReady": c.ready,
        "updatedNumberScheduled": c.updated,
        "numberAvailable": c.available,
        "numberUnavailable": unavailable,
        "observedGeneration": generation,
    }});
    ignore_404(
        api.patch_status(
            &ds.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await,
    )
}
