//! StatefulSets: pods with stable identities. Member `i` is always the pod
//! `<set>-<i>`, with host name `<set>-<i>` under the governing Service
//! and its own claims `<template>-<set>-<i>`, made before the pod and kept
//! (by default) when the pod or the set goes. Members appear in ordinal
//! order, each once the ones below it are Running and Ready, and leave in
//! reverse (`OrderedReady`), or all at once (`Parallel`). Template changes
//! roll from the highest ordinal down to the partition (`RollingUpdate`)
//! or wait for pods to be deleted (`OnDelete`), each template kept as a
//! ControllerRevision for `kubectl rollout history` and `undo`.

mod identity;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apimachinery::selectors::selector_matches;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::context::{self, controller_of, ignore_404, pod_available, Context, Error, Result};
use super::history::{self, HASH_LABEL};
use crate::component::events::reference;
use plan::{Member, Policy};

struct Ctx {
    shared: Arc<Context>,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    claims: Store<PersistentVolumeClaim>,
}

/// Runs the StatefulSet controller until the process ends.
pub async fn run(shared: Arc<Context>, concurrency: u16) {
    let client = shared.client.clone();
    let (pods, pod_events) = (shared.pods.clone(), shared.pod_feed.subscribe());
    let (revisions, revision_events) =
        context::reflected(Api::<ControllerRevision>::all(client.clone()));
    let (claims, claim_events) =
        context::reflected(Api::<PersistentVolumeClaim>::all(client.clone()));
    let ctx = Arc::new(Ctx {
        shared,
        pods,
        revisions,
        claims,
    });
    let controller = Controller::new(Api::<StatefulSet>::all(client), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let orphans = controller.store();
    let sets = controller.store();
    controller
        .owns_stream(revision_events)
        .watches_stream(pod_events, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            match controller_of(pod.metadata.owner_references.as_ref()) {
                Some(r) if r.kind == "StatefulSet" => vec![ObjectRef::new(&r.name).within(&ns)],
                Some(_) => vec![],
                // An orphan may be adopted by the set it is named after.
                None => orphans
                    .state()
                    .iter()
                    .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
                    .filter(|s| identity::ordinal(&s.name_any(), &pod.name_any()).is_some())
                    .filter(|s| {
                        selector_matches(s.spec.as_ref().map(|s| &s.selector), pod.labels())
                    })
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect(),
            }
        })
        // A claim that goes away (or finishes going) may unblock a member.
        .watches_stream(claim_events, move |claim: PersistentVolumeClaim| {
            let ns = claim.namespace().unwrap_or_default();
            let name = claim.name_any();
            sets.state()
                .iter()
                .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
                .filter(|s| name.contains(&format!("-{}-", s.name_any())))
                .map(|s| ObjectRef::from_obj(&**s))
                .collect::<Vec<_>>()
        })
        .run(
            |o, c| context::bounded(reconcile(o, c)),
            |set: Arc<StatefulSet>, e: &Error, _| {
                tracing::warn!(
                    "syncing StatefulSet {}/{}: {e}",
                    set.namespace().unwrap_or_default(),
                    set.name_any()
                );
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// The decisions' view of a pod.
fn member(set: &str, pod: &Pod, min_ready: i32, now: Timestamp) -> Member {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let healthy =
        !terminating && phase == Some("Running") && context::pod_ready_since(pod).is_some();
    Member {
        ordinal: identity::ordinal(set, &pod.name_any()),
        name: pod.name_any(),
        revision: pod.labels().get(HASH_LABEL).cloned().unwrap_or_default(),
        terminating,
        finished: matches!(phase, Some("Succeeded" | "Failed")),
        healthy,
        available: healthy && pod_available(pod, min_ready, now),
    }
}

/// The spec and history, as the decisions take them.
fn policy(set: &StatefulSet, current: &str, update: &str) -> Policy {
    let spec = set.spec.clone().unwrap_or_default();
    let strategy = spec.update_strategy.unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    Policy {
        replicas: spec.replicas.unwrap_or(1),
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        rolling,
        partition: strategy
            .rolling_update
            .and_then(|r| r.partition)
            .unwrap_or(0),
        current_revision: current.to_string(),
        update_revision: update.to_string(),
    }
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action> {
    // Decisions need the whole picture: never act on a cache still listing.
    for ready in [
        ctx.pods.wait_until_ready().await,
        ctx.revisions.wait_until_ready().await,
        ctx.claims.wait_until_ready().await,
    ] {
        ready.map_err(|e| Error::Other(e.to_string()))?;
    }
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.shared.client;
    let name = set.name_any();
    let ns = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = set.spec.as_ref().map(|s| &s.selector);
    let pods = context::claim_pods(&ctx.pods, &pods_api, &*set, selector, |p| {
        identity::ordinal(&name, &p.name_any()).is_some()
    })
    .await?;
    let synced = history::sync(client, &ctx.revisions, &*set).await?;
    let update = synced.name.clone();
    // The current revision is the one the status names, while it exists.
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| synced.owned.iter().any(|r| r.name_any() == *c))
        .unwrap_or_else(|| update.clone());
    let policy = policy(&set, &current, &update);
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = Timestamp::now();
    let members: Vec<Member> = pods
        .iter()
        .map(|p| member(&name, p, min_ready, now))
        .collect();

    let present: HashMap<String, bool> = pods
        .iter()
        .map(|p| (p.name_any(), p.metadata.deletion_timestamp.is_some()))
        .collect();
    let (creating, deleting) = ctx.shared.expectations.outstanding(&uid, &present);
    let mut requeue: Option<Duration> = None;
    if creating > 0 || deleting > 0 {
        // Wait for the cache to show what was already done.
        requeue = Some(Duration::from_secs(1));
    } else {
        sync_claim_owners(&ctx, &set, &pods, policy.replicas).await?;
        let decided = plan::decide(&policy, &members);
        if !execute(&ctx, &set, &pods_api, &synced.owned, decided).await? {
            requeue = Some(Duration::from_secs(2));
        }
    }

    // History: revisions no pod runs any more, beyond the limit.
    let in_use: BTreeSet<String> = synced
        .owned
        .iter()
        .filter(|r| {
            let n = r.name_any();
            n == current || members.iter().any(|m| !m.terminating && m.revision == n)
        })
        .map(|r| history::hash_of(r))
        .collect();
    let limit = set
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10);
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    for old in history::stale(&synced.owned, &update, &in_use, limit) {
        ignore_404(revisions.delete(&old, &DeleteParams::default()).await)?;
    }

    let status = plan::status(&policy, &members);
    if status.available < status.ready {
        // Pods become available by waiting minReadySeconds, not by an event.
        requeue.get_or_insert(Duration::from_secs(1));
    }
    write_status(&ctx, &set, &status).await?;
    Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(300))))
}

/// Makes sure member `ordinal`'s claims exist; false while one of them is
/// still being deleted (the pod must wait for a fresh one).
async fn ensure_claims(ctx: &Ctx, set: &StatefulSet, ordinal: i32) -> Result<bool> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.shared.client.clone(), &ns);
    for claim in identity::claims_for(set, ordinal) {
        let cname = claim.name_any();
        if let Some(existing) = ctx.claims.get(&ObjectRef::new(&cname).within(&ns)) {
            if existing.metadata.deletion_timestamp.is_some() {
                return Ok(false);
            }
            continue;
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => ctx.shared.recorder.record(
                reference(set),
                "Normal",
                "SuccessfulCreate",
                format!(
                    "create Claim {cname} Pod {} in StatefulSet {} success",
                    identity::pod_name(set, ordinal),
                    set.name_any()
                ),
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                ctx.shared.recorder.record(
                    reference(set),
                    "Warning",
                    "FailedCreate",
                    format!(
                        "create Claim {cname} in StatefulSet {} failed error: {e}",
                        set.name_any()
                    ),
                );
                return Err(e.into());
            }
        }
    }
    Ok(true)
}

/// Gives every member's claims the owners the retention policy asks for,
/// so the garbage collector removes them with the set or the member, or
/// never (the default).
async fn sync_claim_owners(
    ctx: &Ctx,
    set: &StatefulSet,
    pods: &[Arc<Pod>],
    replicas: i32,
) -> Result<()> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let mut ours: Vec<String> = pods.iter().filter_map(|p| p.uid()).collect();
    ours.extend(set.uid());
    for pod in pods {
        let Some(ordinal) = identity::ordinal(&name, &pod.name_any()) else {
            continue;
        };
        let wanted = identity::claim_owners(set, ordinal >= replicas, Some(pod));
        for claim in identity::claims_for(set, ordinal) {
            let Some(existing) = ctx
                .claims
                .get(&ObjectRef::new(&claim.name_any()).within(&ns))
            else {
                continue;
            };
            if existing.metadata.deletion_timestamp.is_some()
                || identity::owners_match(&existing, &wanted, &ours)
            {
                continue;
            }
            let mut refs: Vec<_> = existing
                .owner_references()
                .iter()
                .filter(|r| !ours.contains(&r.uid))
                .cloned()
                .collect();
            refs.extend(wanted.iter().cloned());
            let patch = json!({"metadata": {"ownerReferences": refs,
                "resourceVersion": existing.metadata.resource_version}});
            match api
                .patch(
                    &existing.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Carries a plan out; false when a member waits for its claims.
async fn execute(
    ctx: &Ctx,
    set: &StatefulSet,
    api: &Api<Pod>,
    revisions: &[Arc<ControllerRevision>],
    decided: plan::Plan,
) -> Result<bool> {
    let uid = set.uid().unwrap_or_default();
    let set_name = set.name_any();
    for pod in &decided.delete {
        if context::delete_expected(&ctx.shared, api, &uid, pod).await? {
            ctx.shared.recorder.record(
                reference(set),
                "Normal",
                "SuccessfulDelete",
                format!("delete Pod {pod} in StatefulSet {set_name} successful"),
            );
        }
    }
    let mut all_made = true;
    for c in &decided.create {
        let template = revisions
            .iter()
            .find(|r| r.name_any() == c.revision)
            .and_then(|r| history::template_of(r))
            .unwrap_or_else(|| history::template(set));
        if !ensure_claims(ctx, set, c.ordinal).await? {
            all_made = false;
            continue;
        }
        let pod = identity::pod_for(set, &template, &c.revision, c.ordinal);
        let pname = pod.name_any();
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                ctx.shared.expectations.created(&uid, pname.clone());
                ctx.shared.recorder.record(
                    reference(set),
                    "Normal",
                    "SuccessfulCreate",
                    format!("create Pod {pname} in StatefulSet {set_name} successful"),
                );
            }
            // The old pod of this name is still there: wait for it to go.
            Err(kube::Error::Api(s)) if s.code == 409 => all_made = false,
            Err(e) => {
                ctx.shared.recorder.record(
                    reference(set),
                    "Warning",
                    "FailedCreate",
                    format!("create Pod {pname} in StatefulSet {set_name} failed error: {e}"),
                );
                return Err(e.into());
            }
        }
    }
    Ok(all_made)
}

/// Writes the status when it changed.
async fn write_status(ctx: &Ctx, set: &StatefulSet, s: &plan::Status) -> Result<()> {
    let generation = set.metadata.generation.unwrap_or(0);
    let old = set.status.clone().unwrap_or_default();
    let unchanged = old.replicas == s.replicas
        && old.ready_replicas.unwrap_or(0) == s.ready
        && old.available_replicas.unwrap_or(0) == s.available
        && old.current_replicas.unwrap_or(0) == s.current
        && old.updated_replicas.unwrap_or(0) == s.updated
        && old.current_revision.as_deref() == Some(s.current_revision.as_str())
        && old.update_revision.as_deref() == Some(s.update_revision.as_str())
        && old.observed_generation == Some(generation);
    if unchanged {
        return Ok(());
    }
    let api: Api<StatefulSet> = Api::namespaced(
        ctx.shared.client.clone(),
        &set.namespace().unwrap_or_default(),
    );
    let patch = json!({"status": {
        "replicas": s.replicas,
        "readyReplicas": s.ready,
        "availableReplicas": s.available,
        "currentReplicas": s.current,
        "updatedReplicas": s.updated,
        "currentRevision": s.current_revision,
        "updateRevision": s.update_revision,
        "observedGeneration": generation,
    }});
    ignore_404(
        api.patch_status(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await,
    )
}
