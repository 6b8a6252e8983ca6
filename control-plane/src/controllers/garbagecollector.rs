//! The garbage collector: deletes objects whose owners are all gone
//! (background cascading), holds an owner deleted in the foreground until
//! its blocking dependents are gone, and strips owner references from
//! dependents of an owner deleted with the orphan policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use super::context::Context;

/// The kinds whose owner references are followed: (group, version, kind, plural).
/// The controller-manager's role grants exactly these (`authz/components.rs`).
pub const KINDS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Pod", "pods"),
    ("", "v1", "ReplicationController", "replicationcontrollers"),
    ("", "v1", "Service", "services"),
    ("", "v1", "Endpoints", "endpoints"),
    ("", "v1", "ConfigMap", "configmaps"),
    ("", "v1", "Secret", "secrets"),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "ControllerRevision", "controllerrevisions"),
    ("batch", "v1", "Job", "jobs"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
];

fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn dynamic_cache(client: kube::Client, ar: &ApiResource) -> Store<DynamicObject> {
    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let reader = writer.as_reader();
    let api: Api<DynamicObject> = Api::all_with(client, ar);
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    reader
}

struct Node {
    kind_index: usize,
    obj: Arc<DynamicObject>,
}

/// Runs the collector until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let resources: Vec<ApiResource> = KINDS
        .iter()
        .map(|(g, v, k, p)| api_resource(g, v, k, p))
        .collect();
    let caches: Vec<Store<DynamicObject>> = resources
        .iter()
        .map(|ar| dynamic_cache(ctx.client.clone(), ar))
        .collect();
    for c in &caches {
        let _ = c.wait_until_ready().await;
    }
    let deleted = ctx.metrics.counter(
        "garbagecollector_deleted_total",
        "Dependents deleted because their owners were gone.",
    );
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = sweep(&ctx, &resources, &caches, &deleted).await {
            tracing::warn!("garbage collection: {e}");
        }
    }
}

async fn sweep(
    ctx: &Context,
    resources: &[ApiResource],
    caches: &[Store<DynamicObject>],
    deleted: &crate::component::metrics::Counter,
) -> Result<(), kube::Error> {
    let mut by_uid: HashMap<String, Node> = HashMap::new();
    for (i, c) in caches.iter().enumerate() {
        for obj in c.state() {
            if let Some(uid) = obj.uid() {
                by_uid.insert(uid, Node { kind_index: i, obj });
            }
        }
    }
    // Dependents of each owner uid.
    let mut dependents: HashMap<String, Vec<(&Node, bool)>> = HashMap::new();
    for node in by_uid.values() {
        for r in node.obj.owner_references() {
            dependents
                .entry(r.uid.clone())
                .or_default()
                .push((node, r.block_owner_deletion == Some(true)));
        }
    }
    for node in by_uid.values() {
        let obj = &node.obj;
        let ar = &resources[node.kind_index];
        let ns = obj.namespace();
        let api: Api<DynamicObject> = match &ns {
            Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, ar),
            None => Api::all_with(ctx.client.clone(), ar),
        };
        let finalizers = obj.finalizers();
        // An owner deleted in the foreground or with orphaning.
        if obj.metadata.deletion_timestamp.is_some() {
            let uid = obj.uid().unwrap_or_default();
            let deps = dependents.get(&uid).cloned().unwrap_or_default();
            if finalizers.iter().any(|f| f == "orphan") {
                for (dep, _) in &deps {
                    orphan(ctx, resources, dep, &uid).await?;
                }
                remove_finalizer(&api, obj, "orphan").await?;
                continue;
            }
            if finalizers.iter().any(|f| f == "foregroundDeletion") {
                let blocking: Vec<_> = deps.iter().filter(|(_, block)| *block).collect();
                if blocking.is_empty() {
                    remove_finalizer(&api, obj, "foregroundDeletion").await?;
                } else {
                    for (dep, _) in &deps {
                        if dep.obj.metadata.deletion_timestamp.is_none() {
                            delete(ctx, resources, dep, DeleteParams::foreground()).await?;
                        }
                    }
                }
                continue;
            }
        }
        // A dependent whose owners are all gone.
        let refs = obj.owner_references();
        if refs.is_empty() || obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut any_alive = false;
        let mut foreground_owner = false;
        for r in refs {
            match by_uid.get(&r.uid) {
                Some(owner) => {
                    any_alive = true;
                    foreground_owner |= owner.obj.metadata.deletion_timestamp.is_some()
                        && owner
                            .obj
                            .finalizers()
                            .iter()
                            .any(|f| f == "foregroundDeletion");
                }
                None => {
                    if owner_exists(ctx, resources, ns.as_deref(), r).await? {
                        any_alive = true;
                    }
                }
            }
        }
        if !any_alive {
            deleted.inc();
            tracing::info!(
                "deleting {} {}/{}: its owners are gone",
                ar.kind,
                ns.as_deref().unwrap_or(""),
                obj.name_any()
            );
            delete(ctx, resources, node, DeleteParams::background()).await?;
        } else if foreground_owner {
            // Handled from the owner's side above.
        }
    }
    Ok(())
}

/// A live check, so a dependent is never deleted because the cache has not
/// yet seen its brand-new owner.
async fn owner_exists(
    ctx: &Context,
    resources: &[ApiResource],
    ns: Option<&str>,
    r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<bool, kube::Error> {
    let group = r.api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    let Some(ar) = resources
        .iter()
        .find(|a| a.kind == r.kind && a.group == group)
    else {
        // An owner of a kind not followed here is assumed alive.
        return Ok(true);
    };
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, ar),
        None => Api::all_with(ctx.client.clone(), ar),
    };
    Ok(api
        .get_opt(&r.name)
        .await?
        .is_some_and(|o| o.uid().as_deref() == Some(r.uid.as_str())))
}

async fn delete(
    ctx: &Context,
    resources: &[ApiResource],
    node: &Node,
    mut dp: DeleteParams,
) -> Result<(), kube::Error> {
    let ar = &resources[node.kind_index];
    let api: Api<DynamicObject> = match node.obj.namespace() {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), &ns, ar),
        None => Api::all_with(ctx.client.clone(), ar),
    };
    dp.preconditions = Some(Preconditions {
        uid: node.obj.uid(),
        resource_version: None,
    });
    match api.delete(&node.obj.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn orphan(
    ctx: &Context,
    resources: &[ApiResource],
    node: &Node,
    owner_uid: &str,
) -> Result<(), kube::Error> {
    let ar = &resources[node.kind_index];
    let api: Api<DynamicObject> = match node.obj.namespace() {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), &ns, ar),
        None => Api::all_with(ctx.client.clone(), ar),
    };
    let refs: Vec<_> = node
        .obj
        .owner_references()
        .iter()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": node.obj.uid()}});
    match api
        .patch(
            &node.obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn remove_finalizer(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let rest: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
