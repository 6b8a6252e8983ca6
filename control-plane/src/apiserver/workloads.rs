//! Defaults and validation of the run-to-completion and per-node
//! workloads: batch/v1 Jobs and apps/v1 DaemonSets.

use serde_json::{json, Map, Value};

use super::defaults::set_default;
use super::errors::Cause;
use super::validation::validate_pod_spec;

pub(super) mod pod_failure_policy;

/// Label and selector key naming the Job that owns a pod (by uid).
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// Label naming the Job that owns a pod (by name).
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

/// Job defaults, and (unless `manualSelector` is true) the generated
/// selector: the Job's uid, which no other Job's pods can carry.
pub fn default_job(obj: &mut Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let Some(spec) = obj["spec"].as_object_mut() else {
        return;
    };
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "manualSelector", json!(false));
    // With a failure policy a pod is judged only once it has failed, so
    // its replacement waits for that too.
    if spec.get("podFailurePolicy").is_none_or(Value::is_null) {
        set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    } else {
        set_default(spec, "podReplacementPolicy", json!("Failed"));
    }
    let manual = spec.get("manualSelector") == Some(&json!(true));
    if !manual && !uid.is_empty() && spec.get("selector").is_none_or(Value::is_null) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {CONTROLLER_UID: uid}}),
        );
        let template = spec.entry("template").or_insert_with(|| json!({}));
        if !template.get("metadata").is_some_and(Value::is_object) {
            template["metadata"] = json!({});
        }
        let meta = &mut template["metadata"];
        if !meta.get("labels").is_some_and(Value::is_object) {
            meta["labels"] = json!({});
        }
        if let Some(labels) = meta["labels"].as_object_mut() {
            // The unprefixed pair is what older clients select on.
            labels.insert(CONTROLLER_UID.into(), json!(uid));
            labels.insert(JOB_NAME.into(), json!(name));
            labels.insert("controller-uid".into(), json!(uid));
            labels.insert("job-name".into(), json!(name));
        }
    }
    if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        super::defaults::pod_spec(ps);
    }
    pod_failure_policy::default(&mut obj["spec"]);
    // A Job without labels of its own is labelled like its pods.
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    let own = obj["metadata"].get("labels").and_then(Value::as_object);
    if own.is_none_or(Map::is_empty) {
        if let Some(l) = template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
            obj["metadata"]["labels"] = l;
        }
    }
}

/// DaemonSet defaults: a rolling update one node at a time.
pub fn default_daemonset(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let Some(spec) = obj["spec"].as_object_mut() else {
        return;
    };
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "updateStrategy", json!({}));
    if let Some(st) = spec
        .get_mut("updateStrategy")
        .and_then(Value::as_object_mut)
    {
        set_default(st, "type", json!("RollingUpdate"));
        if st.get("type") == Some(&json!("RollingUpdate")) {
            set_default(st, "rollingUpdate", json!({}));
            if let Some(ru) = st.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                set_default(ru, "maxUnavailable", json!(1));
                set_default(ru, "maxSurge", json!(0));
            }
        }
    }
    if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        super::defaults::pod_spec(ps);
    }
}

fn non_negative(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = spec.get(field).and_then(Value::as_i64) {
        if n < 0 {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// The selector is required and must select the template's labels.
pub(super) fn check_selector(spec: &Value, what: &str, causes: &mut Vec<Cause>) {
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) else {
        causes.push(Cause::required("spec.selector"));
        return;
    };
    let ml = sel.get("matchLabels").and_then(Value::as_object);
    let me = sel.get("matchExpressions").and_then(Value::as_array);
    if ml.is_none_or(Map::is_empty) && me.is_none_or(Vec::is_empty) {
        causes.push(Cause::invalid(
            "spec.selector",
            sel,
            format!("empty selector is invalid for {what}"),
        ));
        return;
    }
    let matches = apimachinery::selectors::LabelSelector::from_json(sel)
        .map(|s| s.matches(Some(&template_labels)))
        .unwrap_or(false);
    if !matches {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &Value::Object(template_labels),
            "`selector` does not match template `labels`",
        ));
    }
}

/// What the API server refuses in a Job.
pub fn validate_job(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(&spec, field, causes);
    }
    if let Some(n) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if n <= 0 {
            causes.push(Cause::invalid(
                "spec.activeDeadlineSeconds",
                &Value::from(n),
                "must be greater than 0",
            ));
        }
    }
    let mode = spec
        .get("completionMode")
        .cloned()
        .unwrap_or(json!("NonIndexed"));
    match mode.as_str() {
        Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.get("completions").is_none_or(Value::is_null) {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    field: "spec.completions".into(),
                    message: "Required value: when completion mode is Indexed".into(),
                });
            }
        }
        _ => causes.push(Cause::not_supported(
            "spec.completionMode",
            &mode,
            &["Indexed", "NonIndexed"],
        )),
    }
    check_selector(&spec, "job", causes);
    if spec.get("manualSelector") != Some(&json!(true)) {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
        let generated = json!({"matchLabels": {CONTROLLER_UID: uid}});
        if let Some(sel) = spec.get("selector").filter(|s| !s.is_null()) {
            if !uid.is_empty() && *sel != generated {
                causes.push(Cause::invalid(
                    "spec.selector",
                    sel,
                    "`selector` not auto-generated",
                ));
            }
        }
    }
    match spec.pointer("/template/spec") {
        Some(ps) => {
            validate_pod_spec(ps, "spec.template.spec", causes);
            let rp = ps.get("restartPolicy").cloned().unwrap_or(Value::Null);
            if !matches!(rp.as_str(), Some("OnFailure" | "Never")) {
                causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    &rp,
                    &["OnFailure", "Never"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
    pod_failure_policy::validate(&spec, "spec", causes);
}

/// The pod template and update strategy type of a kind whose pods run for
/// good (DaemonSets and StatefulSets): restartPolicy Always only, and
/// RollingUpdate or OnDelete.
pub(super) fn check_long_running_template(spec: &Value, causes: &mut Vec<Cause>) {
    match spec.pointer("/template/spec") {
        Some(ps) => {
            validate_pod_spec(ps, "spec.template.spec", causes);
            if let Some(rp) = ps.get("restartPolicy") {
                if rp != "Always" {
                    causes.push(Cause::not_supported(
                        "spec.template.spec.restartPolicy",
                        rp,
                        &["Always"],
                    ));
                }
            }
        }
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
    if let Some(t) = spec.pointer("/updateStrategy/type") {
        if !matches!(t.as_str(), Some("RollingUpdate" | "OnDelete")) {
            causes.push(Cause::not_supported(
                "spec.updateStrategy.type",
                t,
                &["OnDelete", "RollingUpdate"],
            ));
        }
    }
}

/// What the API server refuses in a DaemonSet.
pub fn validate_daemonset(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    check_selector(&spec, "daemonset", causes);
    check_long_running_template(&spec, causes);
}

/// What the API server refuses in a ControllerRevision.
pub fn validate_revision(obj: &Value, causes: &mut Vec<Cause>) {
    match obj.get("revision") {
        Some(n) if n.as_i64().is_some_and(|n| n >= 0) => {}
        Some(n) => causes.push(Cause::invalid(
            "revision",
            n,
            "must be greater than or equal to 0",
        )),
        None => causes.push(Cause::required("revision")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Value {
        json!({"metadata": {"name": "pi", "uid": "u-1"},
               "spec": {"template": {"spec": {"restartPolicy": "Never",
                   "containers": [{"name": "pi", "image": "busybox"}]}}}})
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn a_bare_job_gets_upstream_defaults_and_a_generated_selector() {
        let mut j = job();
        default_job(&mut j);
        let s = &j["spec"];
        assert_eq!(
            (&s["completions"], &s["parallelism"], &s["backoffLimit"]),
            (&json!(1), &json!(1), &json!(6))
        );
        assert_eq!(s["completionMode"], "NonIndexed");
        assert_eq!(s["manualSelector"], false);
        assert_eq!(
            s["selector"],
            json!({"matchLabels": {CONTROLLER_UID: "u-1"}})
        );
        let labels = &s["template"]["metadata"]["labels"];
        assert_eq!(labels[JOB_NAME], "pi");
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        assert_eq!(j["metadata"]["labels"], *labels);
        let mut causes = vec![];
        validate_job(&j, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn parallelism_alone_leaves_completions_unset() {
        let mut j = job();
        j["spec"]["parallelism"] = json!(3);
        default_job(&mut j);
        assert!(j["spec"].get("completions").is_none());
    }

    #[test]
    fn job_validation_names_the_field() {
        let mut j = job();
        j["spec"]["backoffLimit"] = json!(-1);
        j["spec"]["completionMode"] = json!("Indexed");
        j["spec"]["parallelism"] = json!(2);
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        default_job(&mut j);
        let mut causes = vec![];
        validate_job(&j, &mut causes);
        assert_eq!(
            fields(&causes),
            [
                "spec.backoffLimit",
                "spec.completions",
                "spec.template.spec.restartPolicy"
            ]
        );
    }

    #[test]
    fn a_hand_written_selector_needs_manual_selector() {
        let mut j = job();
        j["spec"]["selector"] = json!({"matchLabels": {"app": "x"}});
        j["spec"]["template"]["metadata"] = json!({"labels": {"app": "x"}});
        default_job(&mut j);
        let mut causes = vec![];
        validate_job(&j, &mut causes);
        assert_eq!(fields(&causes), ["spec.selector"]);
        j["spec"]["manualSelector"] = json!(true);
        causes.clear();
        validate_job(&j, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn daemonsets_default_to_one_node_at_a_time_and_refuse_bad_strategies() {
        let mut ds = json!({"metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "a"}},
                                  "spec": {"containers": [{"name": "a", "image": "busybox"}]}}}});
        default_daemonset(&mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        let mut causes = vec![];
        validate_daemonset(&ds, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        ds["spec"]["updateStrategy"] = json!({"type": "Recreate"});
        ds["spec"]["template"]["metadata"]["labels"] = json!({"app": "b"});
        validate_daemonset(&ds, &mut causes);
        assert_eq!(
            fields(&causes),
            ["spec.template.metadata.labels", "spec.updateStrategy.type"]
        );
    }
}
