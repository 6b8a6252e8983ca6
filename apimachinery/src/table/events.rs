//! Event rows. Events come in two shapes: the legacy core/v1 fields
//! (`firstTimestamp`, `lastTimestamp`, `count`, `source`) and the newer
//! events API fields (`eventTime`, `series`, `reportingController`) that
//! the core/v1 view also carries. The row prefers the legacy fields and
//! falls back to the newer ones, as the Kubernetes printer does.

use serde_json::Value;

use super::fields::{at, int, name, since, text, timestamp};
use super::{Column, Row, NAME};

/// Event table columns: the default view leads with recency and the
/// message; identity and counters are wide-only.
pub(super) const COLUMNS: &[Column] = &[
    Column::new(
        "Last Seen",
        "string",
        "Time since the event was last observed.",
    ),
    Column::new("Type", "string", "Event severity: Normal or Warning."),
    Column::new(
        "Reason",
        "string",
        "Short, machine-readable cause of the event.",
    ),
    Column::new(
        "Object",
        "string",
        "Kind and name of the object the event is about.",
    ),
    Column::new(
        "Subobject",
        "string",
        "Field path inside the object, such as a specific container.",
    )
    .wide(),
    Column::new(
        "Source",
        "string",
        "Component, and host if known, that reported the event.",
    )
    .wide(),
    Column::new(
        "Message",
        "string",
        "Human-readable description of what happened.",
    ),
    Column::new(
        "First Seen",
        "string",
        "Time since the event was first observed.",
    )
    .wide(),
    Column::new("Count", "string", "How many times the event has occurred.").wide(),
    Column {
        priority: 1,
        ..NAME
    },
];

/// One event row. Events written through the newer events API carry
/// `eventTime`/`series` instead of the legacy timestamps and count, so both
/// shapes are understood.
pub(super) fn row(ev: &Value, now: i64) -> Row {
    let first = match timestamp(ev, &["firstTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => since(timestamp(ev, &["eventTime"]), now),
    };
    let mut last = match timestamp(ev, &["lastTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = int(ev, &["count"]).unwrap_or(0);
    if at(ev, &["series"]).is_some() {
        last = since(timestamp(ev, &["series", "lastObservedTime"]), now);
        count = int(ev, &["series", "count"]).unwrap_or(0);
    } else if count == 0 {
        // Singleton events written by the new API leave count unset.
        count = 1;
    }
    let kind = text(ev, &["involvedObject", "kind"]).to_lowercase();
    let target = match text(ev, &["involvedObject", "name"]) {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = first_non_empty(
        text(ev, &["source", "component"]),
        text(ev, &["reportingController"]),
    );
    let host = first_non_empty(
        text(ev, &["source", "host"]),
        text(ev, &["reportingInstance"]),
    );
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    Row::new(vec![
        last.into(),
        text(ev, &["type"]).into(),
        text(ev, &["reason"]).into(),
        target.into(),
        text(ev, &["involvedObject", "fieldPath"]).into(),
        source.into(),
        text(ev, &["message"]).trim().into(),
        first.into(),
        count.into(),
        name(ev),
    ])
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
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

    #[test]
    fn event_columns() {
        assert_eq!(
            columns("events"),
            [
                ("Last Seen", 0),
                ("Type", 0),
                ("Reason", 0),
                ("Object", 0),
                ("Subobject", 1),
                ("Source", 1),
                ("Message", 0),
                ("First Seen", 1),
                ("Count", 1),
                ("Name", 1),
            ]
            .iter()
            .map(|(n, p)| (n.to_string(), *p))
            .collect::<Vec<_>>()
        );
        let t = render("events", &[], NOW, IncludeObject::None, None);
        assert_eq!(t["columnDefinitions"][9]["format"], json!("name"));
    }

    #[test]
    fn legacy_event_row() {
        let ev = json!({
            "metadata": {"name": "web-1.17a"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "type": "Warning", "message": "Back-off restarting failed container\n",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2026-11-28T08:41:37Z", "lastTimestamp": "2026-11-28T08:50:37Z",
            "count": 7
        });
        assert_eq!(
            row(&ev, NOW).cells,
            vec![
                json!("60s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web-1"),
                json!("spec.containers{app}"),
                json!("kubelet, node-a"),
                json!("Back-off restarting failed container"),
                json!("10m"),
                json!(7),
                json!("web-1.17a"),
            ]
        );
    }

    #[test]
    fn new_api_events() {
        let single = json!({
            "involvedObject": {"kind": "Node"},
            "eventTime": "2026-11-28T08:51:30.123456Z",
            "reportingController": "scheduler", "reportingInstance": "sched-1"
        });
        let c = row(&single, NOW).cells;
        assert_eq!(c[0], json!("7s"));
        assert_eq!(c[3], json!("node"));
        assert_eq!(c[5], json!("scheduler, sched-1"));
        assert_eq!(c[7], json!("7s"));
        assert_eq!(c[8], json!(1));

        let series = json!({
            "eventTime": "2026-11-28T08:41:37Z",
            "series": {"count": 4, "lastObservedTime": "2026-11-28T08:51:17Z"},
            "source": {"component": "kubelet"}
        });
        let c = row(&series, NOW).cells;
        assert_eq!(
            (c[0].clone(), c[5].clone(), c[7].clone(), c[8].clone()),
            (json!("20s"), json!("kubelet"), json!("10m"), json!(4))
        );

        let bare = row(&json!({}), NOW).cells;
        assert_eq!(bare[0], json!("<unknown>"));
        assert_eq!(bare[8], json!(1));
    }
}
