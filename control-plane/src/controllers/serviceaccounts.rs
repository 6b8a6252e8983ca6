//! What every namespace holds for its pods to reach the API server: the
//! ServiceAccount `default` (pods that name none run as it) and the
//! ConfigMap `kube-root-ca.crt` with the cluster CA, which the token
//! volume projects as `ca.crt`. Both come back when deleted; the CA is
//! put back when edited.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::context::{Context, Error, Result};

/// The ServiceAccount every namespace gets.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The ConfigMap with the cluster CA, and its key.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const ROOT_CA_KEY: &str = "ca.crt";

struct Settings {
    ctx: Arc<Context>,
    /// PEM of the cluster CA; None when the cluster has none (plain HTTP),
    /// and then nothing is published.
    root_ca: Option<String>,
}

/// Runs until the process ends. `root_ca` is the PEM published to every
/// namespace, when the cluster has a CA.
pub async fn run(ctx: Arc<Context>, root_ca: Option<String>) {
    let client = ctx.client.clone();
    let to_namespace = |ns: Option<String>| ns.map(|ns| ObjectRef::<Namespace>::new(&ns));
    let mut controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
        move |sa: ServiceAccount| {
            to_namespace(sa.namespace().filter(|_| sa.name_any() == DEFAULT_ACCOUNT))
        },
    );
    if root_ca.is_some() {
        controller = controller.watches(
            Api::<ConfigMap>::all(client),
            watcher::Config::default(),
            move |cm: ConfigMap| {
                to_namespace(
                    cm.namespace()
                        .filter(|_| cm.name_any() == ROOT_CA_CONFIGMAP),
                )
            },
        );
    }
    controller
        .run(
            reconcile,
            |ns: Arc<Namespace>, e: &Error, _| {
                tracing::warn!("service account of namespace {}: {e}", ns.name_any());
                Action::requeue(Duration::from_secs(2))
            },
            Arc::new(Settings { ctx, root_ca }),
        )
        .for_each(|_| async {})
        .await;
}

/// Creates `obj` unless it exists; a namespace being deleted refuses new
/// objects, which is no error here.
async fn create_missing<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(ns: Arc<Namespace>, s: Arc<Settings>) -> Result<Action> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let client = s.ctx.client.clone();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    if accounts.get_opt(DEFAULT_ACCOUNT).await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT_ACCOUNT.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        create_missing(&accounts, &sa).await?;
    }
    let Some(ca) = &s.root_ca else {
        return Ok(Action::await_change());
    };
    let maps: Api<ConfigMap> = Api::namespaced(client, &name);
    match maps.get_opt(ROOT_CA_CONFIGMAP).await? {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.into()),
                    ..Default::default()
                },
                data: Some([(ROOT_CA_KEY.to_string(), ca.clone())].into()),
                ..Default::default()
            };
            create_missing(&maps, &cm).await?;
        }
        Some(cm) => {
            let current = cm.data.as_ref().and_then(|d| d.get(ROOT_CA_KEY));
            if current != Some(ca) {
                let patch = json!({"data": {ROOT_CA_KEY: ca}});
                maps.patch(
                    ROOT_CA_CONFIGMAP,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            }
        }
    }
    Ok(Action::await_change())
}
