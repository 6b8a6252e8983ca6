//! Replica-managing workloads: Deployments, ReplicaSets and
//! ReplicationControllers. Their rows compare desired against observed
//! replica counts, so users can see a rollout converge.

use serde_json::Value;

use super::fields::{
    age, at, container_cells, format_labels, int, label_selector, list, map, name,
};
use super::{Column, Row, AGE, CONTAINERS, IMAGES, NAME};

/// Deployment table columns.
pub(super) const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Ready",
        "string",
        "Ready pods out of the desired replica count.",
    ),
    Column::new(
        "Up-to-date",
        "string",
        "Replicas already running the latest pod template.",
    ),
    Column::new(
        "Available",
        "string",
        "Replicas that have stayed ready long enough to serve.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::new(
        "Selector",
        "string",
        "Label query selecting the deployment's pods.",
    )
    .wide(),
];

/// ReplicaSet table columns.
pub(super) const REPLICASET_COLUMNS: &[Column] = &[
    NAME,
    DESIRED,
    CURRENT,
    READY,
    AGE,
    CONTAINERS,
    IMAGES,
    Column::new(
        "Selector",
        "string",
        "Label query selecting the replica set's pods.",
    )
    .wide(),
];

/// ReplicationController table columns.
pub(super) const RC_COLUMNS: &[Column] = &[
    NAME,
    DESIRED,
    CURRENT,
    READY,
    AGE,
    CONTAINERS,
    IMAGES,
    Column::new(
        "Selector",
        "string",
        "Labels a pod must carry to be managed by this controller.",
    )
    .wide(),
];

const DESIRED: Column = Column::new("Desired", "integer", "Replica count requested in the spec.");
const CURRENT: Column = Column::new("Current", "integer", "Replicas that currently exist.");
const READY: Column = Column::new("Ready", "integer", "Replicas whose pods are ready.");

/// `spec.replicas`, defaulting to 1 like the API does for objects stored
/// before defaulting ran.
fn desired(obj: &Value) -> i64 {
    int(obj, &["spec", "replicas"]).unwrap_or(1)
}

fn status_count(obj: &Value, field: &str) -> i64 {
    int(obj, &["status", field]).unwrap_or(0)
}

fn template_containers(obj: &Value) -> &[Value] {
    list(obj, &["spec", "template", "spec", "containers"])
}

/// One deployment row.
pub(super) fn deployment_row(obj: &Value, now: i64) -> Row {
    let (containers, images) = container_cells(template_containers(obj));
    // Deployments print an empty selector as-is but flag unusable ones.
    let selector =
        label_selector(at(obj, &["spec", "selector"])).unwrap_or_else(|()| "<invalid>".to_string());
    Row::new(vec![
        name(obj),
        format!("{}/{}", status_count(obj, "readyReplicas"), desired(obj)).into(),
        status_count(obj, "updatedReplicas").into(),
        status_count(obj, "availableReplicas").into(),
        age(obj, now),
        containers,
        images,
        selector.into(),
    ])
}

/// One replica set row.
pub(super) fn replicaset_row(obj: &Value, now: i64) -> Row {
    let (containers, images) = container_cells(template_containers(obj));
    let selector = match label_selector(at(obj, &["spec", "selector"])) {
        Ok(s) if s.is_empty() => "<none>".to_string(),
        Ok(s) => s,
        Err(()) => "<error>".to_string(),
    };
    replica_row(obj, now, containers, images, selector)
}

/// One replication controller row; its selector is a plain label map.
pub(super) fn rc_row(obj: &Value, now: i64) -> Row {
    let (containers, images) = container_cells(template_containers(obj));
    let selector = format_labels(map(obj, &["spec", "selector"]));
    replica_row(obj, now, containers, images, selector)
}

fn replica_row(obj: &Value, now: i64, containers: Value, images: Value, selector: String) -> Row {
    Row::new(vec![
        name(obj),
        desired(obj).into(),
        status_count(obj, "replicas").into(),
        status_count(obj, "readyReplicas").into(),
        age(obj, now),
        containers,
        images,
        selector.into(),
    ])
}

/// ControllerRevision table columns.
pub(super) const REVISION_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Controller",
        "string",
        "The workload whose template this revision holds.",
    ),
    Column::new("Revision", "integer", "Revision number of the template."),
    AGE,
];

/// One controller revision row: its controller as `kind.group/name`.
pub(super) fn revision_row(obj: &Value, now: i64) -> Row {
    let controller = list(obj, &["metadata", "ownerReferences"])
        .iter()
        .find(|r| r["controller"] == true)
        .map(|r| {
            let kind = r["kind"].as_str().unwrap_or("").to_ascii_lowercase();
            let group = r["apiVersion"]
                .as_str()
                .and_then(|v| v.split_once('/'))
                .map(|(g, _)| g)
                .unwrap_or("");
            let name = r["name"].as_str().unwrap_or("");
            if group.is_empty() {
                format!("{kind}/{name}")
            } else {
                format!("{kind}.{group}/{name}")
            }
        })
        .unwrap_or_else(|| "<none>".to_string());
    Row::new(vec![
        name(obj),
        controller.into(),
        int(obj, &["revision"]).unwrap_or(0).into(),
        age(obj, now),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{render, IncludeObject};
    use serde_json::json;

    const NOW: i64 = 1_795_855_897;

    #[test]
    fn revision_rows_name_their_controller_with_its_group() {
        let rev = json!({"metadata": {"name": "agent-5d8f", "creationTimestamp": "2026-11-28T08:41:37Z",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                                 "uid": "u", "controller": true}]},
            "revision": 3});
        let cells = revision_row(&rev, NOW).cells;
        assert_eq!(
            cells[..3],
            [json!("agent-5d8f"), json!("daemonset.apps/agent"), json!(3)]
        );
        let orphan = revision_row(&json!({"metadata": {"name": "x"}}), NOW).cells;
        assert_eq!(orphan[1], "<none>");
    }

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}},
               "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"},
                                       {"name": "log", "image": "busybox"}]}})
    }

    fn column_names(resource: &str) -> Vec<(String, i64)> {
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

    #[test]
    fn deployment_columns_and_row() {
        let names: Vec<_> = column_names("deployments")
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-11-28T08:41:37Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template()},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        assert_eq!(
            deployment_row(&d, NOW).cells,
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("10m"),
                json!("nginx,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web"),
            ]
        );
    }

    #[test]
    fn deployment_defaults() {
        let c = deployment_row(&json!({"metadata": {"name": "bare"}}), NOW).cells;
        assert_eq!(
            c[1..],
            [
                json!("0/1"),
                json!(0),
                json!(0),
                json!("<unknown>"),
                json!(""),
                json!(""),
                json!("")
            ]
        );
        let bad =
            json!({"spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "??"}]}}});
        assert_eq!(deployment_row(&bad, NOW).cells[7], json!("<invalid>"));
    }

    #[test]
    fn replicaset_columns_and_row() {
        assert_eq!(
            column_names("replicasets"),
            [
                ("Name".to_string(), 0),
                ("Desired".to_string(), 0),
                ("Current".to_string(), 0),
                ("Ready".to_string(), 0),
                ("Age".to_string(), 0),
                ("Containers".to_string(), 1),
                ("Images".to_string(), 1),
                ("Selector".to_string(), 1),
            ]
        );
        let rs = json!({
            "metadata": {"name": "web-5d9f", "creationTimestamp": "2026-11-26T08:51:37Z"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d9f"}},
                     "template": template()},
            "status": {"replicas": 2, "readyReplicas": 1}
        });
        assert_eq!(
            replicaset_row(&rs, NOW).cells,
            vec![
                json!("web-5d9f"),
                json!(2),
                json!(2),
                json!(1),
                json!("2d"),
                json!("nginx,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web,pod-template-hash=5d9f"),
            ]
        );
        assert_eq!(replicaset_row(&json!({}), NOW).cells[7], json!("<none>"));
        let bad = json!({"spec": {"selector": {"matchLabels": ["x"]}}});
        assert_eq!(replicaset_row(&bad, NOW).cells[7], json!("<error>"));
    }

    #[test]
    fn replication_controller_columns_and_row() {
        let names: Vec<_> = column_names("replicationcontrollers")
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let rc = json!({
            "metadata": {"name": "legacy"},
            "spec": {"replicas": 0, "selector": {"app": "legacy"}, "template": template()},
            "status": {"replicas": 0}
        });
        let c = rc_row(&rc, NOW).cells;
        assert_eq!(c[1..4], [json!(0), json!(0), json!(0)]);
        assert_eq!(c[7], json!("app=legacy"));
        assert_eq!(rc_row(&json!({}), NOW).cells[7], json!("<none>"));
    }
}
