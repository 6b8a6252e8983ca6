//! The least-privilege roles of the scheduler and the controller-manager,
//! named as Kubernetes names them (`system:kube-scheduler`,
//! `system:kube-controller-manager`) and bound to the users their
//! certificates name. Each rule is there because a loop of ours sends
//! that verb; what no loop sends (exec, impersonation, RBAC writes, Secrets
//! outside the garbage collector's reach) stays refused.

use serde_json::{json, Value};

use super::super::resources::RESOURCES;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE_STATUS: &[&str] = &["patch", "update"];
const EVENTS: &[&str] = &["create", "patch", "update"];

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": [group], "resources": resources})
}

/// Leader election: any Lease may be created, only the component's own
/// updated (and nodes' Leases never written).
fn leader_election(lease: &str) -> Vec<Value> {
    vec![
        rule(&["create"], "coordination.k8s.io", &["leases"]),
        json!({"verbs": ["get", "update"], "apiGroups": ["coordination.k8s.io"],
               "resources": ["leases"], "resourceNames": [lease]}),
    ]
}

fn events() -> Vec<Value> {
    vec![
        rule(EVENTS, "", &["events"]),
        rule(EVENTS, "events.k8s.io", &["events"]),
    ]
}

/// What the scheduler reads (nodes, pods, volumes and classes) and writes
/// (bindings, the PodScheduled condition, a claim's selected node).
pub fn scheduler_rules() -> Vec<Value> {
    let mut rules = events();
    rules.extend(leader_election("kube-scheduler"));
    rules.extend([
        rule(READ, "", &["nodes", "pods", "persistentvolumes"]),
        rule(&["create"], "", &["pods/binding", "bindings"]),
        rule(WRITE_STATUS, "", &["pods/status"]),
        rule(
            &["get", "list", "watch", "patch", "update"],
            "",
            &["persistentvolumeclaims"],
        ),
        rule(READ, "storage.k8s.io", &["storageclasses"]),
    ]);
    rules
}

/// What the namespace controller lists and deletes in a terminating
/// namespace: every namespaced kind, and no cluster-scoped one (so not
/// Namespaces or Nodes themselves).
fn namespace_contents() -> Vec<Value> {
    let mut by_group: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| {
        r.namespaced && r.verbs.contains(&"deletecollection") && r.verbs.contains(&"list")
    }) {
        match by_group.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, plurals)) => plurals.push(r.plural),
            None => by_group.push((r.group, vec![r.plural])),
        }
    }
    by_group
        .into_iter()
        .map(|(group, plurals)| rule(&["list", "deletecollection"], group, &plurals))
        .collect()
}

/// Every controller's needs, in one role: the workload controllers
/// (ReplicaSet, ReplicationController, Deployment, DaemonSet, Job, CronJob), node
/// IPAM and lifecycle, endpoints and slices, ServiceAccounts and
/// `kube-root-ca.crt`, volumes, the namespace controller and the garbage
/// collector.
pub fn controller_manager_rules() -> Vec<Value> {
    let crud: &[&str] = &[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let owned: &[&str] = &["get", "list", "watch", "update", "patch"];
    let mut rules = events();
    rules.extend(leader_election("kube-controller-manager"));
    rules.extend([
        // Workloads and the pods they own.
        rule(crud, "", &["pods"]),
        rule(WRITE_STATUS, "", &["pods/status"]),
        rule(owned, "", &["replicationcontrollers"]),
        rule(
            WRITE_STATUS,
            "",
            &[
                "replicationcontrollers/status",
                "replicationcontrollers/scale",
            ],
        ),
        rule(crud, "apps", &["replicasets", "controllerrevisions"]),
        rule(
            owned,
            "apps",
            &["deployments", "daemonsets", "statefulsets"],
        ),
        rule(
            WRITE_STATUS,
            "apps",
            &[
                "deployments/status",
                "replicasets/status",
                "daemonsets/status",
                "statefulsets/status",
            ],
        ),
        // HorizontalPodAutoscalers: the scale of their targets, from the
        // pods' metrics.
        rule(
            &["get", "list", "watch"],
            "autoscaling",
            &["horizontalpodautoscalers"],
        ),
        rule(
            WRITE_STATUS,
            "autoscaling",
            &["horizontalpodautoscalers/status"],
        ),
        rule(
            &["get", "update", "patch"],
            "apps",
            &[
                "deployments/scale",
                "replicasets/scale",
                "statefulsets/scale",
            ],
        ),
        rule(&["get", "list"], "metrics.k8s.io", &["pods"]),
        // CronJobs create their Jobs.
        rule(crud, "batch", &["jobs"]),
        rule(owned, "batch", &["cronjobs"]),
        rule(WRITE_STATUS, "batch", &["jobs/status", "cronjobs/status"]),
        // Node IPAM (podCIDR) and lifecycle (conditions, taints, Leases).
        rule(&["get", "list", "watch", "update", "patch"], "", &["nodes"]),
        rule(WRITE_STATUS, "", &["nodes/status"]),
        rule(READ, "coordination.k8s.io", &["leases"]),
        // Endpoints and EndpointSlices of Services.
        rule(READ, "", &["services"]),
        rule(crud, "", &["endpoints"]),
        rule(crud, "discovery.k8s.io", &["endpointslices"]),
        // `default` ServiceAccounts and `kube-root-ca.crt`.
        rule(
            &["get", "list", "watch", "create"],
            "",
            &["serviceaccounts"],
        ),
        rule(
            &["get", "list", "watch", "create", "update", "patch"],
            "",
            &["configmaps"],
        ),
        // Volumes: binding, provisioning and reclaiming local paths.
        rule(crud, "", &["persistentvolumes"]),
        // StatefulSets create their claims; retention and the garbage
        // collector delete them.
        rule(crud, "", &["persistentvolumeclaims"]),
        rule(
            WRITE_STATUS,
            "",
            &["persistentvolumes/status", "persistentvolumeclaims/status"],
        ),
        rule(
            &["get", "list", "watch", "create"],
            "storage.k8s.io",
            &["storageclasses"],
        ),
        // The namespace controller empties a terminating namespace of
        // every kind, then finalizes it.
        rule(READ, "", &["namespaces"]),
        rule(
            WRITE_STATUS,
            "",
            &["namespaces/status", "namespaces/finalize"],
        ),
    ]);
    rules.extend(namespace_contents());
    // The garbage collector reads, patches (owner references) and deletes
    // the kinds it follows.
    for (group, _, _, plural) in crate::controllers::garbagecollector::KINDS {
        rules.push(rule(
            &["get", "list", "watch", "patch", "update", "delete"],
            group,
            &[plural],
        ));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::super::rbac::{rule_allows, Attributes, ResourceAttributes};
    use super::*;

    fn allows(
        rules: &[Value],
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        name: &str,
    ) -> bool {
        let attrs = Attributes {
            verb: verb.into(),
            resource: Some(ResourceAttributes {
                namespace: "default".into(),
                group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                name: name.into(),
            }),
            path: String::new(),
        };
        rules.iter().any(|r| rule_allows(r, &attrs))
    }

    #[test]
    fn the_scheduler_binds_but_reads_no_secrets_and_deletes_nothing() {
        let r = scheduler_rules();
        assert!(allows(&r, "create", "", "pods", "binding", "p"));
        assert!(allows(&r, "watch", "", "pods", "", ""));
        assert!(allows(
            &r,
            "update",
            "coordination.k8s.io",
            "leases",
            "",
            "kube-scheduler"
        ));
        assert!(!allows(
            &r,
            "update",
            "coordination.k8s.io",
            "leases",
            "",
            "node-a"
        ));
        assert!(!allows(&r, "get", "", "secrets", "", "s"));
        assert!(!allows(&r, "delete", "", "namespaces", "", "default"));
        assert!(!allows(&r, "delete", "", "pods", "", "p"));
    }

    #[test]
    fn the_controller_manager_cannot_exec_or_grant() {
        let r = controller_manager_rules();
        assert!(allows(&r, "create", "", "pods", "", ""));
        assert!(allows(
            &r,
            "deletecollection",
            "apps",
            "deployments",
            "",
            ""
        ));
        assert!(allows(&r, "update", "", "namespaces", "finalize", "ns"));
        for (verb, group, resource, sub) in [
            ("get", "", "pods", "exec"),
            ("create", "", "pods", "exec"),
            (
                "create",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "",
            ),
            ("update", "rbac.authorization.k8s.io", "clusterroles", ""),
            ("impersonate", "", "users", ""),
            ("create", "", "secrets", ""),
            ("delete", "", "namespaces", ""),
            ("update", "coordination.k8s.io", "leases", ""),
            ("deletecollection", "", "namespaces", ""),
            ("deletecollection", "", "nodes", ""),
        ] {
            assert!(
                !allows(&r, verb, group, resource, sub, "x"),
                "{verb} {resource}/{sub}"
            );
        }
    }
}
