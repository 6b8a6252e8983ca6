//! HorizontalPodAutoscalers, with the columns `kubectl get hpa` prints.

use serde_json::Value;

use super::fields::{age, at, int, list, name, text};
use super::{Column, Row, AGE, NAME};

/// HorizontalPodAutoscaler table columns.
pub(super) const HPA_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Reference",
        "string",
        "The kind and name of the scaled object.",
    ),
    Column::new(
        "Targets",
        "string",
        "Each metric's current value against its target.",
    ),
    Column::new("MinPods", "string", "The fewest replicas it scales to."),
    Column::new("MaxPods", "integer", "The most replicas it scales to."),
    Column::new("Replicas", "integer", "The replicas it last saw."),
    AGE,
];

/// One autoscaler row: resource metrics as `cpu: 45%/50%`, `<unknown>`
/// before the first measurement.
pub(super) fn hpa_row(obj: &Value, now: i64) -> Row {
    let reference = format!(
        "{}/{}",
        text(obj, &["spec", "scaleTargetRef", "kind"]),
        text(obj, &["spec", "scaleTargetRef", "name"])
    );
    let current = list(obj, &["status", "currentMetrics"]);
    let targets: Vec<String> = list(obj, &["spec", "metrics"])
        .iter()
        .map(|m| {
            let Some(name) = at(m, &["resource", "name"]).and_then(Value::as_str) else {
                return format!("<{}>", text(m, &["type"]));
            };
            let seen = current
                .iter()
                .find(|c| at(c, &["resource", "name"]).and_then(Value::as_str) == Some(name));
            match int(m, &["resource", "target", "averageUtilization"]) {
                Some(want) => {
                    let now = seen
                        .and_then(|c| int(c, &["resource", "current", "averageUtilization"]))
                        .map_or("<unknown>".to_string(), |u| format!("{u}%"));
                    format!("{name}: {now}/{want}%")
                }
                None => format!(
                    "{name}: {}/{}",
                    seen.map_or("<unknown>", |c| text(
                        c,
                        &["resource", "current", "averageValue"]
                    )),
                    text(m, &["resource", "target", "averageValue"])
                ),
            }
        })
        .collect();
    let targets = if targets.is_empty() {
        "<none>".to_string()
    } else {
        targets.join(", ")
    };
    let min = int(obj, &["spec", "minReplicas"]).map_or("<unset>".to_string(), |m| m.to_string());
    Row::new(vec![
        name(obj),
        reference.into(),
        targets.into(),
        min.into(),
        int(obj, &["spec", "maxReplicas"]).unwrap_or(0).into(),
        int(obj, &["status", "currentReplicas"]).unwrap_or(0).into(),
        age(obj, now),
    ])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn targets_read_like_kubectl() {
        let hpa = json!({"metadata": {"name": "web"}, "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]},
            "status": {"currentReplicas": 2}});
        let row = hpa_row(&hpa, 0);
        assert_eq!(row.cells[1], "Deployment/web");
        assert_eq!(row.cells[2], "cpu: <unknown>/50%");
        let mut seen = hpa.clone();
        seen["status"]["currentMetrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "current": {"averageUtilization": 145, "averageValue": "145m"}}}]);
        assert_eq!(hpa_row(&seen, 0).cells[2], "cpu: 145%/50%");
        assert_eq!(hpa_row(&seen, 0).cells[5], 2);
    }
}
