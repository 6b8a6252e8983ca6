//! Revision history: one apps/v1 ControllerRevision per pod template the
//! DaemonSet has had, numbered in the order they became current, so
//! `kubectl rollout history` lists them and `kubectl rollout undo`
//! patches one back in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::ObjectMeta;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::nodes::HASH_LABEL;
use crate::controllers::context::controller_ref;

/// A short, stable hash of the template (and the collision count, when
/// two templates once hashed alike), spelled like Kubernetes' hashes.
pub fn hash(template: &PodTemplateSpec, collisions: i32) -> String {
    crate::controllers::context::template_hash(template, collisions)
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

/// The DaemonSet's template.
pub fn template(ds: &DaemonSet) -> PodTemplateSpec {
    ds.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
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
/// DaemonSet's own, numbering it after every other.
pub fn step(ds: &DaemonSet, owned: &[Arc<ControllerRevision>], collisions: i32) -> Step {
    let current = template(ds);
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
                    name: Some(format!("{}-{h}", ds.name_any())),
                    namespace: ds.namespace(),
                    labels: Some(labels),
                    owner_references: Some(vec![controller_ref(ds)]),
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
/// current one nor one a live pod still runs.
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
