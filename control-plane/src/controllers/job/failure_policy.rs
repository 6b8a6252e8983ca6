//! What a failed pod means under the Job's `podFailurePolicy`: the first
//! rule matching its containers' exit codes or its conditions decides
//! whether it fails the whole Job, is ignored, or counts against
//! `backoffLimit` (also what happens when no rule matches).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use serde_json::Value;

/// The verdict on one failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The Job fails at once; the message names the pod and the rule.
    FailJob(String),
    /// The failure is not counted and the pod is replaced without back-off.
    Ignore,
    /// The failure counts against `backoffLimit`.
    Count,
}

/// Judges the failed pod `pod` by `policy` (the Job's `spec.podFailurePolicy`, possibly null).
pub fn judge(policy: &Value, pod: &Pod) -> Verdict {
    let rules = policy["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let pod_name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    for (i, rule) in rules.iter().enumerate() {
        let action = rule["action"].as_str().unwrap_or("");
        let why = if let Some(codes) = rule.get("onExitCodes").filter(|v| !v.is_null()) {
            matching_container(pod, codes).map(|(name, code)| {
                format!("Container {name} for pod {pod_name} failed with exit code {code}")
            })
        } else {
            matching_condition(pod, &rule["onPodConditions"])
                .map(|ty| format!("Pod {pod_name} has condition {ty}"))
        };
        let Some(why) = why else { continue };
        return match action {
            "FailJob" => Verdict::FailJob(format!("{why} matching FailJob rule at index {i}")),
            "Ignore" => Verdict::Ignore,
            // Count, and FailIndex, which validation refuses, count as usual.
            _ => Verdict::Count,
        };
    }
    Verdict::Count
}

/// The first container (init containers first) that terminated with a
/// non-zero code the requirement selects, as (name, code).
fn matching_container(pod: &Pod, req: &Value) -> Option<(String, i32)> {
    let status = pod.status.as_ref()?;
    let wanted = req["containerName"].as_str();
    let values: Vec<i64> = req["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect();
    let listed = |code: i32| values.contains(&i64::from(code));
    let selects = |code: i32| match req["operator"].as_str() {
        Some("In") => listed(code),
        Some("NotIn") => !listed(code),
        _ => false,
    };
    let all: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    all.into_iter().find_map(|c| {
        let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
        // Exit code 0 is a container that succeeded; it never explains a failure.
        let named = wanted.is_none_or(|w| w == c.name);
        (named && code != 0 && selects(code)).then(|| (c.name.clone(), code))
    })
}

/// The type of the first of the pod's conditions one of `patterns` matches.
fn matching_condition(pod: &Pod, patterns: &Value) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    patterns.as_array()?.iter().find_map(|p| {
        let ty = p["type"].as_str()?;
        let want = p["status"].as_str().unwrap_or("True");
        conditions
            .iter()
            .any(|c| c.type_ == ty && c.status == want)
            .then(|| ty.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failed(exit: i32, conditions: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "work-x1", "namespace": "team"},
            "status": {"phase": "Failed", "conditions": conditions,
                "containerStatuses": [
                    {"name": "side", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0}}},
                    {"name": "main", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": exit}}}]}
        }))
        .expect("a pod")
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = json!({"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3, 42]}},
        ]});
        assert_eq!(judge(&policy, &failed(3, json!([]))), Verdict::Ignore);
        assert_eq!(
            judge(&policy, &failed(42, json!([]))),
            Verdict::FailJob(
                "Container main for pod team/work-x1 failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        assert_eq!(judge(&policy, &failed(1, json!([]))), Verdict::Count);
        assert_eq!(judge(&Value::Null, &failed(42, json!([]))), Verdict::Count);
    }

    #[test]
    fn not_in_never_matches_a_container_that_succeeded() {
        let policy = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "side", "operator": "NotIn", "values": [1]}},
            {"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
        ]});
        assert_eq!(judge(&policy, &failed(7, json!([]))), Verdict::Ignore);
        assert_eq!(judge(&policy, &failed(2, json!([]))), Verdict::Count);
    }

    #[test]
    fn conditions_match_by_type_and_status() {
        let policy = json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]});
        let evicted = failed(137, json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(judge(&policy, &evicted), Verdict::Ignore);
        let not = failed(
            137,
            json!([{"type": "DisruptionTarget", "status": "False"}]),
        );
        assert_eq!(judge(&policy, &not), Verdict::Count);
        let policy = json!({"rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]});
        assert_eq!(
            judge(&policy, &evicted),
            Verdict::FailJob(
                "Pod team/work-x1 has condition DisruptionTarget matching FailJob rule at index 0"
                    .into()
            )
        );
    }
}
