//! Namespace deletion: once a namespace is Terminating, delete everything
//! in it, wait until nothing is left, then drop the `kubernetes` finalizer
//! through `namespaces/<name>/finalize` so the API server removes it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::context::{Context, Error, Result};
use crate::apiserver::resources::RESOURCES;

/// Runs the namespace controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    Controller::new(
        Api::<Namespace>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile,
        |ns: Arc<Namespace>, e: &Error, _| {
            tracing::warn!("deleting namespace {}: {e}", ns.name_any());
            Action::requeue(Duration::from_secs(2))
        },
        ctx,
    )
    .for_each(|_| async {})
    .await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == "kubernetes") {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let mut remaining: Vec<String> = Vec::new();
    for r in RESOURCES.iter().filter(|r| {
        r.namespaced && r.verbs.contains(&"deletecollection") && r.verbs.contains(&"list")
    }) {
        let ar = ApiResource {
            group: r.group.into(),
            version: r.version.into(),
            api_version: if r.group.is_empty() {
                r.version.into()
            } else {
                format!("{}/{}", r.group, r.version)
            },
            kind: r.kind.into(),
            plural: r.plural.into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
        let list = api.list(&ListParams::default()).await?;
        if list.items.is_empty() {
            continue;
        }
        let live = list
            .items
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .count();
        if live > 0 {
            api.delete_collection(&DeleteParams::background(), &ListParams::default())
                .await?;
        }
        remaining.push(format!(
            "{}.{} has {} resource instances",
            r.plural,
            r.group,
            list.items.len()
        ));
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    if !remaining.is_empty() {
        let message = format!("Some resources are remaining: {}", remaining.join(", "));
        let patch = json!({"status": {"phase": "Terminating", "conditions": [{
            "type": "NamespaceContentRemaining", "status": "True",
            "reason": "SomeResourcesRemain", "message": message,
            "lastTransitionTime": crate::component::now(),
        }]}});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut done = (*ns).clone();
    if let Some(spec) = done.spec.as_mut() {
        spec.finalizers = Some(
            finalizers
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect(),
        );
    }
    match api
        .replace_subresource::<Namespace>("finalize", &name, &PostParams::default(), &done)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!("namespace {name} is empty and finalized");
    Ok(Action::await_change())
}
