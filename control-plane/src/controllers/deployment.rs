//! Deployments: one ReplicaSet per pod template revision. A rollout scales
//! the new ReplicaSet up and the old ones down within maxSurge and
//! maxUnavailable (RollingUpdate) or all old first (Recreate), keeps a
//! revision history for `kubectl rollout undo`, and reports the status
//! `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apimachinery::selectors::selector_matches;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::context::{self, controller_of, controller_ref, Context, Error, Result};
use crate::component::events::reference;

const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";

struct Ctx {
    shared: Arc<Context>,
    replicasets: Store<ReplicaSet>,
}

/// Runs the deployment controller until the process ends.
pub async fn run(shared: Arc<Context>, concurrency: u16) {
    let (replicasets, rs_events) =
        context::reflected(Api::<ReplicaSet>::all(shared.client.clone()));
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        replicasets,
    });
    Controller::new(
        Api::<Deployment>::all(shared.client.clone()),
        watcher::Config::default(),
    )
    .owns_stream(rs_events)
    .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
    .run(
        |o, c| context::bounded(reconcile(o, c)),
        |d: Arc<Deployment>, e: &Error, _| match e {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => {
                Action::requeue(Duration::from_millis(200))
            }
            _ => {
                tracing::warn!("syncing deployment {}: {e}", d.name_any());
                Action::requeue(Duration::from_secs(2))
            }
        },
        ctx,
    )
    .for_each(|_| async {})
    .await;
}

/// The pod-template-hash of a Deployment's template.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    context::template_hash(template, 0)
}

/// The template an RS was made from: its own minus the hash label.
fn template_of(rs: &ReplicaSet) -> PodTemplateSpec {
    let mut t = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(HASH_LABEL);
        }
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn resolve(v: Option<&IntOrString>, total: i32, default: &str, round_up: bool) -> i32 {
    match v.cloned().unwrap_or(IntOrString::String(default.into())) {
        IntOrString::Int(n) => n.max(0),
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(25.0);
            let x = pct * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// (maxSurge, maxUnavailable) in pods; both zero would stall, so
/// unavailable becomes 1 as in Kubernetes.
fn surge_and_unavailable(d: &Deployment, replicas: i32) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let ru = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), replicas, "25%", true);
    let unavailable = resolve(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        "25%",
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action> {
    // Decisions need the whole picture: never act on a cache still listing.
    ctx.replicasets
        .wait_until_ready()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.shared.client;
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let name = d.name_any();
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);

    // The ReplicaSets this deployment controls, adopting matching orphans.
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in ctx.replicasets.state() {
        if rs.namespace().as_deref() != Some(ns.as_str())
            || rs.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        match controller_of(rs.metadata.owner_references.as_ref()) {
            Some(r) if r.uid == uid => owned.push((*rs).clone()),
            None if selector_matches(Some(&spec.selector), rs.labels()) => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(controller_ref(&*d));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid, "resourceVersion": rs.metadata.resource_version}});
                if rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .is_ok()
                {
                    owned.push((*rs).clone());
                }
            }
            _ => {}
        }
    }
    let template = spec.template.clone();
    let (new_idx, old): (Option<usize>, Vec<usize>) = {
        let new = owned.iter().position(|rs| template_of(rs) == template);
        let old = (0..owned.len()).filter(|i| Some(*i) != new).collect();
        (new, old)
    };
    let max_old_revision = old.iter().map(|i| revision(&owned[*i])).max().unwrap_or(0);
    let (surge, max_unavailable) = surge_and_unavailable(&d, replicas);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let paused = spec.paused.unwrap_or(false);
    let history_limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;

    let scale = |rs: &ReplicaSet, to: i32| {
        let api = rs_api.clone();
        let rs_name = rs.name_any();
        let from = spec_replicas(rs);
        let rs_rv = rs.metadata.resource_version.clone();
        let ctx = ctx.clone();
        let d = d.clone();
        async move {
            // The cached resourceVersion makes a decision taken on stale
            // numbers fail with 409 instead of scaling twice.
            let patch = json!({
                "metadata": {"annotations": {DESIRED: replicas.to_string(), MAX: (replicas + surge).to_string()},
                             "resourceVersion": rs_rv},
                "spec": {"replicas": to},
            });
            api.patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            if from != to {
                let dir = if to > from { "up" } else { "down" };
                tracing::info!(
                    "deployment {}: scaled {dir} {rs_name} from {from} to {to}",
                    d.name_any()
                );
                ctx.shared.recorder.record(
                    reference(&*d),
                    "Normal",
                    "ScalingReplicaSet",
                    format!("Scaled {dir} replica set {rs_name} from {from} to {to}"),
                );
            }
            Ok::<_, Error>(())
        }
    };

    let mut new_rs = new_idx.map(|i| owned[i].clone());
    if !paused {
        // The revision of the current template: the newest unless it is an
        // older one brought back (rollback), which becomes the newest.
        if let Some(rs) = &new_rs {
            if revision(rs) <= max_old_revision {
                let patch = json!({"metadata": {"annotations": {REVISION: (max_old_revision + 1).to_string()}}});
                let updated = rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
                new_rs = Some(updated);
            }
        }
        let old_total: i32 = old.iter().map(|i| spec_replicas(&owned[*i])).sum();
        let old_active: i32 = old
            .iter()
            .map(|i| owned[*i].status.as_ref().map(|s| s.replicas).unwrap_or(0))
            .sum();
        if new_rs.is_none() {
            let initial = if recreate {
                0
            } else if old_total == 0 {
                replicas
            } else {
                (replicas + surge - old_total).clamp(0, replicas)
            };
            new_rs = Some(
                create_new_rs(
                    &ctx,
                    &d,
                    &rs_api,
                    &template,
                    initial,
                    max_old_revision + 1,
                    surge,
                )
                .await?,
            );
        }
        let new = new_rs.clone().unwrap_or_default();
        let new_spec = spec_replicas(&new);
        if recreate {
            if old_total > 0 {
                for i in &old {
                    if spec_replicas(&owned[*i]) > 0 {
                        scale(&owned[*i], 0).await?;
                    }
                }
            } else if old_active == 0 && new_spec != replicas {
                scale(&new, replicas).await?;
            }
        } else {
            // Scale up the new ReplicaSet as far as maxSurge allows.
            let max_total = replicas + surge;
            let mut scaled_up = false;
            if new_spec < replicas {
                let room = max_total - (old_total + new_spec);
                if room > 0 {
                    scale(&new, (new_spec + room).min(replicas)).await?;
                    scaled_up = true;
                }
            } else if new_spec > replicas {
                scale(&new, replicas).await?;
            }
            // Scale down old ReplicaSets as far as maxUnavailable allows:
            // first their unavailable pods, then available ones. After a
            // scale-up the next sync does this, with fresh numbers.
            if old_total > 0 && !scaled_up {
                let min_available = replicas - max_unavailable;
                let new_status = new.status.clone().unwrap_or_default();
                let new_unavailable =
                    (spec_replicas(&new) - new_status.available_replicas.unwrap_or(0)).max(0);
                let all_available: i32 = owned
                    .iter()
                    .map(|rs| {
                        rs.status
                            .as_ref()
                            .and_then(|s| s.available_replicas)
                            .unwrap_or(0)
                    })
                    .sum();
                let all_total = old_total + spec_replicas(&new);
                let mut budget = (all_total - min_available - new_unavailable).max(0);
                let mut available_budget = (all_available - min_available).max(0);
                let mut olds: Vec<&ReplicaSet> = old.iter().map(|i| &owned[*i]).collect();
                olds.sort_by_key(|rs| revision(rs));
                for rs in olds {
                    let cur = spec_replicas(rs);
                    if cur == 0 {
                        continue;
                    }
                    let avail = rs
                        .status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    let unhealthy = (cur - avail).max(0).min(budget);
                    let mut down = unhealthy;
                    let healthy_down = (cur - unhealthy)
                        .min(available_budget)
                        .min(budget - unhealthy);
                    down += healthy_down.max(0);
                    if down > 0 {
                        scale(rs, cur - down).await?;
                        budget -= down;
                        available_budget -= healthy_down.max(0);
                    }
                }
            }
        }
        // Old, empty ReplicaSets beyond the history limit go.
        let mut empty: Vec<&ReplicaSet> = old
            .iter()
            .map(|i| &owned[*i])
            .filter(|rs| {
                spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
            })
            .collect();
        if empty.len() > history_limit {
            empty.sort_by_key(|rs| revision(rs));
            for rs in &empty[..empty.len() - history_limit] {
                let _ = rs_api
                    .delete(&rs.name_any(), &DeleteParams::background())
                    .await;
            }
        }
    }

    // Status, from the ReplicaSets' own status.
    let sum = |f: fn(&ReplicaSet) -> i32| owned.iter().map(f).sum::<i32>();
    let status_replicas = sum(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0));
    let ready = sum(|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let available = sum(|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
    });
    let new = new_rs.clone().unwrap_or_default();
    let updated = new.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    let complete = updated == replicas && status_replicas == replicas && available == replicas;
    let now = crate::component::now();
    let mut conditions: Vec<serde_json::Value> = Vec::new();
    let old_conditions = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let prev = old_conditions.iter().find(|c| c.type_ == type_);
        let transition = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone().unwrap_or(now.clone()),
            _ => now.clone(),
        };
        let update = match prev {
            Some(p) if p.status == status && p.reason.as_deref() == Some(reason) => {
                p.last_update_time.clone().unwrap_or(now.clone())
            }
            _ => now.clone(),
        };
        conditions.push(
            json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": transition, "lastUpdateTime": update}),
        );
    };
    let min_ok = available >= replicas - max_unavailable;
    condition(
        "Available",
        min_ok,
        if min_ok {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if min_ok {
            "Deployment has minimum availability.".into()
        } else {
            "Deployment does not have minimum availability.".into()
        },
    );
    let new_name = new.name_any();
    if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        );
    } else if paused {
        condition(
            "Progressing",
            false,
            "DeploymentPaused",
            "Deployment is paused".into(),
        );
    } else {
        condition(
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        );
    }
    let status = json!({
        "observedGeneration": d.metadata.generation.unwrap_or(0),
        "replicas": status_replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conditions,
    });
    let mut current =
        serde_json::to_value(d.status.clone().unwrap_or_default()).unwrap_or_default();
    // Timestamps aside, is anything different?
    let strip = |v: &mut serde_json::Value| {
        if let Some(cs) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                    o.remove("lastUpdateTime");
                }
            }
        }
    };
    let mut wanted = status.clone();
    strip(&mut current);
    strip(&mut wanted);
    let d_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    if current != wanted {
        d_api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    let rev = revision(&new).to_string();
    if !paused && new_rs.is_some() && d.annotations().get(REVISION) != Some(&rev) {
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        d_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(if complete {
        Action::requeue(Duration::from_secs(300))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

async fn create_new_rs(
    ctx: &Ctx,
    d: &Deployment,
    api: &Api<ReplicaSet>,
    template: &PodTemplateSpec,
    replicas: i32,
    revision: i64,
    surge: i32,
) -> Result<ReplicaSet> {
    let spec = d.spec.clone().unwrap_or_default();
    let hash = template_hash(template);
    let mut t = template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.clone());
    let mut annotations = BTreeMap::new();
    annotations.insert(REVISION.to_string(), revision.to_string());
    annotations.insert(DESIRED.to_string(), spec.replicas.unwrap_or(1).to_string());
    annotations.insert(
        MAX.to_string(),
        (spec.replicas.unwrap_or(1) + surge).to_string(),
    );
    // kubectl's change-cause, if the user recorded one, follows the revision.
    if let Some(cause) = d.annotations().get("kubernetes.io/change-cause") {
        annotations.insert("kubernetes.io/change-cause".into(), cause.clone());
    }
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(t),
        }),
        status: None,
    };
    let created = match api.create(&PostParams::default(), &rs).await {
        Ok(r) => r,
        // Made by an earlier sync whose result the cache has not shown yet.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.get(rs.metadata.name.as_deref().unwrap_or_default())
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    ctx.shared.recorder.record(
        reference(d),
        "Normal",
        "ScalingReplicaSet",
        format!(
            "Scaled up replica set {} from 0 to {replicas}",
            created.name_any()
        ),
    );
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_changes_with_the_template() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t);
        assert_eq!(a, template_hash(&t));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        t.metadata = Some(ObjectMeta {
            labels: Some([("app".to_string(), "x".to_string())].into()),
            ..Default::default()
        });
        assert_ne!(a, template_hash(&t));
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(
            resolve(Some(&IntOrString::String("25%".into())), 10, "25%", true),
            3
        );
        assert_eq!(
            resolve(Some(&IntOrString::String("25%".into())), 10, "25%", false),
            2
        );
        assert_eq!(resolve(Some(&IntOrString::Int(1)), 10, "25%", false), 1);
        assert_eq!(resolve(None, 4, "25%", true), 1);
    }
}
