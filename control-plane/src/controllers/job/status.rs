//! What a Job's status write compares against, and deletion after `ttlSecondsAfterFinished`.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::controllers::context::{ignore_404, Result};

/// The fields of `old` that `new` sets, to tell whether a write changes anything.
pub(super) fn status_subset(old: &Value, new: &Value) -> Value {
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
pub(super) async fn ttl(
    jobs: &Api<Job>,
    job: &Job,
    just_now: bool,
    now: Timestamp,
) -> Result<Action> {
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
        ignore_404(jobs.delete(&job.name_any(), &dp).await)?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(Duration::from_secs(
        (i64::from(secs) - elapsed).max(1) as u64,
    )))
}
