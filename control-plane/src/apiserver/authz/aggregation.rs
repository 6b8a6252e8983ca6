//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` holds
//! the rules of every ClusterRole its `clusterRoleSelectors` pick, and
//! follows them as they change. This is how `admin`, `edit` and `view`
//! grow when an operator's installer adds a ClusterRole labelled
//! `rbac.authorization.k8s.io/aggregate-to-view: "true"`.
//!
//! The API server keeps the rules written rather than the
//! controller-manager: writing them needs `escalate` on every ClusterRole,
//! which would make the controller-manager's credential as strong as
//! cluster-admin.

use std::collections::BTreeMap;
use std::time::Duration;

use apimachinery::selectors::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;

use super::super::handlers;
use super::super::request::{Query, Target};
use super::super::resources;
use super::super::State;

const PREFIX: &str = "/registry/clusterroles/";

/// The rules `role` should hold when it aggregates: for each selector in
/// order, the rules of the ClusterRoles it picks (by name, never `role`
/// itself), each rule once. `None` when `role` has no aggregation rule.
pub fn aggregated_rules(role: &Value, all: &BTreeMap<String, Value>) -> Option<Vec<Value>> {
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?;
    let own = role.pointer("/metadata/name").and_then(Value::as_str);
    let mut rules: Vec<Value> = Vec::new();
    for selector in selectors {
        // A selector that does not parse picks nothing, rather than
        // everything.
        let Some(selector) = serde_json::from_value::<metav1::LabelSelector>(selector.clone())
            .ok()
            .and_then(|s| LabelSelector::from_typed(&s).ok())
        else {
            continue;
        };
        for (name, other) in all {
            if Some(name.as_str()) == own {
                continue;
            }
            let labels = other.pointer("/metadata/labels").and_then(Value::as_object);
            if !selector.matches(labels) {
                continue;
            }
            for rule in other
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
    }
    Some(rules)
}

/// Keeps every aggregating ClusterRole's rules written, for as long as the
/// server runs: after each change to any ClusterRole (the RBAC cache
/// signals them), and once at start.
pub async fn run(state: State) {
    loop {
        state.rbac.cluster_roles_changed().await;
        if let Err(e) = reconcile(&state).await {
            tracing::warn!("aggregating ClusterRoles: {e}; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            state.rbac.mark_cluster_roles_changed();
        }
    }
}

async fn reconcile(state: &State) -> anyhow::Result<()> {
    let page = state.storage.list(PREFIX, None, None, None).await?;
    let all: BTreeMap<String, Value> = page
        .items
        .into_iter()
        .filter_map(|(key, stored)| {
            let mut obj = stored.value;
            // The resourceVersion an update is conditional on.
            obj["metadata"]["resourceVersion"] = stored.rev.to_string().into();
            Some((key.strip_prefix(PREFIX)?.to_string(), obj))
        })
        .collect();
    let res = resources::find("rbac.authorization.k8s.io", "v1", "clusterroles")
        .ok_or_else(|| anyhow::anyhow!("clusterroles are not served"))?;
    for (name, role) in &all {
        let Some(rules) = aggregated_rules(role, &all) else {
            continue;
        };
        let current = role.get("rules").and_then(Value::as_array);
        if current.is_some_and(|c| *c == rules) || (current.is_none() && rules.is_empty()) {
            continue;
        }
        let mut updated = role.clone();
        updated["rules"] = Value::Array(rules);
        let t = Target {
            res,
            namespace: None,
            name: Some(name.clone()),
            sub: None,
        };
        // A conflict means the role changed meanwhile; that change wakes
        // this loop again.
        if let Err(e) = handlers::update(state, &t, &Query::default(), updated).await {
            tracing::debug!(role = %name, "aggregated rules not written: {e:?}");
        } else {
            tracing::info!(role = %name, "aggregated rules written");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(name: &str, labels: Value, rules: Value) -> (String, Value) {
        (
            name.to_string(),
            json!({"metadata": {"name": name, "labels": labels}, "rules": rules}),
        )
    }

    #[test]
    fn an_aggregating_role_holds_each_picked_rule_once_in_name_order() {
        let read = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]});
        let write = json!({"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]});
        let crd = json!({"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["widgets"]});
        let mut all: BTreeMap<String, Value> = [
            role(
                "b-view",
                json!({"agg": "view"}),
                json!([read.clone(), crd.clone()]),
            ),
            role("a-view", json!({"agg": "view"}), json!([read.clone()])),
            role("writer", json!({"agg": "edit"}), json!([write.clone()])),
            role("other", json!({}), json!([write.clone()])),
        ]
        .into_iter()
        .collect();
        let view = json!({
            "metadata": {"name": "view", "labels": {"agg": "view"}},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]},
            "rules": [write.clone()],
        });
        all.insert("view".into(), view.clone());
        assert_eq!(
            aggregated_rules(&view, &all),
            Some(vec![read.clone(), crd.clone()])
        );
        let edit = json!({
            "metadata": {"name": "edit"},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"agg": "edit"}},
                {"matchExpressions": [{"key": "agg", "operator": "In", "values": ["view"]}]},
            ]},
        });
        assert_eq!(aggregated_rules(&edit, &all), Some(vec![write, read, crd]));
    }

    #[test]
    fn roles_without_a_rule_or_with_a_bad_selector_aggregate_nothing() {
        let all = BTreeMap::new();
        assert_eq!(aggregated_rules(&json!({"rules": []}), &all), None);
        let bad = json!({"aggregationRule": {"clusterRoleSelectors": [
            {"matchExpressions": [{"key": "a", "operator": "Sideways"}]}]}});
        assert_eq!(aggregated_rules(&bad, &all), Some(vec![]));
    }
}
