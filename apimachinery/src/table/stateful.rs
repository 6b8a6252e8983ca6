//! StatefulSets, whose progress is ready pods out of the desired count.

use serde_json::Value;

use super::fields::{age, container_cells, int, list, name};
use super::{Column, Row, AGE, CONTAINERS, IMAGES, NAME};

/// StatefulSet table columns.
pub(super) const STATEFULSET_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Ready",
        "string",
        "Ready pods out of the desired replica count.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
];

/// One stateful set row.
pub(super) fn statefulset_row(obj: &Value, now: i64) -> Row {
    let ready = int(obj, &["status", "readyReplicas"]).unwrap_or(0);
    let desired = int(obj, &["spec", "replicas"]).unwrap_or(0);
    let (containers, images) =
        container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    Row::new(vec![
        name(obj),
        format!("{ready}/{desired}").into(),
        age(obj, now),
        containers,
        images,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statefulset_rows_show_ready_out_of_desired() {
        let sts = json!({"metadata": {"name": "web", "creationTimestamp": "2026-11-28T08:41:37Z"},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2}});
        assert_eq!(
            statefulset_row(&sts, 1_795_855_897).cells,
            vec![
                json!("web"),
                json!("2/3"),
                json!("10m"),
                json!("c"),
                json!("busybox")
            ]
        );
    }
}
