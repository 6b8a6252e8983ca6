//! A StatefulSet member's stable identity: its ordinal, its name, its
//! labels, its DNS host name under the governing Service, and the claims
//! its volumes bind to.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::ResourceExt;

use crate::controllers::context::controller_ref;
use crate::controllers::history::HASH_LABEL;

/// Pod label holding the pod's own name, so a Service can pick one member.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Pod label holding the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of a pod named `<set>-<ordinal>`, if `name` is one. Only
/// the canonical spelling counts (`web-01` is no member of `web`).
pub fn ordinal(set: &str, name: &str) -> Option<i32> {
    let rest = name.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The name of member `ordinal`.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

/// The name of the claim from template `template` for member `ordinal`.
pub fn claim_name(template: &str, set: &StatefulSet, ordinal: i32) -> String {
    format!("{template}-{}-{ordinal}", set.name_any())
}

fn claim_templates(set: &StatefulSet) -> &[PersistentVolumeClaim] {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or(&[])
}

/// Member `ordinal` made from `template` at revision `revision`: named and
/// labelled for its ordinal, with its host name and the governing
/// Service as subdomain (so `<pod>.<service>.<ns>.svc` resolves), and each
/// claim template's volume pointing at its own claim.
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let name = pod_name(set, ordinal);
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(HASH_LABEL.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for t in claim_templates(set) {
        let vname = t.name_any();
        // A claim template replaces a template volume of the same name.
        volumes.retain(|v| v.name != vname);
        volumes.push(Volume {
            name: vname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&vname, set, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    if volumes.is_empty() {
        spec.volumes = None;
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![controller_ref(set)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The claims member `ordinal` needs, as they are created: the template's
/// spec with the set's selector labels, owned as the retention policy
/// says (see `claim_owners`).
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let selector_labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    claim_templates(set)
        .iter()
        .map(|t| {
            let tname = t.name_any();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            let owners = claim_owners(set, false, None);
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&tname, set, ordinal)),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: (!owners.is_empty()).then_some(owners),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The owner references a member's claim should carry under
/// `persistentVolumeClaimRetentionPolicy`: the member pod alone when it is
/// beyond `replicas` and claims go on scale down (`whenScaled: Delete`),
/// else the set when claims go with the set (`whenDeleted: Delete`). The
/// garbage collector removes an object only once every owner is gone, so
/// a condemned member's claim must not keep the set as an owner too. With
/// the default `Retain` for both, none: claims outlive pods and the set.
pub fn claim_owners(set: &StatefulSet, condemned: bool, pod: Option<&Pod>) -> Vec<OwnerReference> {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.clone())
        .unwrap_or_default();
    if condemned && policy.when_scaled.as_deref() == Some("Delete") {
        if let Some(pod) = pod {
            let mut r = controller_ref(pod);
            r.controller = None;
            return vec![r];
        }
    }
    if policy.when_deleted.as_deref() == Some("Delete") {
        let mut r = controller_ref(set);
        r.controller = None;
        return vec![r];
    }
    Vec::new()
}

/// Does a claim carry exactly the owners the policy asks for among the
/// set and its members? References to anything else are left alone.
pub fn owners_match(
    claim: &PersistentVolumeClaim,
    wanted: &[OwnerReference],
    ours: &[String],
) -> bool {
    let mut have: Vec<&str> = claim
        .owner_references()
        .iter()
        .filter(|r| ours.contains(&r.uid))
        .map(|r| r.uid.as_str())
        .collect();
    let mut want: Vec<&str> = wanted.iter().map(|r| r.uid.as_str()).collect();
    have.sort();
    want.sort();
    have == want
}
