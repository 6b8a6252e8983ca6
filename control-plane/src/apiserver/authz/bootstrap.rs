//! The roles and bindings every cluster starts with, named as in
//! Kubernetes so manifests and `kubectl create rolebinding --clusterrole=view`
//! work unchanged. Each is created when missing; one that exists is left
//! as the administrator made it.

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
        rule(READ, "discovery.k8s.io", &["endpointslices"]),
        rule(READ, "events.k8s.io", &["events"]),
    ]
}

/// What `edit` adds: changing workloads and reading and writing Secrets.
fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    rules.push(rule(READ, "", &["secrets"]));
    rules.push(rule(
        WRITE,
        "",
        &[
            "pods",
            "pods/exec",
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
    ));
    rules.push(rule(&["get", "create"], "", &["pods/exec"]));
    rules.push(rule(
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
    ));
    rules.push(rule(WRITE, "batch", &["jobs", "cronjobs"]));
    rules.push(rule(WRITE, "discovery.k8s.io", &["endpointslices"]));
    rules
}

/// What `admin` adds: the namespace's own Roles and RoleBindings.
fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    let all: Vec<&str> = READ.iter().chain(WRITE).copied().collect();
    rules.push(rule(
        &all,
        "rbac.authorization.k8s.io",
        &["roles", "rolebindings"],
    ));
    rules.push(rule(
        &["create"],
        "authorization.k8s.io",
        &["localsubjectaccessreviews"],
    ));
    rules
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
    vec![
        cluster_role(
            "cluster-admin",
            vec![
                json!({"verbs": all, "apiGroups": all, "resources": all}),
                urls(all, all),
            ],
        ),
        cluster_role("admin", admin_rules()),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
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
    ]
}

/// Creates the defaults that are missing.
pub async fn seed(storage: &Storage) -> anyhow::Result<()> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (key, mut obj) in defaults() {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            meta.insert("creationTimestamp".into(), now.clone().into());
            meta.insert(
                "labels".into(),
                json!({"kubernetes.io/bootstrapping": "rbac-defaults"}),
            );
            meta.insert(
                "annotations".into(),
                json!({"rbac.authorization.kubernetes.io/autoupdate": "true"}),
            );
        }
        storage.put_if_absent(&key, &obj).await?;
    }
    Ok(())
}
