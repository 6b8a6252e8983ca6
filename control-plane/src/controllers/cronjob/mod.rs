//! CronJobs: a Job for every time the schedule fires, in the CronJob's
//! time zone (UTC when it names none). `concurrencyPolicy` decides what a
//! run does while an earlier Job is still active (Allow: run anyway,
//! Forbid: skip this time, Replace: delete the old Job first). After an
//! outage only the latest missed time runs, and none that is older than
//! `startingDeadlineSeconds`. Finished Jobs beyond the history limits are
//! deleted, oldest first.

mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apimachinery::cron::{time_zone, Schedule};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::context::{self, controller_of, controller_ref, Context, Error, Result};
use crate::component::events::reference;
pub use plan::{beyond_history, due, job_name, Due, TOO_MANY_MISSED};

/// The annotation a CronJob's Job carries: the time it was scheduled for.
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct Ctx {
    shared: Arc<Context>,
    jobs: Store<Job>,
}

/// Runs the CronJob controller until the process ends.
pub async fn run(shared: Arc<Context>, concurrency: u16) {
    let (jobs, job_events) = context::reflected(Api::<Job>::all(shared.client.clone()));
    let ctx = Arc::new(Ctx { shared, jobs });
    let api: Api<CronJob> = Api::all(ctx.shared.client.clone());
    Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .watches_stream(job_events, |job: Job| {
            let ns = job.namespace().unwrap_or_default();
            controller_of(job.metadata.owner_references.as_ref())
                .filter(|r| r.kind == "CronJob")
                .map(|r| ObjectRef::<CronJob>::new(&r.name).within(&ns))
        })
        .run(
            |o, c| context::bounded(reconcile(o, c)),
            |cj: Arc<CronJob>, e: &Error, _| {
                tracing::warn!(
                    "syncing CronJob {}/{}: {e}",
                    cj.namespace().unwrap_or_default(),
                    cj.name_any()
                );
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// The finished condition of a Job, if it has one, with when it finished.
fn finished(job: &Job) -> Option<(&str, Timestamp)> {
    let status = job.status.as_ref()?;
    let c = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let when = status
        .completion_time
        .as_ref()
        .or(c.last_transition_time.as_ref())
        .map(|t| t.0)
        .or_else(|| job.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    Some((c.type_.as_str(), when))
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Requeue just after `next` fires, or wait for a change if it never does.
fn wait_for(next: Option<Timestamp>, now: Timestamp) -> Action {
    match next {
        Some(t) => {
            let ms = now.duration_until(t).as_millis().max(0) as u64 + 100;
            Action::requeue(Duration::from_millis(ms))
        }
        None => Action::await_change(),
    }
}

async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<()> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    context::ignore_404(jobs.delete(name, &dp).await)
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action> {
    ctx.jobs
        .wait_until_ready()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.shared.client;
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &ns);
    // Read fresh: the last schedule time decides what is due, and a cached
    // copy older than our own last write would run a time twice.
    let cj = match cronjobs.get_opt(&name).await? {
        Some(c) if c.uid() == cj.uid() => c,
        _ => return Ok(Action::await_change()),
    };
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let status = cj.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let mut owned: BTreeMap<String, Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| {
            controller_of(j.metadata.owner_references.as_ref()).is_some_and(|r| r.uid == uid)
        })
        .map(|j| (j.name_any(), j))
        .collect();
    // A Job this controller just made may not be in the cache yet: ask.
    for r in status.active.iter().flatten() {
        let Some(n) = r.name.as_ref().filter(|n| !owned.contains_key(*n)) else {
            continue;
        };
        if let Some(j) = jobs_api.get_opt(n).await? {
            if j.uid() == r.uid {
                owned.insert(n.clone(), Arc::new(j));
            }
        }
    }

    let was_active: Vec<&str> = status
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.name.as_deref())
        .collect();
    let mut active: Vec<ObjectReference> = Vec::new();
    let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
    let mut last_success = status.last_successful_time.as_ref().map(|t| t.0);
    for (n, j) in &owned {
        if j.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match finished(j) {
            None => active.push(job_ref(j)),
            Some((ty, when)) => {
                if was_active.contains(&n.as_str()) {
                    ctx.shared.recorder.record(
                        reference(&cj),
                        "Normal",
                        "SawCompletedJob",
                        format!("Saw completed job: {n}, condition: {ty}"),
                    );
                }
                if ty == "Complete" {
                    last_success = last_success.max(Some(when));
                    succeeded.push((n.clone(), when));
                } else {
                    failed.push((n.clone(), when));
                }
            }
        }
    }
    let mut gone = beyond_history(
        succeeded,
        i64::from(spec.successful_jobs_history_limit.unwrap_or(3)),
    );
    gone.extend(beyond_history(
        failed,
        i64::from(spec.failed_jobs_history_limit.unwrap_or(1)),
    ));
    for n in &gone {
        delete_job(&jobs_api, n).await?;
        ctx.shared.recorder.record(
            reference(&cj),
            "Normal",
            "SuccessfulDelete",
            format!("Deleted job {n}"),
        );
    }

    let mut last_schedule = status.last_schedule_time.as_ref().map(|t| t.0);
    let action = schedule(&ctx, &cj, &jobs_api, &mut active, &mut last_schedule, now).await?;

    let new_status = json!({
        "active": if active.is_empty() { serde_json::Value::Null } else { json!(active) },
        "lastScheduleTime": last_schedule.map(|t| t.to_string()),
        "lastSuccessfulTime": last_success.map(|t| t.to_string()),
    });
    let old_status = json!({
        "active": status.active.filter(|a| !a.is_empty()),
        "lastScheduleTime": status.last_schedule_time.map(|t| t.0.to_string()),
        "lastSuccessfulTime": status.last_successful_time.map(|t| t.0.to_string()),
    });
    if new_status != old_status {
        cronjobs
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": new_status})),
            )
            .await?;
    }
    Ok(action)
}

/// Starts the Job that is due, if any and the concurrency policy allows,
/// and says when to look again.
async fn schedule(
    ctx: &Ctx,
    cj: &CronJob,
    jobs_api: &Api<Job>,
    active: &mut Vec<ObjectReference>,
    last_schedule: &mut Option<Timestamp>,
    now: Timestamp,
) -> Result<Action> {
    let spec = cj.spec.clone().unwrap_or_default();
    if spec.suspend == Some(true) {
        return Ok(Action::await_change());
    }
    let warn = |reason: &str, message: String| {
        ctx.shared
            .recorder
            .record(reference(cj), "Warning", reason, message)
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            warn(
                "UnparseableSchedule",
                format!("unparseable schedule {:?}: {e}", spec.schedule),
            );
            return Ok(Action::await_change());
        }
    };
    let tz = match spec.time_zone.as_deref() {
        None => TimeZone::UTC,
        Some(name) => match time_zone(name) {
            Ok(tz) => tz,
            Err(e) => {
                warn("UnknownTimeZone", e);
                return Ok(Action::await_change());
            }
        },
    };
    let since = last_schedule
        .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let (at, missed, next) = match due(&schedule, &tz, since, spec.starting_deadline_seconds, now) {
        Due::Nothing { next } => return Ok(wait_for(next, now)),
        Due::Run { at, missed, next } => (at, missed, next),
    };
    if missed > TOO_MANY_MISSED {
        warn(
            "TooManyMissedTimes",
            format!("too many missed start times: more than {TOO_MANY_MISSED}; check clock skew"),
        );
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        // Skipped, not postponed: the time stays unrun and a later sync
        // past the next time moves on to that one.
        return Ok(wait_for(next, now));
    }
    if policy == "Replace" {
        for r in active.drain(..) {
            let n = r.name.unwrap_or_default();
            delete_job(jobs_api, &n).await?;
            ctx.shared.recorder.record(
                reference(cj),
                "Normal",
                "SuccessfulDelete",
                format!("Deleted job {n}"),
            );
        }
    }
    let template = spec.job_template;
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_AT.into(), at.to_string());
    let name = job_name(&cj.name_any(), at);
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: cj.namespace(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let made = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            ctx.shared.recorder.record(
                reference(cj),
                "Normal",
                "SuccessfulCreate",
                format!("Created job {name}"),
            );
            j
        }
        // Made by an earlier sync that did not get to record it.
        Err(kube::Error::Api(e)) if e.code == 409 => match jobs_api.get_opt(&name).await? {
            Some(j) => j,
            None => return Ok(Action::requeue(Duration::from_secs(1))),
        },
        Err(e) => return Err(e.into()),
    };
    let ours = controller_of(made.metadata.owner_references.as_ref())
        .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref());
    if !ours {
        warn(
            "FailedCreate",
            format!("job {name} already exists and is not controlled by this cron job"),
        );
        return Ok(wait_for(next, now));
    }
    if finished(&made).is_none() && !active.iter().any(|r| r.uid == made.uid()) {
        active.push(job_ref(&made));
    }
    *last_schedule = Some(at);
    Ok(wait_for(next, now))
}
