//! Node selectors and required node affinity: may a pod go to a node with
//! these labels and this name? The scheduler filters with it and the
//! DaemonSet controller picks its nodes with it, so both agree.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// One requirement against a label's (or field's) value, if any.
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// One node selector term: all expressions and fields must hold. An empty
/// term matches no node, as in Kubernetes; `metadata.name` is the only field.
pub fn term_matches(t: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name = name.to_string();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&name)))
}

/// The pod's `nodeSelector` and required node affinity both admit the node.
pub fn pod_fits_node(spec: &PodSpec, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| &r.node_selector_terms);
    selector_ok && terms.is_none_or(|ts| ts.iter().any(|t| term_matches(t, labels, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn terms_match_labels_and_the_node_name() {
        let labels: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
        let by_label = NodeSelectorTerm {
            match_expressions: Some(vec![req("disk", "In", &["ssd", "nvme"])]),
            match_fields: None,
        };
        assert!(term_matches(&by_label, &labels, "n1"));
        let by_name = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &["n2"])]),
        };
        assert!(!term_matches(&by_name, &labels, "n1"));
        assert!(term_matches(&by_name, &labels, "n2"));
        assert!(!term_matches(&NodeSelectorTerm::default(), &labels, "n1"));
    }

    #[test]
    fn node_selector_and_affinity_must_both_hold() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let mut spec = PodSpec {
            node_selector: Some([("zone".to_string(), "a".to_string())].into()),
            ..Default::default()
        };
        assert!(pod_fits_node(&spec, &labels, "n"));
        spec.node_selector = Some([("zone".to_string(), "b".to_string())].into());
        assert!(!pod_fits_node(&spec, &labels, "n"));
        assert!(!requirement_matches(
            &req("n", "Gt", &["x"]),
            Some(&"3".into())
        ));
    }
}
