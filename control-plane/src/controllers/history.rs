//! Revision history shared by DaemonSets and StatefulSets: one apps/v1
//! ControllerRevision per pod template the owner has had, numbered in the
//! order they became current, so `kubectl rollout history` lists them and
//! `kubectl rollout undo` patches one back in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use apimachinery::selectors::selector_matches;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::context::{controller_of, controller_ref, Error, Result};

/// Pod and revision label naming the template revision a pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// An owner of revisions: a workload with one pod template.
pub trait Versioned:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    /// The pod template now in the spec.
    fn pod_template(&self) -> PodTemplateSpec;
    /// The selector its revisions (and pods) match.
    fn selector(&self) -> Option<&LabelSelector>;
    /// `status.collisionCount`.
    fn collisions(&self) -> i32;
}

impl Versioned for DaemonSet {
    fn pod_template(&self) -> PodTemplateSpec {
        self.spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.as_ref().map(|s| &s.selector)
    }
    fn collisions(&self) -> i32 {
        self.status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0)
    }
}

impl Versioned for StatefulSet {
    fn pod_template(&self) -> PodTemplateSpec {
        self.spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.as_ref().map(|s| &s.selector)
    }
    fn collisions(&self) -> i32 {
        self.status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0)
    }
}

/// A short, stable hash of the template (and the collision count, when
/// two templates once hashed alike), spelled like Kubernetes' hashes.
pub fn hash(template: &PodTemplateSpec, collisions: i32) -> String {
    super::context::template_hash(template, collisions)
}

/// A revision's data: the strategic merge patch that puts its template
/// back, which is exactly what `kubectl rollout undo` sends.
pub fn data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or(json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision holds, if its data is one.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// The owner's template.
pub fn template<K: Versioned>(owner: &K) -> PodTemplateSpec {
    owner.pod_template()
}

/// What the history needs for the current template.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// The revision holding the current template, if one exists.
    pub current: Option<String>,
    /// Give the current revision this number (it became current again).
    pub renumber: Option<i64>,
    /// Other revisions holding the same template.
    pub duplicates: Vec<String>,
    /// Make this revision (none holds the template yet).
    pub create: Option<ControllerRevision>,
}

/// Finds (or makes) the revision of the current template among the
/// owner's own, numbering it after every other.
pub fn step<K: Versioned>(owner: &K, owned: &[Arc<ControllerRevision>], collisions: i32) -> Step {
    let current = owner.pod_template();
    let max = owned.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut same: Vec<&Arc<ControllerRevision>> = owned
        .iter()
        .filter(|r| template_of(r).as_ref() == Some(&current))
        .collect();
    // The highest-numbered one is kept, so a renumbering never goes back.
    same.sort_by_key(|r| std::cmp::Reverse(r.revision));
    let Some((keep, rest)) = same.split_first() else {
        let h = hash(&current, collisions);
        let mut labels: BTreeMap<String, String> = current
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), h.clone());
        return Step {
            create: Some(ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{h}", owner.name_any())),
                    namespace: owner.namespace(),
                    labels: Some(labels),
                    owner_references: Some(vec![controller_ref(owner)]),
                    ..Default::default()
                },
                data: Some(RawExtension(data(&current))),
                revision: max + 1,
            }),
            ..Step::default()
        };
    };
    let others_max = owned
        .iter()
        .filter(|r| template_of(r).as_ref() != Some(&current))
        .map(|r| r.revision)
        .max()
        .unwrap_or(0);
    Step {
        current: Some(keep.name_any()),
        renumber: (keep.revision <= others_max).then_some(max + 1),
        duplicates: rest.iter().map(|r| r.name_any()).collect(),
        create: None,
    }
}

/// The hash a revision's pods carry.
pub fn hash_of(rev: &ControllerRevision) -> String {
    rev.labels().get(HASH_LABEL).cloned().unwrap_or_default()
}

/// Old revisions beyond `revisionHistoryLimit`, oldest first, never the
/// current one nor one a live pod still runs (`in_use` holds hashes).
pub fn stale(
    owned: &[Arc<ControllerRevision>],
    current: &str,
    in_use: &BTreeSet<String>,
    limit: i32,
) -> Vec<String> {
    let mut old: Vec<&Arc<ControllerRevision>> = owned
        .iter()
        .filter(|r| r.name_any() != current && !in_use.contains(&hash_of(r)))
        .collect();
    let excess = old.len().saturating_sub(limit.max(0) as usize);
    old.sort_by_key(|r| r.revision);
    old.into_iter().take(excess).map(|r| r.name_any()).collect()
}

fn ignore_404<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The revision of the owner's current template, made or renumbered as
/// needed.
pub struct Synced {
    /// The hash its pods carry.
    pub hash: String,
    /// Its name.
    pub name: String,
    /// Every revision the owner has, this one included.
    pub owned: Vec<Arc<ControllerRevision>>,
}

/// Makes sure the current template has a revision numbered above every
/// other, adopting orphaned revisions the owner selects.
pub async fn sync<K: Versioned>(
    client: &kube::Client,
    revisions: &Store<ControllerRevision>,
    owner: &K,
) -> Result<Synced> {
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.uid().unwrap_or_default();
    let selector = owner.selector();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let mut owned: Vec<Arc<ControllerRevision>> = Vec::new();
    for rev in revisions.state() {
        if rev.namespace().as_deref() != Some(ns.as_str())
            || rev.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        match controller_of(rev.metadata.owner_references.as_ref()) {
            Some(r) if r.uid == uid => owned.push(rev),
            None if selector_matches(selector, rev.labels()) => {
                let mut refs = rev.owner_references().to_vec();
                refs.push(controller_ref(owner));
                let patch = json!({"metadata": {"ownerReferences": refs,
                    "uid": rev.metadata.uid, "resourceVersion": rev.metadata.resource_version}});
                if api
                    .patch(
                        &rev.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .is_ok()
                {
                    owned.push(rev);
                }
            }
            _ => {}
        }
    }
    let collisions = owner.collisions();
    let step = step(owner, &owned, collisions);
    for dup in &step.duplicates {
        ignore_404(api.delete(dup, &DeleteParams::default()).await)?;
    }
    owned.retain(|r| !step.duplicates.contains(&r.name_any()));
    if let Some(rev) = step.create {
        let created = match api.create(&PostParams::default(), &rev).await {
            Ok(r) => r,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // The name is taken: ours with this template (a cache that
                // has not caught up), or a hash collision.
                let existing = api.get(&rev.name_any()).await?;
                let ours = controller_of(existing.metadata.owner_references.as_ref())
                    .is_some_and(|r| r.uid == uid);
                if !(ours && template_of(&existing) == Some(owner.pod_template())) {
                    let owners: Api<K> = Api::namespaced(client.clone(), &ns);
                    let patch = json!({"status": {"collisionCount": collisions + 1}});
                    owners
                        .patch_status(
                            &owner.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(patch),
                        )
                        .await?;
                    return Err(Error::Other(format!(
                        "revision {} already exists with another template",
                        rev.name_any()
                    )));
                }
                existing
            }
            Err(e) => return Err(e.into()),
        };
        let (hash, name) = (hash_of(&created), created.name_any());
        owned.push(Arc::new(created));
        return Ok(Synced { hash, name, owned });
    }
    let name = step.current.unwrap_or_default();
    if let Some(number) = step.renumber {
        let patch = json!({"revision": number});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let hash = owned
        .iter()
        .find(|r| r.name_any() == name)
        .map(|r| hash_of(r))
        .unwrap_or_default();
    Ok(Synced { hash, name, owned })
}
