//! One claim's reconcile: give it the default class if it names none,
//! find or provision its volume, bind the two, and report its phase.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use super::{
    binder, localpath, Ctx, BIND_COMPLETED, BOUND_BY_CONTROLLER, PROVISIONER, SELECTED_NODE,
};
use crate::component::events::reference;
use crate::controllers::context::{Error, Result};

/// How often a claim waiting on something outside the API is looked at again.
const RETRY: Duration = Duration::from_secs(5);

pub(super) async fn reconcile(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action> {
    if let Some(done) = super::protection::reconcile(&claim, &ctx).await? {
        return Ok(done);
    }
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = claim.spec.clone().unwrap_or_default();

    // A claim that names no class gets the default one, as upstream's
    // admission and retroactive assignment do; "" means "no class".
    let beta_class = claim
        .annotations()
        .contains_key("volume.beta.kubernetes.io/storage-class");
    if spec.storage_class_name.is_none() && spec.volume_name.is_none() && !beta_class {
        if let Some(class) = ctx.default_class() {
            let patch = json!({"spec": {"storageClassName": class.name_any()}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            return Ok(Action::await_change());
        }
    }

    if let Some(volume) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        return bound_claim(&claim, volume, &api, &ctx).await;
    }

    let class_name = binder::claim_class(&claim).to_string();
    let class = ctx.class(&class_name);
    let wait_for_consumer = class
        .as_ref()
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer");
    let selected = claim.annotations().get(SELECTED_NODE).cloned();
    if wait_for_consumer && selected.is_none() {
        set_phase(&claim, &api, "Pending").await?;
        return Ok(Action::await_change());
    }
    let node = selected
        .as_deref()
        .and_then(|n| ctx.nodes.get(&ObjectRef::new(n)));
    let labels = node
        .as_ref()
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    let at = selected.as_deref().map(|n| (n, &labels));
    let volumes = ctx.volumes.state();
    if let Some(pv) = binder::best(&claim, volumes.iter().map(|v| &**v), at) {
        bind(&claim, pv, &ctx).await?;
        return Ok(Action::await_change());
    }
    set_phase(&claim, &api, "Pending").await?;
    match class.as_ref().map(|c| c.provisioner.as_str()) {
        Some(PROVISIONER) => {
            let Some(node) = node else {
                return Err(Error::Other(format!(
                    "claim {ns}/{name}: selected node {:?} not found",
                    selected.unwrap_or_default()
                )));
            };
            let class = class.as_deref().cloned().unwrap_or_default();
            let pv = localpath::volume_for(&claim, &class, &node).map_err(Error::Other)?;
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            match pvs.create(&PostParams::default(), &pv).await {
                Ok(_) => ctx.recorder.record(
                    reference(&*claim),
                    "Normal",
                    "ProvisioningSucceeded",
                    format!("Successfully provisioned volume {}", pv.name_any()),
                ),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            // The new volume's event brings the claim back to bind it.
            Ok(Action::requeue(RETRY))
        }
        Some(other) => {
            ctx.recorder.record(
                reference(&*claim),
                "Normal",
                "ExternalProvisioning",
                format!("Waiting for a volume to be created by the external provisioner {other:?}"),
            );
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        None => {
            let why = if class_name.is_empty() {
                "no persistent volumes available for this claim and no storage class is set"
                    .to_string()
            } else {
                format!("storageclass.storage.k8s.io {class_name:?} not found")
            };
            ctx.recorder
                .record(reference(&*claim), "Warning", "FailedBinding", why);
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// A claim that names its volume: finish the binding from the volume's
/// side if needed and report Bound, or Lost once the volume is gone.
async fn bound_claim(
    claim: &PersistentVolumeClaim,
    volume: &str,
    api: &Api<PersistentVolumeClaim>,
    ctx: &Ctx,
) -> Result<Action> {
    let Some(pv) = ctx.volumes.get(&ObjectRef::new(volume)) else {
        let was_bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if was_bound {
            ctx.recorder.record(
                reference(claim),
                "Warning",
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into(),
            );
            set_phase(claim, api, "Lost").await?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(RETRY));
    };
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let ours = claim_ref.is_some_and(|r| {
        r.name == claim.metadata.name
            && r.namespace == claim.metadata.namespace
            && r.uid == claim.metadata.uid
    });
    if !ours {
        if claim_ref.is_some_and(|r| r.uid.is_some()) {
            // Pre-bound by the user to a volume someone else holds.
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        bind(claim, &pv, ctx).await?;
        return Ok(Action::await_change());
    }
    let want = json!({
        "phase": "Bound",
        "accessModes": pv.spec.as_ref().and_then(|s| s.access_modes.clone()),
        "capacity": pv.spec.as_ref().and_then(|s| s.capacity.clone()),
    });
    let now = serde_json::to_value(claim.status.clone().unwrap_or_default()).unwrap_or_default();
    let same = ["phase", "accessModes", "capacity"]
        .iter()
        .all(|k| now.get(*k) == want.get(*k));
    if !same {
        api.patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": want})),
        )
        .await?;
    }
    Ok(Action::await_change())
}

/// Binds `claim` to `pv`: the volume's claimRef first (the write that can
/// conflict with another claim wanting the same volume), then the claim.
async fn bind(claim: &PersistentVolumeClaim, pv: &PersistentVolume, ctx: &Ctx) -> Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let wanted = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    };
    let current = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    if current.and_then(|r| r.uid.as_deref()) != claim.metadata.uid.as_deref() {
        let mut updated = pv.clone();
        if current.is_none() {
            updated
                .annotations_mut()
                .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
        }
        if let Some(s) = updated.spec.as_mut() {
            s.claim_ref = Some(wanted);
        }
        // Conditioned on the volume's resourceVersion: a second claim
        // racing for it gets a conflict and looks again.
        pvs.replace(&pv.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {"annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
        "spec": {"volumeName": pv.name_any()},
    });
    api.patch(
        &claim.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

async fn set_phase(
    claim: &PersistentVolumeClaim,
    api: &Api<PersistentVolumeClaim>,
    phase: &str,
) -> Result<()> {
    if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
        return Ok(());
    }
    api.patch_status(
        &claim.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await?;
    Ok(())
}
