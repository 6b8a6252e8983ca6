//! Jobs: run pods until `completions` of them succeed (or, for Indexed
//! Jobs, until each index 0..completions has succeeded once), replacing
//! failed ones with exponential back-off until `backoffLimit`.
//!
//! Every pod carries the `batch.kubernetes.io/job-tracking` finalizer, so a
//! finished pod cannot vanish before it is counted. Counting goes through
//! `status.uncountedTerminatedPods`: a pod's uid is recorded there first,
//! then its finalizer is removed, then it moves into `succeeded`/`failed`.
//! A restart between any two steps neither loses nor repeats a count.
//!
//! A failed pod is first judged by the Job's `podFailurePolicy`: one a
//! FailJob rule matches fails the Job (the verdict is kept in a
//! `FailureTarget` condition until every pod is counted), and one an Ignore
//! rule matches is released uncounted and replaced without back-off.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::context::{self, controller_of, Context, Error, Result};
use crate::component::events::reference;

mod failure_policy;
mod plan;
mod pods;
mod status;
mod tracking;

pub use failure_policy::{judge, Verdict};
pub use plan::{backoff, format_indexes, parse_indexes, plan, Counts, Plan};
use status::{status_subset, ttl};
use tracking::{drop_finalizer, has_finalizer, phase, pod_index, Tally};

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";

struct Ctx {
    shared: Arc<Context>,
    pods: Store<Pod>,
}

/// Runs the Job controller until the process ends.
pub async fn run(shared: Arc<Context>, concurrency: u16) {
    let (pods, pod_events) = (shared.pods.clone(), shared.pod_feed.subscribe());
    let ctx = Arc::new(Ctx { shared, pods });
    let api: Api<Job> = Api::all(ctx.shared.client.clone());
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let jobs = controller.store();
    let orphans = ctx.clone();
    controller
        .watches_stream(pod_events, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            let owner = controller_of(pod.metadata.owner_references.as_ref())
                .filter(|r| r.kind == "Job")
                .cloned();
            let oref = owner
                .as_ref()
                .map(|o| ObjectRef::<Job>::new(&o.name).within(&ns));
            if has_finalizer(&pod) {
                // A pod whose Job is gone (deleted, or the pod orphaned)
                // has nobody left to count it and must not wait on us; the
                // store is checked once it is complete.
                let (jobs, c, oref) = (jobs.clone(), orphans.clone(), oref.clone());
                let uid = owner.map(|o| o.uid);
                tokio::spawn(async move {
                    if jobs.wait_until_ready().await.is_err() {
                        return;
                    }
                    let alive = oref
                        .and_then(|r| jobs.get(&r))
                        .is_some_and(|j| j.uid() == uid);
                    if !alive {
                        let _ = drop_finalizer(&c.shared.client, &pod).await;
                    }
                });
            }
            oref
        })
        .run(
            |o, c| context::bounded(reconcile(o, c)),
            |job: Arc<Job>, e: &Error, _| {
                tracing::warn!(
                    "syncing Job {}/{}: {e}",
                    job.namespace().unwrap_or_default(),
                    job.name_any()
                );
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

fn failure_time(p: &Pod) -> Option<Timestamp> {
    let s = p.status.as_ref()?;
    let from_containers = s
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    from_containers.or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn condition_true(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

/// The message of a FailJob verdict already recorded on the Job.
fn recorded_fail_job(job: &Job) -> Option<String> {
    let cs = job.status.as_ref()?.conditions.as_ref()?;
    cs.iter()
        .find(|c| c.type_ == "FailureTarget" && c.status == "True")
        .filter(|c| c.reason.as_deref() == Some("PodFailurePolicy"))
        .map(|c| c.message.clone().unwrap_or_default())
}

/// The verdicts on the Job's failed pods: the uids of those an Ignore rule
/// matches, and the first FailJob verdict (earliest failure first).
fn judge_failures(job: &Job, spec: &Value, pods: &[Arc<Pod>]) -> (HashSet<String>, Option<String>) {
    let mut ignored = HashSet::new();
    let mut fail_job = recorded_fail_job(job);
    let policy = &spec["podFailurePolicy"];
    if policy.is_null() {
        return (ignored, fail_job);
    }
    let mut failed: Vec<&Arc<Pod>> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    failed.sort_by_key(|p| (failure_time(p), p.name_any()));
    for p in failed {
        match judge(policy, p) {
            Verdict::FailJob(why) => {
                fail_job.get_or_insert(why);
            }
            Verdict::Ignore => {
                ignored.extend(p.uid());
            }
            Verdict::Count => {}
        }
    }
    (ignored, fail_job)
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action> {
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.shared.client;
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    // The counts are read back fresh: a cached Job may predate our own
    // last status write, and adding to stale totals would count twice.
    let job = match jobs.get_opt(&name).await? {
        Some(j) if j.uid() == job.uid() => Arc::new(j),
        _ => return Ok(Action::await_change()),
    };
    let uid = job.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let now = Timestamp::now();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| {
            controller_of(p.metadata.owner_references.as_ref()).is_some_and(|r| r.uid == uid)
        })
        .collect();
    let present: HashMap<String, bool> = pods
        .iter()
        .map(|p| (p.name_any(), p.metadata.deletion_timestamp.is_some()))
        .collect();
    let (creating, _) = ctx.shared.expectations.outstanding(&uid, &present);
    let status = serde_json::to_value(job.status.clone().unwrap_or_default())
        .map_err(|e| Error::Other(e.to_string()))?;
    let spec = serde_json::to_value(job.spec.clone().unwrap_or_default())
        .map_err(|e| Error::Other(e.to_string()))?;
    let finished = condition_true(&job, "Complete") || condition_true(&job, "Failed");

    let indexed = spec["completionMode"] == "Indexed";
    let (ignored, fail_job) = judge_failures(&job, &spec, &pods);
    let tally = tracking::settle(
        client, &jobs, &name, &pods, &status, indexed, finished, &ignored,
    )
    .await?;
    let Tally {
        completed,
        still_ok,
        still_fail,
        succeeded,
        counted_failed,
        failed,
        succeeded_all,
    } = tally;
    let completed_text = format_indexes(&completed);
    let active: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .collect();
    let ready = active
        .iter()
        .filter(|p| context::pod_ready_since(p).is_some())
        .count();
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0);
    let last_failure = pods
        .iter()
        .filter(|p| phase(p) == "Failed")
        .filter(|p| !p.uid().is_some_and(|u| ignored.contains(&u)))
        .filter_map(|p| failure_time(p))
        .max();
    let counts = Counts {
        succeeded: succeeded_all,
        failed,
        completed: completed.clone(),
        since_failure: last_failure.map(|t| now.duration_since(t).as_secs()),
        running_for: start.map(|t| now.duration_since(t).as_secs()).unwrap_or(0),
        fail_job,
    };
    let active_named: Vec<(String, Option<i64>)> = active
        .iter()
        .map(|p| (p.name_any(), pod_index(p)))
        .collect();
    let mut decided = if finished {
        Plan {
            delete: active_named.iter().map(|(n, _)| n.clone()).collect(),
            ..Plan::default()
        }
    } else {
        plan(&spec, &counts, &active_named)
    };
    if creating > 0 {
        decided.create.clear();
    }
    // A FailJob verdict is written down at once, so that it holds even if
    // the pod that earned it is gone by the time the counting is done.
    let target = decided
        .finish
        .as_ref()
        .filter(|f| f.1 == "PodFailurePolicy")
        .map(|f| f.2.clone());
    // A Job finishes only once every finished pod is counted, so its
    // totals are final when the condition appears.
    if decided.finish.is_some() && !(still_ok.is_empty() && still_fail.is_empty()) {
        decided = Plan::default();
    }
    for pod_name in &decided.delete {
        context::ignore_404(pods_api.delete(pod_name, &DeleteParams::default()).await)?;
    }
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut created = 0;
    for index in &decided.create {
        let pod = pods::new_pod(job.as_ref(), &template, *index);
        let p = pods_api.create(&PostParams::default(), &pod).await?;
        ctx.shared.expectations.created(&uid, p.name_any());
        ctx.shared.recorder.record(
            reference(job.as_ref()),
            "Normal",
            "SuccessfulCreate",
            format!("Created pod: {}", p.name_any()),
        );
        created += 1;
    }

    // The status, written whole (conditions and counts are ours alone).
    let stamp = now.to_string();
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let mut set_condition = |ty: &str, st: &str, reason: &str, message: &str| {
        let same = conditions
            .iter()
            .any(|c| c["type"] == ty && c["status"] == st);
        if same {
            return;
        }
        conditions.retain(|c| c["type"] != ty);
        conditions.push(
            json!({"type": ty, "status": st, "reason": reason, "message": message,
                               "lastProbeTime": stamp, "lastTransitionTime": stamp}),
        );
    };
    let suspended = spec["suspend"] == true;
    if !finished {
        if suspended {
            set_condition("Suspended", "True", "JobSuspended", "Job suspended");
        } else if condition_true(&job, "Suspended") {
            set_condition("Suspended", "False", "JobResumed", "Job resumed");
        }
    }
    if let Some(why) = &target {
        set_condition("FailureTarget", "True", "PodFailurePolicy", why);
    }
    if let Some((ty, reason, message)) = &decided.finish {
        set_condition(ty, "True", reason, message);
    }
    let mut s = json!({
        "active": active.len() as i64 - decided.delete.len() as i64 + created,
        "ready": ready,
        "succeeded": succeeded,
        "failed": counted_failed,
        "uncountedTerminatedPods": {"succeeded": still_ok, "failed": still_fail},
        "conditions": conditions,
        "terminating": pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count(),
    });
    if indexed {
        s["completedIndexes"] = json!(completed_text);
    }
    if start.is_none() && !suspended {
        s["startTime"] = json!(stamp);
    }
    if decided.finish.as_ref().is_some_and(|f| f.0 == "Complete") {
        s["completionTime"] = json!(stamp);
    }
    if s != status_subset(&status, &s) {
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": s})),
        )
        .await?;
    }
    if let Some((_, reason, message)) = &decided.finish {
        let kind = if *reason == "CompletionsReached" {
            "Normal"
        } else {
            "Warning"
        };
        ctx.shared
            .recorder
            .record(reference(job.as_ref()), kind, reason, message.clone());
    }
    if finished || decided.finish.is_some() {
        return ttl(&jobs, &job, decided.finish.is_some(), now).await;
    }
    if let Some(w) = decided.wait {
        return Ok(Action::requeue(w));
    }
    if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64() {
        let left = (deadline - counts.running_for).max(1) as u64;
        return Ok(Action::requeue(Duration::from_secs(left)));
    }
    Ok(Action::await_change())
}
