//! Jobs: run pods until `completions` of them succeed (or, for Indexed
//! Jobs, until each index 0..completions has succeeded once), replacing
//! failed ones with exponential back-off until `backoffLimit`.
//!
//! Every pod carries the `batch.kubernetes.io/job-tracking` finalizer, so a
//! finished pod cannot vanish before it is counted. Counting goes through
//! `status.uncountedTerminatedPods`: a pod's uid is recorded there first,
//! then its finalizer is removed, then it moves into `succeeded`/`failed`.
//! A restart between any two steps neither loses nor repeats a count.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::context::{self, controller_of, controller_ref, Context, Error, Result};
use crate::component::events::reference;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct Ctx {
    shared: Arc<Context>,
    pods: Store<Pod>,
}

/// Runs the Job controller until the process ends.
pub async fn run(shared: Arc<Context>, concurrency: u16) {
    let (pods, pod_events) = context::reflected(Api::<Pod>::all(shared.client.clone()));
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

fn has_finalizer(p: &Pod) -> bool {
    p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn pod_index(p: &Pod) -> Option<i64> {
    p.annotations().get(INDEX_KEY)?.parse().ok()
}

async fn drop_finalizer(client: &kube::Client, pod: &Pod) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let rest: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": rest, "resourceVersion": pod.resource_version()}});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `0-2,4` from {0,1,2,4}, as Kubernetes writes completedIndexes.
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().peekable();
    while let Some(&start) = it.next() {
        let mut end = start;
        while it.peek().is_some_and(|&&n| n == end + 1) {
            end = *it.next().expect("peeked");
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b.min(a + 100_000));
                }
            }
            None => out.extend(part.parse::<i64>().ok()),
        }
    }
    out
}

/// Back-off before the next pod after `failures` failures: 10 s, doubling, at most 6 min.
pub fn backoff(failures: i64) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let shift = (failures - 1).min(16) as u32;
    (BACKOFF_BASE * 2u32.pow(shift)).min(BACKOFF_MAX)
}

/// What a sync decided, computed from the Job and its pods alone.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create; for Indexed Jobs, their indexes.
    pub create: Vec<Option<i64>>,
    /// Active pods to delete (by name).
    pub delete: Vec<String>,
    /// The condition to add, with its reason and message.
    pub finish: Option<(&'static str, &'static str, &'static str)>,
    /// Wait before creating (back-off), if creation is held back.
    pub wait: Option<Duration>,
}

/// The counts a sync works from.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub succeeded: i64,
    pub failed: i64,
    pub completed: BTreeSet<i64>,
    /// Seconds since the last failure, if any pod failed.
    pub since_failure: Option<i64>,
    /// Seconds since the job started.
    pub running_for: i64,
}

/// The pure decision: `active` are the names (and indexes) of live pods.
pub fn plan(spec: &Value, counts: &Counts, active: &[(String, Option<i64>)]) -> Plan {
    let mut p = Plan::default();
    let indexed = spec["completionMode"] == "Indexed";
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let all_active = || active.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let done = match (indexed, completions) {
        (true, Some(c)) => (0..c).all(|i| counts.completed.contains(&i)),
        (_, Some(c)) => counts.succeeded >= c,
        (_, None) => counts.succeeded > 0 && active.is_empty(),
    };
    if done {
        p.finish = Some((
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        ));
        p.delete = all_active();
        return p;
    }
    if counts.failed > backoff_limit {
        p.finish = Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ));
        p.delete = all_active();
        return p;
    }
    if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64() {
        if counts.running_for >= deadline {
            p.finish = Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
            p.delete = all_active();
            return p;
        }
    }
    if spec["suspend"] == true {
        p.delete = all_active();
        return p;
    }
    let want: i64 = match (indexed, completions) {
        (true, Some(c)) => parallelism.min(c - counts.completed.len() as i64),
        (_, Some(c)) => parallelism.min(c - counts.succeeded),
        (_, None) if counts.succeeded > 0 => 0,
        (_, None) => parallelism,
    };
    let have = active.len() as i64;
    if have > want {
        p.delete = active[want.max(0) as usize..]
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        return p;
    }
    if let Some(since) = counts.since_failure {
        let delay = backoff(counts.failed).as_secs() as i64;
        if since < delay {
            p.wait = Some(Duration::from_secs((delay - since) as u64));
            return p;
        }
    }
    let missing = (want - have).max(0);
    if indexed {
        let busy: BTreeSet<i64> = active.iter().filter_map(|(_, i)| *i).collect();
        p.create = (0..completions.unwrap_or(0))
            .filter(|i| !counts.completed.contains(i) && !busy.contains(i))
            .take(missing as usize)
            .map(Some)
            .collect();
    } else {
        p.create = vec![None; missing as usize];
    }
    p
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

    // Step 1: finished pods still holding the finalizer are recorded as
    // uncounted (and their indexes as completed) before anything else.
    let uids = |k: &str| -> BTreeSet<String> {
        status["uncountedTerminatedPods"][k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (mut unc_ok, mut unc_fail) = (uids("succeeded"), uids("failed"));
    let mut completed = parse_indexes(status["completedIndexes"].as_str().unwrap_or(""));
    let mut recorded = false;
    for p in pods.iter().filter(|p| has_finalizer(p)) {
        let puid = p.uid().unwrap_or_default();
        if unc_ok.contains(&puid) || unc_fail.contains(&puid) {
            continue;
        }
        match phase(p) {
            "Succeeded" => {
                unc_ok.insert(puid);
                completed.extend(pod_index(p));
                recorded = true;
            }
            "Failed" => {
                unc_fail.insert(puid);
                recorded = true;
            }
            _ => {}
        }
    }
    let indexed = spec["completionMode"] == "Indexed";
    let completed_text = format_indexes(&completed);
    if recorded {
        let mut s = json!({"uncountedTerminatedPods": {"succeeded": unc_ok, "failed": unc_fail}});
        if indexed {
            s["completedIndexes"] = json!(completed_text);
        }
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": s})),
        )
        .await?;
    }
    // Step 2: release every pod that no longer needs tracking.
    for p in pods.iter().filter(|p| has_finalizer(p)) {
        let puid = p.uid().unwrap_or_default();
        let counted = unc_ok.contains(&puid) || unc_fail.contains(&puid);
        if counted || p.metadata.deletion_timestamp.is_some() || finished {
            drop_finalizer(client, p).await?;
        }
    }
    // Step 3: pods seen released (or gone) move into the totals; the rest
    // stay uncounted until their release shows in the cache.
    let held: BTreeSet<String> = pods
        .iter()
        .filter(|p| has_finalizer(p))
        .filter_map(|p| p.uid())
        .collect();
    let (moved_ok, still_ok): (BTreeSet<String>, BTreeSet<String>) =
        unc_ok.iter().cloned().partition(|u| !held.contains(u));
    let (moved_fail, still_fail): (BTreeSet<String>, BTreeSet<String>) =
        unc_fail.iter().cloned().partition(|u| !held.contains(u));
    let mut succeeded = status["succeeded"].as_i64().unwrap_or(0) + moved_ok.len() as i64;
    if indexed {
        succeeded = completed.len() as i64;
    }
    let counted_failed = status["failed"].as_i64().unwrap_or(0) + moved_fail.len() as i64;
    // Decisions count every finished pod, recorded or not.
    let failed = counted_failed + still_fail.len() as i64;
    let succeeded_all = if indexed {
        succeeded
    } else {
        succeeded + still_ok.len() as i64
    };

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
        .filter_map(|p| failure_time(p))
        .max();
    let counts = Counts {
        succeeded: succeeded_all,
        failed,
        completed: completed.clone(),
        since_failure: last_failure.map(|t| now.duration_since(t).as_secs()),
        running_for: start.map(|t| now.duration_since(t).as_secs()).unwrap_or(0),
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
    // A Job finishes only once every finished pod is counted, so its
    // totals are final when the condition appears.
    if decided.finish.is_some() && !(still_ok.is_empty() && still_fail.is_empty()) {
        decided = Plan::default();
    }
    for pod_name in &decided.delete {
        match pods_api.delete(pod_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut created = 0;
    for index in &decided.create {
        let tmeta = template.metadata.clone().unwrap_or_default();
        let mut pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(match index {
                    Some(i) => format!("{name}-{i}-"),
                    None => format!("{name}-"),
                }),
                namespace: Some(ns.clone()),
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                finalizers: Some(vec![TRACKING_FINALIZER.to_string()]),
                owner_references: Some(vec![controller_ref(job.as_ref())]),
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        if let Some(i) = index {
            pod.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(INDEX_KEY.into(), i.to_string());
            pod.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(INDEX_KEY.into(), i.to_string());
            if let Some(ps) = pod.spec.as_mut() {
                ps.hostname = Some(format!("{name}-{i}"));
                for c in &mut ps.containers {
                    c.env.get_or_insert_with(Vec::new).push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: Some(i.to_string()),
                        value_from: None,
                    });
                }
            }
        }
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
    if let Some((ty, reason, message)) = decided.finish {
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
    if decided.finish.is_some_and(|f| f.0 == "Complete") {
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
    if let Some((_, reason, _)) = decided.finish {
        let kind = if reason == "CompletionsReached" {
            "Normal"
        } else {
            "Warning"
        };
        ctx.shared.recorder.record(
            reference(job.as_ref()),
            kind,
            reason,
            decided.finish.map(|f| f.2).unwrap_or_default().to_string(),
        );
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

/// The fields of `old` that `new` sets, to tell whether a write changes anything.
fn status_subset(old: &Value, new: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in new.as_object().into_iter().flat_map(|m| m.keys()) {
        let v = old.get(k).cloned().unwrap_or(match k.as_str() {
            "active" | "ready" | "succeeded" | "failed" | "terminating" => json!(0),
            _ => Value::Null,
        });
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

/// Deletes a finished Job `ttlSecondsAfterFinished` after it finished.
async fn ttl(jobs: &Api<Job>, job: &Job, just_now: bool, now: Timestamp) -> Result<Action> {
    let Some(secs) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let finished_at = if just_now {
        Some(now)
    } else {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            })
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
    };
    let elapsed = finished_at
        .map(|t| now.duration_since(t).as_secs())
        .unwrap_or(0);
    if elapsed >= i64::from(secs) {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match jobs.delete(&job.name_any(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(Duration::from_secs(
        (i64::from(secs) - elapsed).max(1) as u64,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(n: usize) -> Vec<(String, Option<i64>)> {
        (0..n).map(|i| (format!("p{i}"), None)).collect()
    }

    #[test]
    fn keeps_parallelism_pods_until_completions_succeed() {
        let spec = json!({"completions": 5, "parallelism": 2, "backoffLimit": 6});
        let c = Counts::default();
        assert_eq!(plan(&spec, &c, &[]).create.len(), 2);
        assert_eq!(plan(&spec, &c, &active(1)).create.len(), 1);
        let c = Counts {
            succeeded: 4,
            ..Counts::default()
        };
        assert_eq!(
            plan(&spec, &c, &[]).create.len(),
            1,
            "only one completion is left"
        );
        let c = Counts {
            succeeded: 5,
            ..Counts::default()
        };
        assert_eq!(plan(&spec, &c, &[]).finish.map(|f| f.0), Some("Complete"));
    }

    #[test]
    fn failures_back_off_then_fail_the_job() {
        let spec = json!({"completions": 1, "parallelism": 1, "backoffLimit": 2});
        let c = Counts {
            failed: 2,
            since_failure: Some(5),
            ..Counts::default()
        };
        let p = plan(&spec, &c, &[]);
        assert!(p.create.is_empty());
        assert_eq!(
            p.wait,
            Some(Duration::from_secs(15)),
            "20 s after the second failure"
        );
        let c = Counts {
            failed: 2,
            since_failure: Some(25),
            ..Counts::default()
        };
        assert_eq!(plan(&spec, &c, &[]).create.len(), 1);
        let c = Counts {
            failed: 3,
            since_failure: Some(0),
            ..Counts::default()
        };
        let p = plan(&spec, &c, &active(1));
        assert_eq!(p.finish.map(|f| f.1), Some("BackoffLimitExceeded"));
        assert_eq!(p.delete, ["p0"]);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(30), Duration::from_secs(360));
    }

    #[test]
    fn deadline_and_suspend_stop_the_pods() {
        let spec = json!({"completions": 3, "parallelism": 3, "activeDeadlineSeconds": 60});
        let c = Counts {
            running_for: 60,
            ..Counts::default()
        };
        let p = plan(&spec, &c, &active(3));
        assert_eq!(p.finish.map(|f| f.1), Some("DeadlineExceeded"));
        assert_eq!(p.delete.len(), 3);
        let spec = json!({"completions": 3, "parallelism": 3, "suspend": true});
        let p = plan(&spec, &Counts::default(), &active(2));
        assert_eq!((p.delete.len(), p.create.len(), p.finish), (2, 0, None));
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let spec = json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"});
        let c = Counts {
            completed: [0].into(),
            ..Counts::default()
        };
        let busy = vec![("a".to_string(), Some(1))];
        assert_eq!(plan(&spec, &c, &busy).create, [Some(2)]);
        let c = Counts {
            completed: [0, 1, 2, 3].into(),
            ..Counts::default()
        };
        assert_eq!(plan(&spec, &c, &[]).finish.map(|f| f.0), Some("Complete"));
    }

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert!(parse_indexes("x,-").is_empty());
    }
}
