//! Pod rows. The STATUS cell condenses phase, init progress and container
//! states into the single word kubectl users act on (CrashLoopBackOff,
//! Init:0/1, Terminating...), so its precedence rules follow the Kubernetes
//! pod printer closely, sidecar (restartable init) containers included.

use serde_json::{json, Value};

use super::fields::{age, at, flag, int, list, name, or_none, since, text, timestamp};
use super::{Column, Row, AGE, NAME};

/// Pod table columns.
pub(super) const COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Ready",
        "string",
        "Ready containers out of the pod's long-running containers, sidecars included.",
    ),
    Column::new(
        "Status",
        "string",
        "Summary of the pod's phase and the states of its containers.",
    ),
    Column::new(
        "Restarts",
        "string",
        "Total container restarts, and how long ago the most recent one happened.",
    ),
    AGE,
    Column::new("IP", "string", "Primary IP address assigned to the pod.").wide(),
    Column::new("Node", "string", "Node the pod is bound to.").wide(),
    Column::new(
        "Nominated Node",
        "string",
        "Node the scheduler intends to place the pod on once preemption finishes.",
    )
    .wide(),
    Column::new(
        "Readiness Gates",
        "string",
        "Readiness gates whose conditions are true, out of those the pod declares.",
    )
    .wide(),
];

/// Node reason the node controller stamps on pods of an unreachable node.
const NODE_LOST: &str = "NodeLost";

/// Restart count plus the latest termination among the counted containers.
#[derive(Debug, Default, Clone, Copy)]
struct Restarts {
    count: i64,
    last: Option<i64>,
}

impl Restarts {
    fn add(&mut self, status: &Value) {
        self.count = self
            .count
            .saturating_add(int(status, &["restartCount"]).unwrap_or(0));
        if let Some(t) = timestamp(status, &["lastState", "terminated", "finishedAt"]) {
            if self.last.is_none_or(|last| t > last) {
                self.last = Some(t);
            }
        }
    }
}

/// One pod row: name, ready, status, restarts, age, then the wide cells.
pub(super) fn row(pod: &Value, now: i64) -> Row {
    let phase = text(pod, &["status", "phase"]);
    let conditions = list(pod, &["status", "conditions"]);
    let init_specs = list(pod, &["spec", "initContainers"]);

    let mut reason = match text(pod, &["status", "reason"]) {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    // Pods held back by scheduling gates say so instead of "Pending".
    if conditions
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    // Sidecars keep running next to the app containers, so they count
    // towards READY; ordinary init containers do not.
    let is_sidecar = |c: &Value| text(c, &["restartPolicy"]) == "Always";
    // Status entries find their spec by name; the last duplicate wins, as
    // with the Go map the printer builds.
    let sidecar_named = |n: &str| {
        init_specs
            .iter()
            .rev()
            .find(|c| text(c, &["name"]) == n)
            .is_some_and(is_sidecar)
    };
    let total = list(pod, &["spec", "containers"]).len()
        + init_specs.iter().filter(|c| is_sidecar(c)).count();
    let mut ready = 0usize;

    let mut restarts = Restarts::default();
    let mut sidecar_restarts = Restarts::default();
    let mut initializing = false;
    for (i, status) in list(pod, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        restarts.add(status);
        let sidecar = sidecar_named(text(status, &["name"]));
        if sidecar {
            sidecar_restarts.add(status);
        }
        let terminated = at(status, &["state", "terminated"]);
        let waiting_reason = text(status, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int(t, &["exitCode"]).unwrap_or(0) == 0) {
            continue; // finished successfully
        }
        if sidecar && flag(status, &["started"]) {
            if flag(status, &["ready"]) {
                ready += 1;
            }
            continue;
        }
        reason = if let Some(t) = terminated {
            format!("Init:{}", terminated_reason(t))
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }

    if !initializing || first_condition_true(conditions, "Initialized") {
        // Once initialised only sidecar restarts still matter from the init
        // phase; app containers are added on top.
        restarts = sidecar_restarts;
        let mut has_running = false;
        // Walk backwards so the first container's state wins ties, as kubectl shows.
        for status in list(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts.add(status);
            let waiting_reason = text(status, &["state", "waiting", "reason"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = at(status, &["state", "terminated"]) {
                reason = terminated_reason(t);
            } else if flag(status, &["ready"]) && at(status, &["state", "running"]).is_some() {
                has_running = true;
                ready += 1;
            }
        }
        // A container that completed next to others still running does
        // not make the whole pod "Completed".
        if reason == "Completed" && has_running {
            reason = if any_condition_true(conditions, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    if at(pod, &["metadata", "deletionTimestamp"]).is_some() {
        if text(pod, &["status", "reason"]) == NODE_LOST {
            reason = "Unknown".to_string();
        } else if phase != "Succeeded" && phase != "Failed" {
            // Finished pods keep their final status while being deleted.
            reason = "Terminating".to_string();
        }
    }

    let restarts_cell = match restarts.last {
        Some(last) if restarts.count != 0 => {
            format!("{} ({} ago)", restarts.count, since(Some(last), now))
        }
        _ => restarts.count.to_string(),
    };

    let mut row = Row::new(vec![
        name(pod),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell.into(),
        age(pod, now),
        pod_ip(pod).into(),
        or_none(text(pod, &["spec", "nodeName"])).into(),
        or_none(text(pod, &["status", "nominatedNodeName"])).into(),
        readiness_gates(pod, conditions).into(),
    ]);
    row.conditions = match phase {
        "Succeeded" => Some(completed("Succeeded", "The pod ran to completion.")),
        "Failed" => Some(completed("Failed", "The pod terminated in failure.")),
        _ => None,
    };
    row
}

/// A terminated state's reason, or `Signal:N` / `ExitCode:N` when the
/// runtime gave none.
fn terminated_reason(t: &Value) -> String {
    match text(t, &["reason"]) {
        "" => match int(t, &["signal"]).unwrap_or(0) {
            0 => format!("ExitCode:{}", int(t, &["exitCode"]).unwrap_or(0)),
            signal => format!("Signal:{signal}"),
        },
        reason => reason.to_string(),
    }
}

/// Whether any condition of type `ty` has status True.
fn any_condition_true(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .any(|c| text(c, &["type"]) == ty && text(c, &["status"]) == "True")
}

/// Whether the first condition of type `ty` has status True.
fn first_condition_true(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .find(|c| text(c, &["type"]) == ty)
        .is_some_and(|c| text(c, &["status"]) == "True")
}

/// The first pod IP; older objects may only carry the singular `podIP`.
fn pod_ip(pod: &Value) -> String {
    let ip = match list(pod, &["status", "podIPs"]).first() {
        Some(first) => text(first, &["ip"]),
        None => text(pod, &["status", "podIP"]),
    };
    or_none(ip)
}

/// `true/declared` for the pod's readiness gates, or `<none>`.
fn readiness_gates(pod: &Value, conditions: &[Value]) -> String {
    let gates = list(pod, &["spec", "readinessGates"]);
    if gates.is_empty() {
        return "<none>".to_string();
    }
    let passing = gates
        .iter()
        .filter(|g| first_condition_true(conditions, text(g, &["conditionType"])))
        .count();
    format!("{passing}/{}", gates.len())
}

/// The row condition marking a pod that will not run again.
fn completed(reason: &str, message: &str) -> Value {
    json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-11-28T08:51:37Z.
    const NOW: i64 = 1_795_855_897;

    fn cells(pod: &Value) -> Vec<Value> {
        row(pod, NOW).cells
    }

    fn running(name: &str, restarts: i64) -> Value {
        json!({"name": name, "ready": true, "restartCount": restarts,
               "state": {"running": {"startedAt": "2026-11-28T08:00:00Z"}}})
    }

    #[test]
    fn running_pod_with_restarts() {
        let mut c = running("app", 2);
        c["lastState"] =
            json!({"terminated": {"exitCode": 1, "finishedAt": "2026-11-28T08:46:37Z"}});
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2026-11-28T05:51:37Z"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [c]}
        });
        assert_eq!(
            cells(&pod),
            vec![
                json!("web-1"),
                json!("1/1"),
                json!("Running"),
                json!("2 (5m ago)"),
                json!("3h"),
                json!("10.0.0.5"),
                json!("node-a"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
        assert!(row(&pod, NOW).conditions.is_none());
    }

    #[test]
    fn restarts_without_termination_time_are_plain() {
        let pod = json!({"spec": {"containers": [{}]},
                         "status": {"phase": "Running", "containerStatuses": [running("a", 3)]}});
        assert_eq!(cells(&pod)[3], json!("3"));
    }

    #[test]
    fn crash_loop_back_off() {
        let pod = json!({
            "metadata": {"name": "crash"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-11-28T08:51:07Z"}}
            }]}
        });
        let c = cells(&pod);
        assert_eq!(c[1], json!("0/1"));
        assert_eq!(c[2], json!("CrashLoopBackOff"));
        assert_eq!(c[3], json!("4 (30s ago)"));
        assert_eq!(c[4], json!("<unknown>"));
    }

    #[test]
    fn waiting_and_terminated_reasons() {
        let status = |state: Value| {
            json!({"spec": {"containers": [{}]},
                   "status": {"phase": "Pending", "containerStatuses": [{"state": state}]}})
        };
        let image = status(json!({"waiting": {"reason": "ErrImagePull"}}));
        assert_eq!(cells(&image)[2], json!("ErrImagePull"));
        let creating = status(json!({"waiting": {"reason": "ContainerCreating"}}));
        assert_eq!(cells(&creating)[2], json!("ContainerCreating"));
        let oom = status(json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}}));
        assert_eq!(cells(&oom)[2], json!("OOMKilled"));
        let signal = status(json!({"terminated": {"signal": 9, "exitCode": 137}}));
        assert_eq!(cells(&signal)[2], json!("Signal:9"));
        let code = status(json!({"terminated": {"exitCode": 3}}));
        assert_eq!(cells(&code)[2], json!("ExitCode:3"));
        let bare_waiting = status(json!({"waiting": {}}));
        assert_eq!(cells(&bare_waiting)[2], json!("Pending"));
    }

    #[test]
    fn terminating_pod() {
        let pod = json!({
            "metadata": {"name": "old", "deletionTimestamp": "2026-11-28T08:51:00Z"},
            "spec": {"containers": [{}]},
            "status": {"phase": "Running", "containerStatuses": [running("a", 0)]}
        });
        assert_eq!(cells(&pod)[2], json!("Terminating"));

        let lost = json!({"metadata": {"deletionTimestamp": "2026-11-28T08:51:00Z"},
                          "status": {"phase": "Running", "reason": "NodeLost"}});
        assert_eq!(cells(&lost)[2], json!("Unknown"));

        let done = json!({"metadata": {"deletionTimestamp": "2026-11-28T08:51:00Z"},
                          "status": {"phase": "Succeeded"}});
        assert_eq!(cells(&done)[2], json!("Succeeded"));
    }

    #[test]
    fn init_progress_and_failures() {
        let pod = |init_state: Value| {
            json!({"spec": {"initContainers": [{"name": "setup"}], "containers": [{"name": "app"}]},
                   "status": {"phase": "Pending",
                              "initContainerStatuses": [{"name": "setup", "state": init_state}],
                              "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "PodInitializing"}}}]}})
        };
        let running = pod(json!({"running": {}}));
        assert_eq!(cells(&running)[1], json!("0/1"));
        assert_eq!(cells(&running)[2], json!("Init:0/1"));
        let initializing = pod(json!({"waiting": {"reason": "PodInitializing"}}));
        assert_eq!(cells(&initializing)[2], json!("Init:0/1"));
        let pull = pod(json!({"waiting": {"reason": "ImagePullBackOff"}}));
        assert_eq!(cells(&pull)[2], json!("Init:ImagePullBackOff"));
        let failed = pod(json!({"terminated": {"exitCode": 2}}));
        assert_eq!(cells(&failed)[2], json!("Init:ExitCode:2"));
        let killed = pod(json!({"terminated": {"exitCode": 137, "signal": 9}}));
        assert_eq!(cells(&killed)[2], json!("Init:Signal:9"));
        let reasoned = pod(json!({"terminated": {"exitCode": 1, "reason": "Error"}}));
        assert_eq!(cells(&reasoned)[2], json!("Init:Error"));
        // A finished init container hands over to the app containers.
        let done = pod(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}));
        assert_eq!(cells(&done)[2], json!("PodInitializing"));
    }

    #[test]
    fn init_restarts_count_only_while_initializing() {
        let pod = json!({
            "spec": {"initContainers": [{"name": "setup"}], "containers": [{"name": "app"}]},
            "status": {"phase": "Running",
                       "initContainerStatuses": [{"name": "setup", "restartCount": 5,
                                                  "state": {"terminated": {"exitCode": 0}}}],
                       "containerStatuses": [running("app", 1)]}
        });
        assert_eq!(cells(&pod)[3], json!("1"));
    }

    #[test]
    fn sidecars_count_towards_ready() {
        let pod = json!({
            "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
                     "containers": [{"name": "app"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Initialized", "status": "True"}],
                       "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true,
                                                  "restartCount": 1, "state": {"running": {}}}],
                       "containerStatuses": [running("app", 2)]}
        });
        let c = cells(&pod);
        assert_eq!(c[1], json!("2/2"));
        assert_eq!(c[2], json!("Running"));
        assert_eq!(c[3], json!("3"));
    }

    #[test]
    fn completed_container_next_to_running_one() {
        let base = |ready_condition: &str| {
            json!({"spec": {"containers": [{}, {}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": ready_condition}],
                       "containerStatuses": [
                           running("a", 0),
                           {"name": "b", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}
                       ]}})
        };
        assert_eq!(cells(&base("True"))[2], json!("Running"));
        assert_eq!(cells(&base("False"))[2], json!("NotReady"));
    }

    #[test]
    fn succeeded_and_failed_pods_carry_row_conditions() {
        let pod = json!({"status": {"phase": "Succeeded", "containerStatuses": [
            {"state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}});
        let r = row(&pod, NOW);
        assert_eq!(r.cells[2], json!("Completed"));
        assert_eq!(r.conditions.unwrap()[0]["reason"], json!("Succeeded"));
        let failed = json!({"status": {"phase": "Failed", "reason": "Evicted"}});
        let r = row(&failed, NOW);
        assert_eq!(r.cells[2], json!("Evicted"));
        assert_eq!(r.conditions.unwrap()[0]["type"], json!("Completed"));
    }

    #[test]
    fn scheduling_gated_and_wide_cells() {
        let pod = json!({
            "spec": {"readinessGates": [{"conditionType": "lb/ready"}, {"conditionType": "other"}]},
            "status": {"phase": "Pending", "nominatedNodeName": "node-b",
                       "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"},
                                      {"type": "lb/ready", "status": "True"}]}
        });
        let c = cells(&pod);
        assert_eq!(c[2], json!("SchedulingGated"));
        assert_eq!(
            c[5..],
            [
                json!("<none>"),
                json!("<none>"),
                json!("node-b"),
                json!("1/2")
            ]
        );
    }

    #[test]
    fn empty_pod_renders_zero_values() {
        assert_eq!(
            cells(&json!({})),
            vec![
                json!(""),
                json!("0/0"),
                json!(""),
                json!("0"),
                json!("<unknown>"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
    }
}
