//! Claim protection: every claim carries the `kubernetes.io/pvc-protection`
//! finalizer, so deleting a claim a pod still uses only marks it; the
//! claim goes once no scheduled, unfinished pod names it any more, and
//! the data is not pulled from under a running pod.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;

use super::Ctx;
use crate::controllers::context::{Error, Result};

/// The finalizer that keeps a claim while pods use it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

/// How often a claim being deleted while in use is looked at again.
const IN_USE_RETRY: Duration = Duration::from_secs(3);

/// Does any of `pods` use `claim`? Only pods bound to a node count (an
/// agent never starts a pod whose claim is being deleted), and not once
/// they have finished.
pub fn in_use<'a>(claim: &PersistentVolumeClaim, pods: impl IntoIterator<Item = &'a Pod>) -> bool {
    let ns = claim.namespace();
    let name = claim.name_any();
    pods.into_iter().any(|p| {
        let spec = p.spec.as_ref();
        let scheduled = spec
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        p.namespace() == ns
            && scheduled
            && !finished
            && spec
                .and_then(|s| s.volumes.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .any(|c| c.claim_name == name)
    })
}

/// Adds the finalizer to a live claim and removes it from a deleted one
/// nobody uses. Some(action) when the claim needs nothing else now.
pub(super) async fn reconcile(
    claim: &PersistentVolumeClaim,
    ctx: &Arc<Ctx>,
) -> Result<Option<Action>> {
    let finalizers = claim.finalizers().to_vec();
    let has = finalizers.iter().any(|f| f == PVC_PROTECTION);
    let deleting = claim.metadata.deletion_timestamp.is_some();
    if deleting && !has {
        return Ok(Some(Action::await_change()));
    }
    if !deleting && has {
        return Ok(None);
    }
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let next: Vec<String> = if deleting {
        ctx.pods
            .wait_until_ready()
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        let pods = ctx.pods.state();
        if in_use(claim, pods.iter().map(|p| &**p)) {
            return Ok(Some(Action::requeue(IN_USE_RETRY)));
        }
        finalizers
            .into_iter()
            .filter(|f| f != PVC_PROTECTION)
            .collect()
    } else {
        let mut f = finalizers;
        f.push(PVC_PROTECTION.into());
        f
    };
    // Conditioned on the resourceVersion, so another writer's finalizer
    // is never dropped.
    let patch = json!({"metadata": {"finalizers": next,
        "resourceVersion": claim.metadata.resource_version}});
    match api
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(Some(Action::await_change())),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Some(Action::await_change())),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Some(Action::requeue(Duration::from_millis(200))))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "default"}}))
            .expect("a claim")
    }

    fn pod(ns: &str, node: Option<&str>, phase: &str, claim: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": ns},
            "spec": {"nodeName": node, "containers": [],
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": phase},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_claim_is_in_use_only_by_scheduled_unfinished_pods_naming_it() {
        let c = claim();
        assert!(in_use(&c, &[pod("default", Some("n1"), "Running", "data")]));
        assert!(in_use(&c, &[pod("default", Some("n1"), "Pending", "data")]));
        for idle in [
            pod("default", None, "Pending", "data"),
            pod("default", Some("n1"), "Succeeded", "data"),
            pod("default", Some("n1"), "Failed", "data"),
            pod("default", Some("n1"), "Running", "other"),
            pod("prod", Some("n1"), "Running", "data"),
        ] {
            assert!(!in_use(&c, std::slice::from_ref(&idle)), "{idle:?}");
        }
    }
}
