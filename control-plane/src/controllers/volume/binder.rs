//! Which PersistentVolume a claim may bind to: the same class and volume
//! mode, every access mode the claim asks for, at least the requested
//! size, the claim's label selector, and (once a node is chosen) node
//! affinity that admits that node. Pure functions, so they are tested
//! without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim,
};

/// The class a claim or volume names; "" is "no class".
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn volume_class(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// Bytes of a `storage` quantity, 0 when absent or unparsable.
pub fn storage_bytes(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> i64 {
    map.and_then(|m| m.get("storage"))
        .and_then(|q| apimachinery::quantity::value(&q.0).ok())
        .unwrap_or(0)
}

/// The bytes a claim requests.
pub fn requested(claim: &PersistentVolumeClaim) -> i64 {
    storage_bytes(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

fn capacity(pv: &PersistentVolume) -> i64 {
    storage_bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let has = |v: &str| values.iter().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(has),
        "NotIn" => value.is_none_or(|v| !has(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

fn term_matches(t: &NodeSelectorTerm, node: &str, labels: &BTreeMap<String, String>) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node)))
}

/// Whether a volume's required node affinity admits the node; a volume
/// without one is reachable from every node.
pub fn node_allows(pv: &PersistentVolume, node: &str, labels: &BTreeMap<String, String>) -> bool {
    let terms = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.as_slice());
    terms.is_none_or(|terms| terms.iter().any(|t| term_matches(t, node, labels)))
}

/// Whether `pv` can serve `claim`, ignoring who else might want it.
pub fn fits(
    claim: &PersistentVolumeClaim,
    pv: &PersistentVolume,
    node: Option<(&str, &BTreeMap<String, String>)>,
) -> bool {
    let (Some(cs), Some(ps)) = (claim.spec.as_ref(), pv.spec.as_ref()) else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Released" | "Failed")) {
        return false;
    }
    if let Some(r) = &ps.claim_ref {
        let same = r.namespace == claim.metadata.namespace && r.name == claim.metadata.name;
        let uid_ok = r
            .uid
            .as_deref()
            .is_none_or(|u| Some(u) == claim.metadata.uid.as_deref());
        if !same || !uid_ok {
            return false;
        }
    }
    if claim_class(claim) != volume_class(pv) {
        return false;
    }
    let mode = |m: Option<&String>| m.map(String::as_str).unwrap_or("Filesystem").to_string();
    if mode(cs.volume_mode.as_ref()) != mode(ps.volume_mode.as_ref()) {
        return false;
    }
    let offered = ps.access_modes.as_deref().unwrap_or_default();
    if !cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| offered.contains(m))
    {
        return false;
    }
    if capacity(pv) < requested(claim) {
        return false;
    }
    if let Some(sel) = &cs.selector {
        let labels = pv.metadata.labels.clone().unwrap_or_default();
        let Ok(sel_json) = serde_json::to_value(sel) else {
            return false;
        };
        let matched = apimachinery::selectors::LabelSelector::from_json(&sel_json)
            .is_ok_and(|s| s.matches_labels(&labels));
        if !matched {
            return false;
        }
    }
    node.is_none_or(|(n, l)| node_allows(pv, n, l))
}

/// The volume `claim` should bind to: one already reserved for it if any,
/// else the smallest that fits.
pub fn best<'a>(
    claim: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node: Option<(&str, &BTreeMap<String, String>)>,
) -> Option<&'a PersistentVolume> {
    let fitting: Vec<&PersistentVolume> = volumes
        .into_iter()
        .filter(|pv| fits(claim, pv, node))
        .collect();
    let reserved = fitting.iter().find(|pv| {
        pv.spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some()
    });
    reserved
        .copied()
        .or_else(|| fitting.iter().copied().min_by_key(|pv| capacity(pv)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(v: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(v).expect("claim")
    }

    fn pv(v: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(v).expect("volume")
    }

    fn data_claim() -> PersistentVolumeClaim {
        claim(
            json!({"metadata": {"name": "data", "namespace": "default", "uid": "c1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                     "resources": {"requests": {"storage": "1Gi"}}}}),
        )
    }

    fn volume(name: &str, size: &str, modes: serde_json::Value) -> PersistentVolume {
        pv(json!({"metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": modes,
                     "storageClassName": "manual", "hostPath": {"path": "/tmp/x"}}}))
    }

    #[test]
    fn the_smallest_volume_that_fits_wins() {
        let c = data_claim();
        let small = volume("small", "512Mi", json!(["ReadWriteOnce"]));
        let big = volume("big", "10Gi", json!(["ReadWriteOnce", "ReadWriteMany"]));
        let right = volume("right", "2Gi", json!(["ReadWriteOnce"]));
        let ro = volume("ro", "1Gi", json!(["ReadOnlyMany"]));
        let all = [small, big, right, ro];
        assert_eq!(
            best(&c, &all, None).and_then(|p| p.metadata.name.as_deref()),
            Some("right")
        );
        let mut other_class = volume("other", "1Gi", json!(["ReadWriteOnce"]));
        if let Some(s) = other_class.spec.as_mut() {
            s.storage_class_name = Some("fast".into());
        }
        assert!(!fits(&c, &other_class, None));
    }

    #[test]
    fn a_volume_reserved_for_another_claim_is_not_taken() {
        let c = data_claim();
        let mut taken = volume("taken", "1Gi", json!(["ReadWriteOnce"]));
        if let Some(s) = taken.spec.as_mut() {
            s.claim_ref = serde_json::from_value(
                json!({"namespace": "default", "name": "other", "uid": "c2"}),
            )
            .ok();
        }
        assert!(!fits(&c, &taken, None));
        let mut mine = volume("mine", "5Gi", json!(["ReadWriteOnce"]));
        if let Some(s) = mine.spec.as_mut() {
            s.claim_ref =
                serde_json::from_value(json!({"namespace": "default", "name": "data"})).ok();
        }
        let free = volume("free", "1Gi", json!(["ReadWriteOnce"]));
        let all = [free, mine];
        assert_eq!(
            best(&c, &all, None).and_then(|p| p.metadata.name.as_deref()),
            Some("mine")
        );
    }

    #[test]
    fn node_affinity_limits_where_a_local_volume_is_reachable() {
        let local = pv(json!({"metadata": {"name": "l"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "manual", "local": {"path": "/mnt"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}));
        let n1: BTreeMap<String, String> =
            [("kubernetes.io/hostname".to_string(), "n1".to_string())].into();
        let n2: BTreeMap<String, String> =
            [("kubernetes.io/hostname".to_string(), "n2".to_string())].into();
        assert!(node_allows(&local, "n1", &n1));
        assert!(!node_allows(&local, "n2", &n2));
        assert!(fits(&data_claim(), &local, Some(("n1", &n1))));
        assert!(!fits(&data_claim(), &local, Some(("n2", &n2))));
    }
}
