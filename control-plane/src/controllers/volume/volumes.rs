//! One volume's reconcile: its phase from its claim (Available, Bound,
//! Released), and reclaiming a released one: Retain keeps it, Delete
//! removes a local-path volume's directory and then the volume.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use super::{localpath, Ctx, BOUND_BY_CONTROLLER};
use crate::component::events::reference;
use crate::controllers::context::Result;

pub(super) async fn reconcile(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action> {
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let name = pv.name_any();
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        set_phase(&api, &pv, "Available").await?;
        return Ok(Action::await_change());
    };
    let claim = ctx.claims.get(
        &ObjectRef::new(r.name.as_deref().unwrap_or_default())
            .within(r.namespace.as_deref().unwrap_or_default()),
    );
    let claim_alive = claim
        .as_ref()
        .is_some_and(|c| r.uid.is_none() || c.metadata.uid == r.uid);
    if claim_alive {
        let claim_volume = claim
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.as_deref());
        match claim_volume {
            Some(v) if v == name => set_phase(&api, &pv, "Bound").await?,
            // The claim went to another volume; a reservation the
            // controller made is given back.
            Some(v) if !v.is_empty() => {
                if pv.annotations().contains_key(BOUND_BY_CONTROLLER) {
                    let mut freed = (*pv).clone();
                    freed.annotations_mut().remove(BOUND_BY_CONTROLLER);
                    if let Some(s) = freed.spec.as_mut() {
                        s.claim_ref = None;
                    }
                    api.replace(&name, &PostParams::default(), &freed).await?;
                }
            }
            // Reserved for a claim still being bound.
            _ => set_phase(&api, &pv, "Available").await?,
        }
        return Ok(Action::await_change());
    }
    if r.uid.is_none() {
        // Reserved by name for a claim that does not exist yet.
        set_phase(&api, &pv, "Available").await?;
        return Ok(Action::await_change());
    }
    if phase != Some("Released") && phase != Some("Failed") {
        set_phase(&api, &pv, "Released").await?;
        return Ok(Action::await_change());
    }
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    if policy != "Delete" || phase == Some("Failed") {
        return Ok(Action::await_change());
    }
    if !localpath::provisioned_here(&pv) {
        ctx.recorder.record(
            reference(&*pv),
            "Warning",
            "VolumeFailedDelete",
            "no deleter for this kind of volume; delete it and its data by hand".into(),
        );
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed",
                "message": "no deleter for this kind of volume"}})),
        )
        .await?;
        return Ok(Action::await_change());
    }
    delete_local(&pv, &api, &ctx).await
}

/// Removes a released local-path volume: a helper pod on its node deletes
/// the directory; once it has succeeded the volume itself goes.
async fn delete_local(
    pv: &PersistentVolume,
    api: &Api<PersistentVolume>,
    ctx: &Ctx,
) -> Result<Action> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), localpath::HELPER_NAMESPACE);
    let helper = localpath::helper_name(pv);
    let existing = pods.get_opt(&helper).await?;
    let phase = existing
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.clone());
    match (existing, phase.as_deref()) {
        (None, _) => {
            let pod = match localpath::delete_helper(pv, &ctx.settings.helper_image) {
                Ok(p) => p,
                Err(why) => {
                    ctx.recorder.record(
                        reference(pv),
                        "Warning",
                        "VolumeFailedDelete",
                        why.clone(),
                    );
                    return Ok(Action::requeue(Duration::from_secs(60)));
                }
            };
            match pods.create(&PostParams::default(), &pod).await {
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
        (Some(_), Some("Succeeded")) => {
            match api.delete(&pv.name_any(), &DeleteParams::default()).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            let _ = pods.delete(&helper, &DeleteParams::default()).await;
            return Ok(Action::await_change());
        }
        (Some(_), Some("Failed")) => {
            ctx.recorder.record(
                reference(pv),
                "Warning",
                "VolumeFailedDelete",
                format!(
                    "pod {}/{helper} failed to remove the directory; retrying",
                    localpath::HELPER_NAMESPACE
                ),
            );
            let _ = pods.delete(&helper, &DeleteParams::default()).await;
        }
        (Some(_), _) => {}
    }
    // The helper's progress is not a volume event: look again soon.
    Ok(Action::requeue(Duration::from_secs(2)))
}

async fn set_phase(api: &Api<PersistentVolume>, pv: &PersistentVolume, phase: &str) -> Result<()> {
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
        return Ok(());
    }
    api.patch_status(
        &pv.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await?;
    Ok(())
}
