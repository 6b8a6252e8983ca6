//! Persistent volumes: binds claims to volumes that fit them, provisions
//! `local-path` volumes on the node the scheduler picked, and keeps the
//! phases of both (Pending, Available, Bound, Released, Lost), and keeps
//! claims that pods still use from going (`protection`). Two small
//! reconcilers share one context: one per claim, one per volume.

pub mod binder;
mod claims;
pub mod localpath;
pub mod protection;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::context::{self, Context, Error};

/// Annotation the scheduler puts on a WaitForFirstConsumer claim: the
/// node its first pod goes to, where the volume has to be.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The built-in provisioner of node-local directories.
pub const PROVISIONER: &str = "kestrel.io/local-path";
/// The StorageClass the controller-manager creates for it.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// Node annotation with the directory its agent keeps local-path volumes in.
pub const LOCAL_PATH_DIR: &str = "kestrel.io/local-path-dir";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Settings of the volume controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Create the default `local-path` StorageClass when missing.
    pub default_class: bool,
    /// Image of the pod that removes a deleted local-path volume's directory.
    pub helper_image: String,
}

/// The shared context plus the caches both reconcilers read.
pub struct Ctx {
    shared: Arc<Context>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    settings: Settings,
}

impl std::ops::Deref for Ctx {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

impl Ctx {
    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.get(&ObjectRef::new(name))
    }

    /// The StorageClass marked default, newest first as upstream picks.
    fn default_class(&self) -> Option<Arc<StorageClass>> {
        self.classes
            .state()
            .into_iter()
            .filter(|c| {
                c.annotations()
                    .get(apimachinery::table::DEFAULT_CLASS_ANNOTATION)
                    .is_some_and(|v| v == "true")
            })
            .max_by_key(|c| c.metadata.creation_timestamp.as_ref().map(|t| t.0))
    }
}

/// The `local-path` class every cluster starts with, as k3s ships one.
fn local_path_class() -> StorageClass {
    let v = serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": LOCAL_PATH_CLASS,
                     "annotations": {apimachinery::table::DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    serde_json::from_value(v).unwrap_or_default()
}

/// Runs both reconcilers until the process ends.
pub async fn run(shared: Arc<Context>, settings: Settings, concurrency: u16) {
    let client = shared.client.clone();
    if settings.default_class {
        let api: Api<StorageClass> = Api::all(client.clone());
        match api
            .create(&PostParams::default(), &local_path_class())
            .await
        {
            Ok(_) => tracing::info!("created StorageClass {LOCAL_PATH_CLASS}"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => tracing::warn!("creating StorageClass {LOCAL_PATH_CLASS}: {e}"),
        }
    }
    let (volumes, volume_events) = context::reflected(Api::<PersistentVolume>::all(client.clone()));
    let (claims, claim_events) =
        context::reflected(Api::<PersistentVolumeClaim>::all(client.clone()));
    let ctx = Arc::new(Ctx {
        shared,
        claims,
        volumes,
        classes: context::cache(Api::<StorageClass>::all(client.clone())),
        nodes: context::cache(Api::<Node>::all(client.clone())),
        settings,
    });
    for (what, ready) in [
        (
            "storage classes",
            ctx.classes.wait_until_ready().await.is_ok(),
        ),
        ("nodes", ctx.nodes.wait_until_ready().await.is_ok()),
    ] {
        if !ready {
            tracing::warn!("volume controller: the {what} cache never filled");
        }
    }

    // Claims are triggered by their own changes and by their volume's.
    let claim_ctl = Controller::for_stream(claim_events, ctx.claims.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .watches_stream(
            touched::<PersistentVolume>(client.clone()),
            |pv: PersistentVolume| {
                let r = pv.spec.and_then(|s| s.claim_ref)?;
                Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))
            },
        )
        .run(
            |o, c| context::bounded(claims::reconcile(o, c)),
            |claim: Arc<PersistentVolumeClaim>, e: &Error, _| {
                tracing::warn!(
                    "syncing PersistentVolumeClaim {}/{}: {e}",
                    claim.namespace().unwrap_or_default(),
                    claim.name_any()
                );
                Action::requeue(Duration::from_secs(3))
            },
            ctx.clone(),
        )
        .for_each(|_| async {});
    // Volumes are triggered by their own changes and by their claim's.
    let volume_ctl = Controller::for_stream(volume_events, ctx.volumes.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .watches_stream(
            touched::<PersistentVolumeClaim>(client),
            |pvc: PersistentVolumeClaim| {
                let name = pvc
                    .spec
                    .and_then(|s| s.volume_name)
                    .filter(|n| !n.is_empty());
                name.map(|n| ObjectRef::new(&n))
            },
        )
        .run(
            |o, c| context::bounded(volumes::reconcile(o, c)),
            |pv: Arc<PersistentVolume>, e: &Error, _| {
                tracing::warn!("syncing PersistentVolume {}: {e}", pv.name_any());
                Action::requeue(Duration::from_secs(3))
            },
            ctx,
        )
        .for_each(|_| async {});
    futures::join!(claim_ctl, volume_ctl);
}

/// A second watch of `K`, only to trigger the other reconciler: the first
/// feeds `K`'s cache. A trigger that outruns that cache is harmless, as
/// every reconcile that waits on the other kind asks to run again.
fn touched<K>(
    client: kube::Client,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .touched_objects()
}
