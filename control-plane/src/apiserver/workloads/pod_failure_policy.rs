//! Defaults and validation of a Job's `spec.podFailurePolicy`: rules that
//! say what a failed pod means (fail the Job, ignore it, or count it against
//! `backoffLimit`), chosen by its containers' exit codes or its conditions.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::apiserver::errors::Cause;

/// The most rules a policy may hold, and patterns or values a rule may list.
const MAX_RULES: usize = 20;
const MAX_PATTERNS: usize = 20;
const MAX_VALUES: usize = 255;

/// Fills in what upstream defaults: a condition pattern's status is `True`.
pub(crate) fn default(spec: &mut Value) {
    let Some(rules) = spec
        .pointer_mut("/podFailurePolicy/rules")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for pattern in rules
        .iter_mut()
        .filter_map(|r| r.get_mut("onPodConditions").and_then(Value::as_array_mut))
        .flatten()
    {
        if let Some(p) = pattern.as_object_mut() {
            if p.get("status").is_none_or(Value::is_null) {
                p.insert("status".into(), json!("True"));
            }
        }
    }
}

/// What the API server refuses in the `podFailurePolicy` of the Job spec
/// `spec`, whose fields are reported under `at` (`spec` for a Job,
/// `spec.jobTemplate.spec` for a CronJob).
pub(crate) fn validate(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let Some(policy) = spec.get("podFailurePolicy").filter(|p| !p.is_null()) else {
        return;
    };
    let path = format!("{at}.podFailurePolicy");
    // Under OnFailure the kubelet restarts a failed container in place, so
    // no pod ever fails for a rule to judge.
    if let Some(rp) = spec.pointer("/template/spec/restartPolicy") {
        if rp != "Never" {
            causes.push(Cause::invalid(
                format!("{at}.template.spec.restartPolicy"),
                rp,
                "only \"Never\" is supported when podFailurePolicy is set",
            ));
        }
    }
    let rules = match policy.get("rules") {
        Some(Value::Array(rules)) => rules,
        None | Some(Value::Null) => {
            causes.push(Cause::required(format!("{path}.rules")));
            return;
        }
        Some(other) => {
            causes.push(Cause::invalid(
                format!("{path}.rules"),
                other,
                "must be a list",
            ));
            return;
        }
    };
    if rules.len() > MAX_RULES {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: format!("{path}.rules"),
            message: format!(
                "Too many: {}: must have at most {MAX_RULES} items",
                rules.len()
            ),
        });
        return;
    }
    let containers: BTreeSet<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.pointer(&format!("/template/spec/{k}"))?.as_array())
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        check_rule(rule, &format!("{path}.rules[{i}]"), &containers, causes);
    }
}

fn check_rule(rule: &Value, path: &str, containers: &BTreeSet<&str>, causes: &mut Vec<Cause>) {
    match rule.get("action").filter(|a| !a.is_null()) {
        None => causes.push(Cause::required(format!("{path}.action"))),
        Some(a) => match a.as_str() {
            Some("FailJob" | "Ignore" | "Count") => {}
            // Failing one index needs a per-index back-off limit to count
            // against, which this server does not implement.
            Some("FailIndex") => causes.push(Cause::invalid(
                format!("{path}.action"),
                a,
                "FailIndex needs spec.backoffLimitPerIndex, which this server does not support",
            )),
            _ => causes.push(Cause::not_supported(
                format!("{path}.action"),
                a,
                &["Count", "FailIndex", "FailJob", "Ignore"],
            )),
        },
    }
    let exit_codes = rule.get("onExitCodes").filter(|v| !v.is_null());
    let conditions = rule.get("onPodConditions").filter(|v| !v.is_null());
    let no_conditions = conditions.is_none_or(|c| c.as_array().is_some_and(Vec::is_empty));
    match (exit_codes, no_conditions) {
        (Some(_), false) => causes.push(Cause::invalid(
            path,
            &json!("onExitCodes and onPodConditions"),
            "specify only one of onExitCodes and onPodConditions",
        )),
        (None, true) => causes.push(Cause::required_msg(
            path,
            "one of onExitCodes and onPodConditions",
        )),
        (Some(codes), true) => check_exit_codes(codes, path, containers, causes),
        (None, false) => {
            if let Some(c) = conditions {
                check_conditions(c, &format!("{path}.onPodConditions"), causes);
            }
        }
    }
}

fn check_exit_codes(
    codes: &Value,
    rule_path: &str,
    containers: &BTreeSet<&str>,
    causes: &mut Vec<Cause>,
) {
    let path = format!("{rule_path}.onExitCodes");
    if let Some(name) = codes.get("containerName").filter(|n| !n.is_null()) {
        if !name.as_str().is_some_and(|n| containers.contains(n)) {
            causes.push(Cause::invalid(
                format!("{path}.containerName"),
                name,
                "must be one of the container or initContainer names in the pod template",
            ));
        }
    }
    let operator = codes.get("operator").filter(|o| !o.is_null());
    match operator.map(|o| (o, o.as_str())) {
        None => causes.push(Cause::required(format!("{path}.operator"))),
        Some((_, Some("In" | "NotIn"))) => {}
        Some((o, _)) => causes.push(Cause::not_supported(
            format!("{path}.operator"),
            o,
            &["In", "NotIn"],
        )),
    }
    let is_in = operator.is_some_and(|o| o == "In");
    let values = match codes.get("values") {
        Some(Value::Array(v)) if !v.is_empty() => v,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            causes.push(Cause::required(format!("{path}.values")));
            return;
        }
        Some(other) => {
            causes.push(Cause::invalid(
                format!("{path}.values"),
                other,
                "must be a list",
            ));
            return;
        }
    };
    if values.len() > MAX_VALUES {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: format!("{path}.values"),
            message: format!(
                "Too many: {}: must have at most {MAX_VALUES} items",
                values.len()
            ),
        });
        return;
    }
    let mut previous: Option<i64> = None;
    for (j, v) in values.iter().enumerate() {
        let at = format!("{path}.values[{j}]");
        let Some(n) = v.as_i64().filter(|n| i32::try_from(*n).is_ok()) else {
            causes.push(Cause::invalid(at, v, "must be a 32-bit integer"));
            continue;
        };
        // Exit code 0 is success: a pod whose containers all exit 0 does
        // not fail, so an In rule on it could never apply.
        if is_in && n == 0 {
            causes.push(Cause::invalid(
                at.clone(),
                v,
                "must not be 0 for the In operator",
            ));
        }
        match previous {
            Some(p) if p == n => causes.push(Cause::duplicate(at, v)),
            Some(p) if p > n => causes.push(Cause::invalid(at, v, "must be ordered")),
            _ => {}
        }
        previous = Some(n);
    }
}

fn check_conditions(conditions: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(patterns) = conditions.as_array() else {
        causes.push(Cause::invalid(path, conditions, "must be a list"));
        return;
    };
    if patterns.len() > MAX_PATTERNS {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: path.to_string(),
            message: format!(
                "Too many: {}: must have at most {MAX_PATTERNS} items",
                patterns.len()
            ),
        });
        return;
    }
    for (j, p) in patterns.iter().enumerate() {
        let at = format!("{path}[{j}]");
        match p.get("type").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{at}.type"))),
            Some(t) if !crate::apiserver::validation::is_qualified_name(t) => causes.push(Cause::invalid(
                format!("{at}.type"),
                &p["type"],
                "must be a qualified name: alphanumerics, '-', '_' or '.', with an optional DNS prefix and '/'",
            )),
            Some(_) => {}
        }
        let status = p.get("status").cloned().unwrap_or(Value::Null);
        if !matches!(status.as_str(), Some("True" | "False" | "Unknown")) {
            causes.push(Cause::not_supported(
                format!("{at}.status"),
                &status,
                &["False", "True", "Unknown"],
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rules: Value) -> Value {
        json!({"podFailurePolicy": {"rules": rules},
               "template": {"spec": {"restartPolicy": "Never",
                   "containers": [{"name": "main", "image": "busybox"}]}}})
    }

    fn fields(s: &Value) -> Vec<String> {
        let mut causes = vec![];
        validate(s, "spec", &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn well_formed_rules_pass_and_pattern_status_defaults_to_true() {
        let mut s = spec(json!([
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [1, 42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}},
        ]));
        default(&mut s);
        assert_eq!(
            s.pointer("/podFailurePolicy/rules/1/onPodConditions/0/status"),
            Some(&json!("True"))
        );
        assert!(fields(&s).is_empty());
    }

    #[test]
    fn each_mistake_names_its_field() {
        let s = spec(json!([
            {"action": "Retry", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "other", "operator": "Is", "values": [0, 2, 2, 1]}},
            {"action": "Ignore"},
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]},
             "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailIndex", "onPodConditions": [{"type": "", "status": "Maybe"}]},
        ]));
        assert_eq!(
            fields(&s),
            [
                "spec.podFailurePolicy.rules[0].action",
                "spec.podFailurePolicy.rules[1].onExitCodes.containerName",
                "spec.podFailurePolicy.rules[1].onExitCodes.operator",
                "spec.podFailurePolicy.rules[1].onExitCodes.values[2]",
                "spec.podFailurePolicy.rules[1].onExitCodes.values[3]",
                "spec.podFailurePolicy.rules[2]",
                "spec.podFailurePolicy.rules[3]",
                "spec.podFailurePolicy.rules[4].action",
                "spec.podFailurePolicy.rules[4].onPodConditions[0].type",
                "spec.podFailurePolicy.rules[4].onPodConditions[0].status",
            ]
        );
    }

    #[test]
    fn zero_is_refused_only_with_in() {
        let s = spec(
            json!([{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 1]}}]),
        );
        assert_eq!(
            fields(&s),
            ["spec.podFailurePolicy.rules[0].onExitCodes.values[0]"]
        );
    }

    #[test]
    fn the_policy_needs_restart_policy_never() {
        let mut s = spec(json!([]));
        s["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        assert_eq!(fields(&s), ["spec.template.spec.restartPolicy"]);
        let mut causes = vec![];
        validate(&s, "spec.jobTemplate.spec", &mut causes);
        assert_eq!(
            causes[0].field,
            "spec.jobTemplate.spec.template.spec.restartPolicy"
        );
    }
}
