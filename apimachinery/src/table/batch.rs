//! Jobs and DaemonSets: workloads whose progress is not a replica count
//! but completions (Jobs) or nodes covered (DaemonSets).

use serde_json::Value;

use super::fields::{
    age, at, container_cells, format_labels, int, label_selector, list, map, name, timestamp,
};
use super::time::human_duration;
use super::{Column, Row, AGE, CONTAINERS, IMAGES, NAME};

/// Job table columns.
pub(super) const JOB_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Status",
        "string",
        "Status of the job: Running, Complete, Failed, Suspended, ...",
    ),
    Column::new(
        "Completions",
        "string",
        "Succeeded pods out of the desired completions.",
    ),
    Column::new("Duration", "string", "Time the job took to complete."),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::new(
        "Selector",
        "string",
        "Label query selecting the job's pods.",
    )
    .wide(),
];

/// CronJob table columns.
pub(super) const CRONJOB_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Schedule", "string", "The schedule the job runs on."),
    Column::new(
        "Timezone",
        "string",
        "The time zone the schedule is read in.",
    ),
    Column::new("Suspend", "boolean", "Whether new runs are held back."),
    Column::new("Active", "integer", "Jobs of this cron job still running."),
    Column::new("Last Schedule", "string", "When a job was last scheduled."),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::new(
        "Selector",
        "string",
        "Label query selecting the jobs' pods.",
    )
    .wide(),
];

/// DaemonSet table columns.
pub(super) const DAEMONSET_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Desired",
        "integer",
        "Nodes that should run the daemon pod.",
    ),
    Column::new(
        "Current",
        "integer",
        "Nodes running at least one daemon pod.",
    ),
    Column::new("Ready", "integer", "Nodes whose daemon pod is ready."),
    Column::new(
        "Up-to-date",
        "integer",
        "Nodes running the latest daemon pod template.",
    ),
    Column::new(
        "Available",
        "integer",
        "Nodes whose daemon pod has been ready long enough to serve.",
    ),
    Column::new(
        "Node Selector",
        "string",
        "Labels a node must carry to run the daemon pod.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    Column::new(
        "Selector",
        "string",
        "Label query selecting the daemon set's pods.",
    )
    .wide(),
];

fn has_condition(obj: &Value, ty: &str) -> bool {
    list(obj, &["status", "conditions"])
        .iter()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

fn selector_cell(obj: &Value) -> Value {
    match label_selector(at(obj, &["spec", "selector"])) {
        Ok(s) if s.is_empty() => "<none>".into(),
        Ok(s) => s.into(),
        Err(()) => "<error>".into(),
    }
}

/// One job row.
pub(super) fn job_row(obj: &Value, now: i64) -> Row {
    let succeeded = int(obj, &["status", "succeeded"]).unwrap_or(0);
    let completions = match (
        int(obj, &["spec", "completions"]),
        int(obj, &["spec", "parallelism"]),
    ) {
        (Some(c), _) => format!("{succeeded}/{c}"),
        (None, Some(p)) if p > 1 => format!("{succeeded}/1 of {p}"),
        (None, _) => format!("{succeeded}/1"),
    };
    let duration = match (
        timestamp(obj, &["status", "startTime"]),
        timestamp(obj, &["status", "completionTime"]),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now - start),
        (Some(start), Some(end)) => human_duration(end - start),
    };
    // The same precedence as kubectl's printer: a finished job says so
    // even while it is being deleted.
    let status = if has_condition(obj, "Complete") {
        "Complete"
    } else if has_condition(obj, "Failed") {
        "Failed"
    } else if at(obj, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null()) {
        "Terminating"
    } else if has_condition(obj, "Suspended") {
        "Suspended"
    } else if has_condition(obj, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(obj, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (containers, images) =
        container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    Row::new(vec![
        name(obj),
        status.into(),
        completions.into(),
        duration.into(),
        age(obj, now),
        containers,
        images,
        selector_cell(obj),
    ])
}

/// One cron job row.
pub(super) fn cronjob_row(obj: &Value, now: i64) -> Row {
    let text = |path: &[&str]| {
        at(obj, path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("<none>")
            .to_string()
    };
    let last = match timestamp(obj, &["status", "lastScheduleTime"]) {
        Some(t) => human_duration(now - t),
        None => "<none>".into(),
    };
    // Typed boolean but printed as kubectl's printer writes it.
    let suspend = match at(obj, &["spec", "suspend"]).and_then(Value::as_bool) {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    };
    let template = &[
        "spec",
        "jobTemplate",
        "spec",
        "template",
        "spec",
        "containers",
    ];
    let (containers, images) = container_cells(list(obj, template));
    let selector = match label_selector(at(obj, &["spec", "jobTemplate", "spec", "selector"])) {
        Ok(s) if s.is_empty() => "<none>".into(),
        Ok(s) => s.into(),
        Err(()) => "<error>".into(),
    };
    Row::new(vec![
        name(obj),
        text(&["spec", "schedule"]).into(),
        text(&["spec", "timeZone"]).into(),
        suspend.into(),
        list(obj, &["status", "active"]).len().into(),
        last.into(),
        age(obj, now),
        containers,
        images,
        selector,
    ])
}

/// One daemon set row.
pub(super) fn daemonset_row(obj: &Value, now: i64) -> Row {
    let count = |field: &str| int(obj, &["status", field]).unwrap_or(0);
    let (containers, images) =
        container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    Row::new(vec![
        name(obj),
        count("desiredNumberScheduled").into(),
        count("currentNumberScheduled").into(),
        count("numberReady").into(),
        count("updatedNumberScheduled").into(),
        count("numberAvailable").into(),
        format_labels(map(obj, &["spec", "template", "spec", "nodeSelector"])).into(),
        age(obj, now),
        containers,
        images,
        selector_cell(obj),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_795_855_897;

    fn job(spec: Value, status: Value) -> Value {
        json!({"metadata": {"name": "pi", "creationTimestamp": "2026-11-28T08:41:37Z"},
               "spec": spec, "status": status})
    }

    #[test]
    fn job_rows_read_as_kubectl_prints_them() {
        let template = json!({"spec": {"containers": [{"name": "pi", "image": "perl"}]}});
        let running = job(
            json!({"completions": 5, "parallelism": 2, "template": template,
                   "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}}}),
            json!({"succeeded": 2, "startTime": "2026-11-28T08:41:37Z"}),
        );
        assert_eq!(
            job_row(&running, NOW).cells,
            vec![
                json!("pi"),
                json!("Running"),
                json!("2/5"),
                json!("10m"),
                json!("10m"),
                json!("pi"),
                json!("perl"),
                json!("batch.kubernetes.io/controller-uid=u1"),
            ]
        );
        let done = job(
            json!({"completions": 1}),
            json!({"succeeded": 1, "startTime": "2026-11-28T08:41:37Z",
                   "completionTime": "2026-11-28T08:42:07Z",
                   "conditions": [{"type": "Complete", "status": "True"}]}),
        );
        let c = job_row(&done, NOW).cells;
        assert_eq!(c[1..4], [json!("Complete"), json!("1/1"), json!("30s")]);
        let failed = job(
            json!({"parallelism": 3}),
            json!({"conditions": [{"type": "Failed", "status": "True"}]}),
        );
        let c = job_row(&failed, NOW).cells;
        assert_eq!(c[1..4], [json!("Failed"), json!("0/1 of 3"), json!("")]);
        let suspended = job(
            json!({}),
            json!({"conditions": [{"type": "Suspended", "status": "True"},
                                  {"type": "Complete", "status": "False"}]}),
        );
        assert_eq!(job_row(&suspended, NOW).cells[1], json!("Suspended"));
    }

    #[test]
    fn cronjob_rows_read_as_kubectl_prints_them() {
        let cj = json!({
            "metadata": {"name": "hello", "creationTimestamp": "2026-11-28T08:41:37Z"},
            "spec": {"schedule": "*/1 * * * *", "suspend": false,
                     "jobTemplate": {"spec": {"template": {"spec": {
                         "containers": [{"name": "hello", "image": "busybox"}]}}}}},
            "status": {"active": [{"name": "hello-1"}], "lastScheduleTime": "2026-11-28T08:51:07Z"}
        });
        assert_eq!(
            cronjob_row(&cj, NOW).cells,
            vec![
                json!("hello"),
                json!("*/1 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("30s"),
                json!("10m"),
                json!("hello"),
                json!("busybox"),
                json!("<none>"),
            ]
        );
        let idle =
            json!({"spec": {"schedule": "@daily", "timeZone": "Europe/Paris", "suspend": true}});
        let c = cronjob_row(&idle, NOW).cells;
        assert_eq!(
            c[1..6],
            [
                json!("@daily"),
                json!("Europe/Paris"),
                json!("True"),
                json!(0),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn daemonset_row_counts_nodes() {
        let ds = json!({
            "metadata": {"name": "agent", "creationTimestamp": "2026-11-28T08:41:37Z"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"spec": {"nodeSelector": {"disk": "ssd"},
                                           "containers": [{"name": "a", "image": "busybox"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                       "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}
        });
        assert_eq!(
            daemonset_row(&ds, NOW).cells,
            vec![
                json!("agent"),
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("disk=ssd"),
                json!("10m"),
                json!("a"),
                json!("busybox"),
                json!("app=agent"),
            ]
        );
        assert_eq!(
            daemonset_row(&json!({}), NOW).cells[6],
            json!("<none>"),
            "no node selector"
        );
    }
}
