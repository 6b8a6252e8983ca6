//! The roles and bindings every cluster starts with, named as in
//! Kubernetes so manifests and `kubectl create rolebinding --clusterrole=view`
//! work unchanged. Each is created when missing. One that exists keeps what
//! an administrator added; while it carries the annotation
//! `rbac.authorization.kubernetes.io/autoupdate: "true"` it also gains the
//! rules and aggregation selectors a newer release adds (as Kubernetes
//! reconciles its bootstrap policy).
//!
//! `admin`, `edit` and `view` aggregate: they hold the rules of every
//! ClusterRole labelled `rbac.authorization.k8s.io/aggregate-to-<name>`,
//! starting with `system:aggregate-to-<name>`; `view` is itself part of
//! `edit`, and `edit` of `admin`.

use serde_json::{json, Value};

use super::super::storage::Storage;
use super::components;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": [group], "resources": resources})
}

fn urls(verbs: &[&str], paths: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": paths})
}

/// What `view` may read: workloads and their configuration, but neither
/// Secrets nor RBAC objects.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            "",
            &[
                "pods",
                "pods/log",
                "pods/status",
                "services",
                "services/status",
                "endpoints",
                "configmaps",
                "events",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "persistentvolumeclaims",
                "namespaces",
                "namespaces/status",
            ],
        ),
        rule(
            READ,
            "apps",
            &[
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "daemonsets",
                "controllerrevisions",
            ],
        ),
        rule(
            READ,
            "batch",
            &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
        ),
        rule(
            READ,
            "autoscaling",
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(READ, "discovery.k8s.io", &["endpointslices"]),
        rule(READ, "events.k8s.io", &["events"]),
    ]
}

/// What `edit` adds: changing workloads and reading and writing Secrets.
fn edit_rules() -> Vec<Value> {
    vec![
        rule(READ, "", &["secrets"]),
        rule(
            WRITE,
            "",
            &[
                "pods",
                "pods/exec",
                "pods/attach",
                "pods/ephemeralcontainers",
                "pods/portforward",
                "pods/binding",
                "services",
                "endpoints",
                "configmaps",
                "secrets",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "persistentvolumeclaims",
            ],
        ),
        rule(
            &["get", "create"],
            "",
            &["pods/exec", "pods/attach", "pods/portforward"],
        ),
        rule(
            WRITE,
            "apps",
            &[
                "deployments",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "daemonsets",
            ],
        ),
        rule(WRITE, "batch", &["jobs", "cronjobs"]),
        rule(WRITE, "autoscaling", &["horizontalpodautoscalers"]),
        rule(WRITE, "discovery.k8s.io", &["endpointslices"]),
    ]
}

/// What `admin` adds: the namespace's own Roles and RoleBindings.
fn admin_rules() -> Vec<Value> {
    let all: Vec<&str> = READ.iter().chain(WRITE).copied().collect();
    vec![
        rule(
            &all,
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
        ),
        rule(
            &["create"],
            "authorization.k8s.io",
            &["localsubjectaccessreviews"],
        ),
    ]
}

fn cluster_role(name: &str, rules: Vec<Value>) -> (String, Value) {
    (
        format!("/registry/clusterroles/{name}"),
        json!({
            "kind": "ClusterRole",
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": name},
            "rules": rules,
        }),
    )
}

const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// `name` (`admin`, `edit` or `view`) as an aggregating ClusterRole, part
/// of `part_of` when given, and `system:aggregate-to-<name>` with `rules`.
fn aggregated(name: &str, part_of: Option<&str>, rules: Vec<Value>) -> [(String, Value); 2] {
    let (key, mut role) = cluster_role(name, Vec::new());
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("{AGGREGATE_TO}{name}"): "true"}}
    ]});
    if let Some(parent) = part_of {
        role["metadata"]["labels"] = json!({format!("{AGGREGATE_TO}{parent}"): "true"});
    }
    let (part_key, mut part) = cluster_role(&format!("system:aggregate-to-{name}"), rules);
    part["metadata"]["labels"] = json!({format!("{AGGREGATE_TO}{name}"): "true"});
    [(key, role), (part_key, part)]
}

fn cluster_binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> (String, Value) {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, n)| json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": n}))
        .collect();
    (
        format!("/registry/clusterrolebindings/{name}"),
        json!({
            "kind": "ClusterRoleBinding",
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects,
        }),
    )
}

/// Every default ClusterRole and ClusterRoleBinding.
pub fn defaults() -> Vec<(String, Value)> {
    let all = &["*"];
    let mut out: Vec<(String, Value)> = [
        aggregated("admin", None, admin_rules()),
        aggregated("edit", Some("admin"), edit_rules()),
        aggregated("view", Some("edit"), view_rules()),
    ]
    .into_iter()
    .flatten()
    .collect();
    // What metrics-server's manifest adds, as the metrics API is built in:
    // whoever may view a namespace may `kubectl top` it.
    let (key, mut metrics_reader) = cluster_role(
        "system:aggregated-metrics-reader",
        vec![rule(
            &["get", "list", "watch"],
            "metrics.k8s.io",
            &["pods", "nodes"],
        )],
    );
    metrics_reader["metadata"]["labels"] = json!({
        format!("{AGGREGATE_TO}view"): "true",
        format!("{AGGREGATE_TO}edit"): "true",
        format!("{AGGREGATE_TO}admin"): "true",
    });
    out.push((key, metrics_reader));
    out.extend([
        cluster_role(
            "cluster-admin",
            vec![
                json!({"verbs": all, "apiGroups": all, "resources": all}),
                urls(all, all),
            ],
        ),
        cluster_role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/readyz",
                    "/openapi",
                    "/openapi/*",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    "authentication.k8s.io",
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:monitoring",
            vec![urls(
                &["get"],
                &[
                    "/metrics",
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role("system:kube-scheduler", components::scheduler_rules()),
        cluster_role(
            "system:kube-controller-manager",
            components::controller_manager_rules(),
        ),
        cluster_binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        cluster_binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        cluster_binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        cluster_binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        cluster_binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", "system:masters")],
        ),
        cluster_binding(
            "system:discovery",
            "system:discovery",
            &[("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
    ]);
    out
}

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// What a stored default ClusterRole lacks of `want`: `None` when it has
/// every rule and aggregation selector, else the role with them added
/// (what an administrator added stays). Rules of an aggregating role are
/// the aggregation's to write, so only its selectors are compared.
pub fn reconciled(stored: &Value, want: &Value) -> Option<Value> {
    if stored.pointer(&format!(
        "/metadata/annotations/{}",
        AUTOUPDATE.replace('/', "~1")
    )) != Some(&json!("true"))
    {
        return None;
    }
    let mut out = stored.clone();
    let mut changed = false;
    let mut add_missing = |pointer: &str, parent: &str, field: &str| {
        let Some(wanted) = want.pointer(pointer).and_then(Value::as_array) else {
            return;
        };
        let have: Vec<Value> = out
            .pointer(pointer)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let missing: Vec<&Value> = wanted.iter().filter(|w| !have.contains(w)).collect();
        if missing.is_empty() {
            return;
        }
        let mut all = have;
        all.extend(missing.into_iter().cloned());
        let slot = if parent.is_empty() {
            &mut out
        } else {
            if !out.get(parent).is_some_and(Value::is_object) {
                out[parent] = json!({});
            }
            &mut out[parent]
        };
        slot[field] = Value::Array(all);
        changed = true;
    };
    add_missing(
        "/aggregationRule/clusterRoleSelectors",
        "aggregationRule",
        "clusterRoleSelectors",
    );
    if want.get("aggregationRule").is_none() {
        add_missing("/rules", "", "rules");
    }
    if let Some(labels) = want.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if out.pointer("/metadata/labels").and_then(|l| l.get(k)) != Some(v) {
                if !out["metadata"].get("labels").is_some_and(Value::is_object) {
                    out["metadata"]["labels"] = json!({});
                }
                out["metadata"]["labels"][k] = v.clone();
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

/// Creates the defaults that are missing, and brings the default
/// ClusterRoles still marked for automatic update up to this release.
pub async fn seed(storage: &Storage) -> anyhow::Result<()> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (key, mut obj) in defaults() {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            meta.insert("creationTimestamp".into(), now.clone().into());
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
            meta.insert("annotations".into(), json!({AUTOUPDATE: "true"}));
        }
        if storage.put_if_absent(&key, &obj).await? {
            continue;
        }
        if !key.starts_with("/registry/clusterroles/") {
            continue;
        }
        if let Some(stored) = storage.get(&key).await? {
            if let Some(updated) = reconciled(&stored.value, &obj) {
                // Conditional on the revision read: a concurrent writer
                // (another API server starting) wins, and its result
                // already holds these rules.
                match storage.update(&key, &updated, stored.rev, &[], &[]).await {
                    Ok(_) => tracing::info!(%key, "default ClusterRole brought up to date"),
                    Err(e) => tracing::info!(%key, "default ClusterRole not updated: {e}"),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_role(name: &str) -> Value {
        defaults()
            .into_iter()
            .find(|(k, _)| k.ends_with(&format!("/{name}")))
            .map(|(_, v)| v)
            .unwrap()
    }

    #[test]
    fn view_is_part_of_edit_and_edit_of_admin() {
        let all: std::collections::BTreeMap<String, Value> = defaults()
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("/registry/clusterroles/")?.to_string(), v)))
            .collect();
        // What the aggregation writes, innermost first.
        let mut all = all;
        for name in ["view", "edit", "admin"] {
            let rules = super::super::aggregation::aggregated_rules(&all[name], &all).unwrap();
            all.get_mut(name).unwrap()["rules"] = Value::Array(rules);
        }
        let has = |role: &str, resource: &str, verb: &str| {
            all[role]["rules"].as_array().unwrap().iter().any(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(resource))
                    && r["verbs"].as_array().unwrap().contains(&json!(verb))
            })
        };
        assert!(has("view", "pods", "list"));
        assert!(!has("view", "secrets", "get"));
        assert!(has("edit", "pods", "list") && has("edit", "secrets", "get"));
        assert!(!has("edit", "rolebindings", "create"));
        assert!(has("admin", "pods", "list") && has("admin", "rolebindings", "create"));
    }

    #[test]
    fn an_older_default_role_gains_new_rules_and_selectors_but_keeps_its_own() {
        let extra = json!({"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["x"]});
        let old_view = json!({
            "metadata": {"name": "view", "annotations": {AUTOUPDATE: "true"}},
            "rules": [extra.clone()],
        });
        let want = default_role("view");
        let updated = reconciled(&old_view, &want).expect("the old role is updated");
        assert_eq!(updated["aggregationRule"], want["aggregationRule"]);
        assert_eq!(
            updated["rules"],
            json!([extra]),
            "aggregated rules are not touched"
        );
        assert_eq!(
            updated["metadata"]["labels"][format!("{AGGREGATE_TO}edit")],
            "true"
        );
        assert_eq!(reconciled(&updated, &want), None, "nothing left to add");

        let part = default_role("system:aggregate-to-view");
        let mut stale = part.clone();
        stale["metadata"]["annotations"] = json!({AUTOUPDATE: "true"});
        stale["rules"] = json!([extra.clone()]);
        let updated = reconciled(&stale, &part).unwrap();
        let rules = updated["rules"].as_array().unwrap();
        assert_eq!(rules[0], extra);
        assert_eq!(rules.len(), 1 + part["rules"].as_array().unwrap().len());

        let mut pinned = stale.clone();
        pinned["metadata"]["annotations"] = json!({AUTOUPDATE: "false"});
        assert_eq!(
            reconciled(&pinned, &part),
            None,
            "autoupdate false is left alone"
        );
    }
}
