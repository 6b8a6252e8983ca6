//! Counting finished pods without losing or repeating one across restarts:
//! record a finished pod's uid as uncounted, release its finalizer, then
//! move it into the totals once the release is seen.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::plan::{format_indexes, parse_indexes};
use super::{INDEX_KEY, TRACKING_FINALIZER};
use crate::controllers::context::{ignore_404, Result};

/// The Job's counts after this sync's tracking steps.
pub(super) struct Tally {
    /// Indexes that have succeeded (Indexed Jobs).
    pub completed: BTreeSet<i64>,
    /// Succeeded pods recorded but not yet released.
    pub still_ok: BTreeSet<String>,
    /// Failed pods recorded but not yet released.
    pub still_fail: BTreeSet<String>,
    /// `status.succeeded` as it will be written.
    pub succeeded: i64,
    /// `status.failed` as it will be written.
    pub counted_failed: i64,
    /// Every failed pod, recorded or not: what decisions count.
    pub failed: i64,
    /// Every succeeded pod, recorded or not.
    pub succeeded_all: i64,
}

/// Runs the three tracking steps for `pods`, the Job's own pods, against
/// the Job's fresh `status`. Failed pods whose uid is in `ignored` (an
/// Ignore rule matched them) are released without being counted.
#[allow(clippy::too_many_arguments)]
pub(super) async fn settle(
    client: &kube::Client,
    jobs: &Api<Job>,
    name: &str,
    pods: &[Arc<Pod>],
    status: &Value,
    indexed: bool,
    finished: bool,
    ignored: &HashSet<String>,
) -> Result<Tally> {
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
            "Failed" if !ignored.contains(&puid) => {
                unc_fail.insert(puid);
                recorded = true;
            }
            _ => {}
        }
    }
    if recorded {
        let mut s = json!({"uncountedTerminatedPods": {"succeeded": unc_ok, "failed": unc_fail}});
        if indexed {
            s["completedIndexes"] = json!(format_indexes(&completed));
        }
        jobs.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": s})),
        )
        .await?;
    }
    // Step 2: release every pod that no longer needs tracking.
    for p in pods.iter().filter(|p| has_finalizer(p)) {
        let puid = p.uid().unwrap_or_default();
        let counted = unc_ok.contains(&puid) || unc_fail.contains(&puid) || ignored.contains(&puid);
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
    Ok(Tally {
        completed,
        still_ok,
        still_fail,
        succeeded,
        counted_failed,
        failed,
        succeeded_all,
    })
}

pub(super) fn has_finalizer(p: &Pod) -> bool {
    p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

pub(super) fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub(super) fn pod_index(p: &Pod) -> Option<i64> {
    p.annotations().get(INDEX_KEY)?.parse().ok()
}

pub(super) async fn drop_finalizer(client: &kube::Client, pod: &Pod) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let rest: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": rest, "resourceVersion": pod.resource_version()}});
    ignore_404(
        api.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await,
    )
}
