//! ReplicaSets and ReplicationControllers: keep `spec.replicas` pods that
//! match the selector alive, adopting orphans that match and releasing
//! pods that no longer do. Both kinds share one reconcile function.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apimachinery::selectors::selector_matches;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::context::{
    self, controller_of, controller_ref, pod_active, pod_available, Context, Error, Result,
};
use crate::component::events::reference;

/// Most pods one sync creates; the rest come on the next sync.
const BURST: usize = 500;

/// What differs between a ReplicaSet and a ReplicationController.
pub trait Replicated:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn replicas(&self) -> i32;
    fn selector(&self) -> Option<LabelSelector>;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
    /// (replicas, fullyLabeled, ready, available, observedGeneration)
    fn status(&self) -> (i32, i32, i32, i32, i64);
}

impl Replicated for ReplicaSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<LabelSelector> {
        self.spec.as_ref().map(|s| s.selector.clone())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn status(&self) -> (i32, i32, i32, i32, i64) {
        let s = self.status.clone().unwrap_or_default();
        (
            s.replicas,
            s.fully_labeled_replicas.unwrap_or(0),
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
            s.observed_generation.unwrap_or(0),
        )
    }
}

impl Replicated for ReplicationController {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<LabelSelector> {
        // An RC without a selector uses its template's labels.
        let spec = self.spec.as_ref()?;
        let labels = spec.selector.clone().or_else(|| {
            spec.template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
        })?;
        if labels.is_empty() {
            return None;
        }
        Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        })
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn status(&self) -> (i32, i32, i32, i32, i64) {
        let s = self.status.clone().unwrap_or_default();
        (
            s.replicas,
            s.fully_labeled_replicas.unwrap_or(0),
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
            s.observed_generation.unwrap_or(0),
        )
    }
}

/// The shared context plus this controller's own pod cache, fed by the
/// same stream that triggers it.
pub struct Ctx {
    shared: Arc<Context>,
    pods: kube::runtime::reflector::Store<Pod>,
}

impl std::ops::Deref for Ctx {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

/// Runs the controller for kind `K` until the process ends.
pub async fn run<K: Replicated>(shared: Arc<Context>, concurrency: u16) {
    let (pods, pod_events) = (shared.pods.clone(), shared.pod_feed.subscribe());
    let ctx = Arc::new(Ctx { shared, pods });
    let api: Api<K> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let owners = controller.store();
    let kind = K::kind(&()).into_owned();
    let controller = controller.watches_stream(pod_events, move |pod: Pod| {
        let ns = pod.namespace().unwrap_or_default();
        let mut out: Vec<ObjectRef<K>> = Vec::new();
        match controller_of(pod.metadata.owner_references.as_ref()) {
            Some(r) if r.kind == kind => out.push(ObjectRef::new(&r.name).within(&ns)),
            Some(_) => {}
            None => {
                // An orphan: every owner whose selector matches may adopt it.
                let labels = pod.labels();
                for o in owners.state() {
                    if o.namespace().as_deref() == Some(ns.as_str())
                        && selector_matches(o.selector().as_ref(), labels)
                    {
                        out.push(ObjectRef::from_obj(&*o));
                    }
                }
            }
        }
        out
    });
    controller
        .run(
            |o, c| context::bounded(reconcile::<K>(o, c)),
            error_policy::<K>,
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("replica controller: {e}");
            }
        })
        .await;
}

fn error_policy<K: Replicated>(obj: Arc<K>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(
        "syncing {} {}/{}: {e}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    Action::requeue(Duration::from_secs(2))
}

/// The order in which surplus pods go: unscheduled before scheduled, then
/// pending before running, not-ready before ready, more restarts, newer.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, std::cmp::Reverse<String>) {
    let assigned = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready = context::pod_ready_since(p).is_some();
    let restarts: i64 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum())
        .unwrap_or(0);
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (
        u8::from(assigned),
        phase,
        u8::from(ready),
        -restarts,
        std::cmp::Reverse(created),
    )
}

async fn reconcile<K: Replicated>(owner: Arc<K>, ctx: Arc<Ctx>) -> Result<Action> {
    // Decisions need the whole picture: never act on a cache still listing.
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    if owner.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.uid().unwrap_or_default();
    let kind = K::kind(&());
    let name = owner.name_any();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = owner.selector();
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    let mut present = HashMap::new();
    for pod in ctx.pods.state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let matches = selector_matches(selector.as_ref(), pod.labels());
        match controller_of(pod.metadata.owner_references.as_ref()) {
            Some(r) if r.uid == uid => {
                present.insert(pod.name_any(), pod.metadata.deletion_timestamp.is_some());
                if matches {
                    owned.push(pod);
                } else {
                    release(&pods_api, &pod, &uid).await?;
                }
            }
            None if matches && pod_active(&pod) && adopt(&pods_api, &pod, &*owner).await? => {
                present.insert(pod.name_any(), false);
                owned.push(pod);
            }
            _ => {}
        }
    }
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pod_active(p)).collect();
    let (creating, deleting) = ctx.expectations.outstanding(&uid, &present);
    let want = owner.replicas().max(0) as usize;
    let have = active.len() + creating - deleting.min(active.len());
    let mut requeue = None;
    if creating == 0 && deleting == 0 {
        if have < want {
            let n = (want - have).min(BURST);
            let template = owner.template().cloned().unwrap_or_default();
            create_pods(&ctx, &pods_api, &*owner, &template, n).await?;
            if want - have > BURST {
                requeue = Some(Duration::from_millis(100));
            }
        } else if have > want {
            let mut victims: Vec<&Arc<Pod>> = active.clone();
            victims.sort_by_key(|p| deletion_rank(p));
            for pod in victims.into_iter().take(have - want) {
                let pname = pod.name_any();
                if context::delete_expected(&ctx.shared, &pods_api, &uid, &pname).await? {
                    ctx.recorder.record(
                        reference(&*owner),
                        "Normal",
                        "SuccessfulDelete",
                        format!("Deleted pod: {pname}"),
                    );
                }
            }
        }
    } else {
        // Wait for the cache to show what was already done.
        requeue = Some(Duration::from_secs(1));
    }

    // Status.
    let now = k8s_openapi::jiff::Timestamp::now();
    let min_ready = owner.min_ready_seconds();
    let template_labels: BTreeMap<String, String> = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let replicas = active.len() as i32;
    let fully = active
        .iter()
        .filter(|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })
        .count() as i32;
    let ready = active
        .iter()
        .filter(|p| context::pod_ready_since(p).is_some())
        .count() as i32;
    let available = active
        .iter()
        .filter(|p| pod_available(p, min_ready, now))
        .count() as i32;
    if available < ready && min_ready > 0 {
        requeue.get_or_insert(Duration::from_secs(1));
    }
    let generation = owner.meta().generation.unwrap_or(0);
    let status = (replicas, fully, ready, available, generation);
    if owner.status() != status {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {
            "replicas": replicas, "fullyLabeledReplicas": fully, "readyReplicas": ready,
            "availableReplicas": available, "observedGeneration": generation,
        }});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if have != want {
        tracing::info!("{kind} {ns}/{name}: want {want}, have {have}");
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

async fn create_pods<K: Replicated>(
    ctx: &Context,
    api: &Api<Pod>,
    owner: &K,
    template: &PodTemplateSpec,
    n: usize,
) -> Result<()> {
    let uid = owner.uid().unwrap_or_default();
    let tmeta = template.metadata.clone().unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.name_any())),
            namespace: owner.namespace(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![controller_ref(owner)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    // Slow start, as Kubernetes does: 1, 2, 4, ... at once, stopping at
    // the first error so a broken template does not flood the API.
    let mut left = n;
    let mut batch = 1;
    while left > 0 {
        let k = batch.min(left);
        let pp = PostParams::default();
        let results = futures::future::join_all((0..k).map(|_| api.create(&pp, &pod))).await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => {
                    let pname = p.name_any();
                    ctx.expectations.created(&uid, pname.clone());
                    ctx.recorder.record(
                        reference(owner),
                        "Normal",
                        "SuccessfulCreate",
                        format!("Created pod: {pname}"),
                    );
                }
                Err(e) => {
                    if first_err.is_none() {
                        ctx.recorder.record(
                            reference(owner),
                            "Warning",
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        );
                        first_err = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        left -= k;
        batch *= 2;
    }
    Ok(())
}

/// Makes `owner` the controller of an orphan pod. False if the pod changed
/// or went away meanwhile.
async fn adopt<K: Replicated>(api: &Api<Pod>, pod: &Pod, owner: &K) -> Result<bool> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(owner));
    // The uid precondition stops adoption of a recreated pod of the same name.
    context::set_pod_owners(api, pod, &refs).await
}

/// Drops the owner reference of a pod that no longer matches.
async fn release(api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> Result<()> {
    let refs: Vec<_> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}
