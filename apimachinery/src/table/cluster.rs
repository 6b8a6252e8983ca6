//! Cluster-level and configuration kinds: Nodes, Namespaces,
//! ConfigMaps, Secrets, Leases and ComponentStatuses.

use std::collections::BTreeSet;

use serde_json::Value;

use super::fields::{age, flag, list, map, name, or_none, text};
use super::{Column, Row, AGE, NAME};

/// Node table columns.
pub(super) const NODE_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Status",
        "string",
        "Node readiness, plus SchedulingDisabled when the node is cordoned.",
    ),
    Column::new(
        "Roles",
        "string",
        "Roles taken from the node's node-role.kubernetes.io/ labels.",
    ),
    AGE,
    Column::new("Version", "string", "Kubelet version the node reports."),
    Column::new(
        "Internal-IP",
        "string",
        "The node's first InternalIP address.",
    )
    .wide(),
    Column::new(
        "External-IP",
        "string",
        "The node's first ExternalIP address.",
    )
    .wide(),
    Column::new(
        "OS-Image",
        "string",
        "Operating system image the node reports.",
    )
    .wide(),
    Column::new(
        "Kernel-Version",
        "string",
        "Kernel version the node reports.",
    )
    .wide(),
    Column::new(
        "Container-Runtime",
        "string",
        "Container runtime name and version the node reports.",
    )
    .wide(),
];

/// Label prefix whose suffix names a node role.
const ROLE_PREFIX: &str = "node-role.kubernetes.io/";
/// Older single-valued role label.
const ROLE_LABEL: &str = "kubernetes.io/role";

/// One node row.
pub(super) fn node_row(node: &Value, now: i64) -> Row {
    // Only the Ready condition decides the status word; if it appears twice
    // the later entry wins, as it would when indexed by type.
    let mut status: Vec<&str> = vec![match list(node, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| text(c, &["type"]) == "Ready")
    {
        Some(c) if text(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if flag(node, &["spec", "unschedulable"]) {
        status.push("SchedulingDisabled");
    }
    let info = |field: &str| match text(node, &["status", "nodeInfo", field]) {
        "" => "<unknown>".to_string(),
        v => v.to_string(),
    };
    Row::new(vec![
        name(node),
        status.join(",").into(),
        or_none(&roles(node).join(",")).into(),
        age(node, now),
        text(node, &["status", "nodeInfo", "kubeletVersion"]).into(),
        node_address(node, "InternalIP").into(),
        node_address(node, "ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ])
}

/// Sorted, de-duplicated roles from the node's labels.
fn roles(node: &Value) -> Vec<String> {
    let mut roles = BTreeSet::new();
    for (key, value) in map(node, &["metadata", "labels"]).into_iter().flatten() {
        if let Some(role) = key.strip_prefix(ROLE_PREFIX).filter(|r| !r.is_empty()) {
            roles.insert(role.to_string());
        } else if key == ROLE_LABEL {
            if let Some(role) = value.as_str().filter(|r| !r.is_empty()) {
                roles.insert(role.to_string());
            }
        }
    }
    roles.into_iter().collect()
}

/// The first address of type `kind`, or `<none>`.
fn node_address(node: &Value, kind: &str) -> String {
    let found = list(node, &["status", "addresses"])
        .iter()
        .find(|a| text(a, &["type"]) == kind)
        .map(|a| text(a, &["address"]));
    found.unwrap_or("<none>").to_string()
}

/// Namespace table columns.
pub(super) const NAMESPACE_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Status",
        "string",
        "Lifecycle phase of the namespace: Active or Terminating.",
    ),
    AGE,
];

/// One namespace row.
pub(super) fn namespace_row(ns: &Value, now: i64) -> Row {
    Row::new(vec![
        name(ns),
        text(ns, &["status", "phase"]).into(),
        age(ns, now),
    ])
}

/// ConfigMap table columns.
pub(super) const CONFIGMAP_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Data",
        "string",
        "Number of keys in data and binaryData together.",
    ),
    AGE,
];

fn key_count(obj: &Value, field: &str) -> usize {
    map(obj, &[field]).map_or(0, |m| m.len())
}

/// One config map row.
pub(super) fn configmap_row(cm: &Value, now: i64) -> Row {
    let keys = key_count(cm, "data") + key_count(cm, "binaryData");
    Row::new(vec![name(cm), (keys as u64).into(), age(cm, now)])
}

/// Secret table columns.
pub(super) const SECRET_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Type",
        "string",
        "Secret type, which determines the keys the secret must hold.",
    ),
    Column::new("Data", "string", "Number of keys the secret holds."),
    AGE,
];

/// One secret row. Keys still sitting in `stringData` (write-only input the
/// API normally folds into `data`) are counted too, once.
pub(super) fn secret_row(secret: &Value, now: i64) -> Row {
    let keys: BTreeSet<&str> = ["data", "stringData"]
        .iter()
        .filter_map(|f| map(secret, &[f]))
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    Row::new(vec![
        name(secret),
        text(secret, &["type"]).into(),
        (keys.len() as u64).into(),
        age(secret, now),
    ])
}

/// Lease table columns.
pub(super) const LEASE_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Holder", "string", "Identity currently holding the lease."),
    AGE,
];

/// One lease row.
pub(super) fn lease_row(lease: &Value, now: i64) -> Row {
    Row::new(vec![
        name(lease),
        text(lease, &["spec", "holderIdentity"]).into(),
        age(lease, now),
    ])
}

/// ComponentStatus table columns (no age: these are synthesised on read).
pub(super) const COMPONENT_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Status",
        "string",
        "Healthy, Unhealthy or Unknown, from the Healthy condition.",
    ),
    Column::new(
        "Message",
        "string",
        "Message of the component's Healthy condition.",
    ),
    Column::new(
        "Error",
        "string",
        "Error of the component's Healthy condition.",
    ),
];

/// One component status row.
pub(super) fn component_row(cs: &Value, _now: i64) -> Row {
    let healthy = list(cs, &["conditions"])
        .iter()
        .find(|c| text(c, &["type"]) == "Healthy");
    let (status, message, error) = match healthy {
        Some(c) => (
            if text(c, &["status"]) == "True" {
                "Healthy"
            } else {
                "Unhealthy"
            },
            text(c, &["message"]),
            text(c, &["error"]),
        ),
        None => ("Unknown", "", ""),
    };
    Row::new(vec![name(cs), status.into(), message.into(), error.into()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{render, IncludeObject};
    use serde_json::json;

    const NOW: i64 = 1_795_855_897;

    fn columns(resource: &str) -> Vec<(String, i64)> {
        let t = render(resource, &[], NOW, IncludeObject::None, None);
        t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["priority"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    fn names(resource: &str) -> Vec<String> {
        columns(resource).into_iter().map(|c| c.0).collect()
    }

    #[test]
    fn node_columns() {
        let cols = columns("nodes");
        let expected = [
            ("Name", 0),
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
            ("Internal-IP", 1),
            ("External-IP", 1),
            ("OS-Image", 1),
            ("Kernel-Version", 1),
            ("Container-Runtime", 1),
        ];
        let expected: Vec<_> = expected.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        assert_eq!(cols, expected);
    }

    #[test]
    fn cordoned_not_ready_node() {
        let node = json!({
            "metadata": {"name": "node-a", "creationTimestamp": "2026-11-18T08:51:37Z",
                         "labels": {"node-role.kubernetes.io/control-plane": "",
                                    "node-role.kubernetes.io/worker": "",
                                    "node-role.kubernetes.io/": "x",
                                    "kubernetes.io/role": "infra"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"},
                               {"type": "Ready", "status": "False"}],
                "addresses": [{"type": "Hostname", "address": "node-a"},
                              {"type": "InternalIP", "address": "192.168.1.10"}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12",
                             "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.0"}
            }
        });
        assert_eq!(
            node_row(&node, NOW).cells,
            vec![
                json!("node-a"),
                json!("NotReady,SchedulingDisabled"),
                json!("control-plane,infra,worker"),
                json!("10d"),
                json!("v1.32.0"),
                json!("192.168.1.10"),
                json!("<none>"),
                json!("Debian GNU/Linux 12"),
                json!("6.1.0"),
                json!("containerd://1.7.0"),
            ]
        );
    }

    #[test]
    fn ready_and_unknown_nodes() {
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(node_row(&ready, NOW).cells[1], json!("Ready"));
        let bare = node_row(&json!({}), NOW).cells;
        assert_eq!(
            bare[1..5],
            [
                json!("Unknown"),
                json!("<none>"),
                json!("<unknown>"),
                json!("")
            ]
        );
        assert_eq!(
            bare[7..],
            [json!("<unknown>"), json!("<unknown>"), json!("<unknown>")]
        );
    }

    #[test]
    fn namespace_configmap_secret_lease_rows() {
        assert_eq!(names("namespaces"), ["Name", "Status", "Age"]);
        let ns = json!({"metadata": {"name": "kube-system", "creationTimestamp": "2026-11-28T08:51:37Z"},
                        "status": {"phase": "Active"}});
        assert_eq!(
            namespace_row(&ns, NOW).cells,
            vec![json!("kube-system"), json!("Active"), json!("0s")]
        );

        assert_eq!(names("configmaps"), ["Name", "Data", "Age"]);
        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(configmap_row(&cm, NOW).cells[1], json!(3));
        assert_eq!(configmap_row(&json!({}), NOW).cells[1], json!(0));

        assert_eq!(names("secrets"), ["Name", "Type", "Data", "Age"]);
        let s = json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
                       "data": {"tls.crt": "", "tls.key": ""}, "stringData": {"tls.key": "x", "ca.crt": "y"}});
        assert_eq!(
            secret_row(&s, NOW).cells[1..3],
            [json!("kubernetes.io/tls"), json!(3)]
        );

        assert_eq!(names("leases"), ["Name", "Holder", "Age"]);
        let lease =
            json!({"metadata": {"name": "kube-scheduler"}, "spec": {"holderIdentity": "cp-1_abc"}});
        assert_eq!(lease_row(&lease, NOW).cells[1], json!("cp-1_abc"));
        assert_eq!(lease_row(&json!({}), NOW).cells[1], json!(""));
    }

    #[test]
    fn component_statuses() {
        assert_eq!(
            names("componentstatuses"),
            ["Name", "Status", "Message", "Error"]
        );
        let ok = json!({"metadata": {"name": "etcd-0"},
                        "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}]});
        assert_eq!(
            component_row(&ok, NOW).cells,
            vec![json!("etcd-0"), json!("Healthy"), json!("ok"), json!("")]
        );
        let bad =
            json!({"conditions": [{"type": "Healthy", "status": "False", "error": "timeout"}]});
        assert_eq!(
            component_row(&bad, NOW).cells[1..],
            [json!("Unhealthy"), json!(""), json!("timeout")]
        );
        assert_eq!(component_row(&json!({}), NOW).cells[1], json!("Unknown"));
    }
}
