//! Volume binding, as kube-scheduler's VolumeBinding plugin: a pod whose
//! claims are missing or unbound (and not WaitForFirstConsumer) waits; a
//! bound claim's volume must be reachable from the node (its node
//! affinity); an unbound WaitForFirstConsumer claim learns the chosen
//! node through the `volume.kubernetes.io/selected-node` annotation before
//! the pod is bound, so the volume is provisioned where the pod runs.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::cache::NodeInfo;
use crate::controllers::context;
use crate::controllers::volume::{binder, SELECTED_NODE};

/// Caches of claims, volumes and classes.
pub struct Volumes {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
}

/// What one pod's claims ask of a node.
#[derive(Default)]
pub struct PodVolumes {
    bound: Vec<Arc<PersistentVolume>>,
    /// Unbound WaitForFirstConsumer claims, to be told the chosen node.
    pub delayed: Vec<String>,
}

impl Volumes {
    /// Starts the caches; `changed` is called whenever a claim or volume
    /// changes, as pods waiting on them may now fit.
    pub fn new(client: &kube::Client, changed: impl Fn() + Send + Sync + Clone + 'static) -> Self {
        let (claims, claim_events) =
            context::reflected(Api::<PersistentVolumeClaim>::all(client.clone()));
        let (volumes, volume_events) =
            context::reflected(Api::<PersistentVolume>::all(client.clone()));
        let c = changed.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(claim_events);
            while let Some(ev) = s.next().await {
                if ev.is_ok() {
                    c();
                }
            }
        });
        tokio::spawn(async move {
            let mut s = std::pin::pin!(volume_events);
            while let Some(ev) = s.next().await {
                if ev.is_ok() {
                    changed();
                }
            }
        });
        Self {
            claims,
            volumes,
            classes: context::cache(Api::<StorageClass>::all(client.clone())),
        }
    }

    /// Checks what does not depend on the node; the error is the reason
    /// every node is refused.
    pub fn prepare(&self, pod: &Pod) -> Result<PodVolumes, String> {
        let mut out = PodVolumes::default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let claims = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone());
        for name in claims {
            let Some(claim) = self.claims.get(&ObjectRef::new(&name).within(ns)) else {
                return Err(format!("persistentvolumeclaim {name:?} not found"));
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            let volume = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty());
            if let Some(volume) = volume {
                match self.volumes.get(&ObjectRef::new(volume)) {
                    Some(pv) => out.bound.push(pv),
                    None => return Err(format!("persistentvolume {volume:?} not found")),
                }
                continue;
            }
            let delayed = self
                .classes
                .get(&ObjectRef::new(binder::claim_class(&claim)))
                .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            if !delayed {
                return Err("pod has unbound immediate PersistentVolumeClaims".into());
            }
            out.delayed.push(name);
        }
        Ok(out)
    }
}

impl PodVolumes {
    /// Whether every bound volume can be reached from `node`.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Vec<String>> {
        if self
            .bound
            .iter()
            .all(|pv| binder::node_allows(pv, &node.name, &node.labels))
        {
            Ok(())
        } else {
            Err(vec!["node(s) had volume node affinity conflict".into()])
        }
    }

    /// Records the chosen node on each delayed claim, so its volume is
    /// made there; done before the pod is bound.
    pub async fn select_node(
        &self,
        client: &kube::Client,
        ns: &str,
        node: &str,
    ) -> Result<(), kube::Error> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        for name in &self.delayed {
            let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        Ok(())
    }
}
