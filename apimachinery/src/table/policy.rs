//! NetworkPolicies, with the columns `kubectl get networkpolicy` prints.

use serde_json::Value;

use super::fields::{age, at, label_selector, name, or_none};
use super::{Column, Row, AGE, NAME};

/// NetworkPolicy table columns.
pub(super) const NETWORK_POLICY_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Pod-Selector",
        "string",
        "The pods the policy applies to, as a label selector; <none> selects every pod of the namespace.",
    ),
    AGE,
];

/// One network policy row.
pub(super) fn network_policy_row(obj: &Value, now: i64) -> Row {
    // Kubernetes prints an empty selector as <none> and an unusable one as <error>.
    let selector = match label_selector(at(obj, &["spec", "podSelector"])) {
        Ok(s) => or_none(&s),
        Err(()) => "<error>".to_string(),
    };
    Row::new(vec![name(obj), selector.into(), age(obj, now)])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_795_855_897;

    #[test]
    fn pod_selector_cell_follows_kubectl() {
        let row = |spec: Value| {
            network_policy_row(&json!({"metadata": {"name": "p"}, "spec": spec}), NOW).cells[1]
                .clone()
        };
        assert_eq!(row(json!({"podSelector": {}})), json!("<none>"));
        assert_eq!(
            row(json!({"podSelector": {"matchLabels": {"role": "db", "app": "x"}}})),
            json!("app=x,role=db")
        );
        assert_eq!(
            row(json!({"podSelector": {"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]}]}})),
            json!("tier in (a,b)")
        );
        assert_eq!(
            row(json!({"podSelector": {"matchExpressions": [{"key": "t", "operator": "Near"}]}})),
            json!("<error>")
        );
    }
}
