//! Defaults and validation of batch/v1 CronJobs.

use apimachinery::cron::{names_time_zone, time_zone, Schedule};
use serde_json::{json, Value};

use super::defaults::set_default;
use super::errors::Cause;
use super::validation::validate_pod_spec;

/// Job names add eleven characters (`-` and the scheduled minute) to the
/// CronJob's, and must still fit a 63-character label value.
const MAX_NAME: usize = 52;

/// CronJob defaults: runs may overlap, three successful and one failed Job are kept.
pub fn default(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let Some(spec) = obj["spec"].as_object_mut() else {
        return;
    };
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(ps) = spec
        .get_mut("jobTemplate")
        .and_then(|t| t.get_mut("spec"))
        .and_then(|s| s.get_mut("template"))
        .and_then(|t| t.get_mut("spec"))
    {
        super::defaults::pod_spec(ps);
    }
    if let Some(js) = obj.pointer_mut("/spec/jobTemplate/spec") {
        super::workloads::pod_failure_policy::default(js);
    }
}

/// What the API server refuses in a CronJob.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.len() > MAX_NAME {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            format!("must be no more than {MAX_NAME} characters"),
        ));
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match spec.get("schedule") {
        None | Some(Value::Null) => causes.push(Cause::required("spec.schedule")),
        Some(v) => match v.as_str() {
            Some(s) if names_time_zone(s) => causes.push(Cause::invalid(
                "spec.schedule",
                v,
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            )),
            Some(s) => {
                if let Err(e) = Schedule::parse(s) {
                    causes.push(Cause::invalid("spec.schedule", v, e));
                }
            }
            None => causes.push(Cause::invalid("spec.schedule", v, "must be a string")),
        },
    }
    if let Some(tz) = spec.get("timeZone").filter(|v| !v.is_null()) {
        if let Err(e) = time_zone(tz.as_str().unwrap_or("")) {
            causes.push(Cause::invalid("spec.timeZone", tz, e));
        }
    }
    if let Some(p) = spec.get("concurrencyPolicy") {
        if !matches!(p.as_str(), Some("Allow" | "Forbid" | "Replace")) {
            causes.push(Cause::not_supported(
                "spec.concurrencyPolicy",
                p,
                &["Allow", "Forbid", "Replace"],
            ));
        }
    }
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64).filter(|n| *n < 0) {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                &json!(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    match spec.pointer("/jobTemplate/spec/template/spec") {
        Some(ps) => {
            validate_pod_spec(ps, "spec.jobTemplate.spec.template.spec", causes);
            let rp = ps.get("restartPolicy").cloned().unwrap_or(Value::Null);
            if !matches!(rp.as_str(), Some("OnFailure" | "Never")) {
                causes.push(Cause::not_supported(
                    "spec.jobTemplate.spec.template.spec.restartPolicy",
                    &rp,
                    &["OnFailure", "Never"],
                ));
            }
        }
        None => causes.push(Cause::required(
            "spec.jobTemplate.spec.template.spec.containers",
        )),
    }
    if let Some(js) = spec.pointer("/jobTemplate/spec") {
        super::workloads::pod_failure_policy::validate(js, "spec.jobTemplate.spec", causes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cronjob(spec: Value) -> Value {
        let mut obj = json!({"metadata": {"name": "hello"}, "spec": spec});
        default(&mut obj);
        obj
    }

    fn template() -> Value {
        json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": "busybox"}]}}}})
    }

    fn fields(obj: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(obj, &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn defaults_match_upstream() {
        let obj = cronjob(json!({"schedule": "* * * * *", "jobTemplate": template()}));
        assert_eq!(obj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(obj["spec"]["suspend"], false);
        assert_eq!(obj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(obj["spec"]["failedJobsHistoryLimit"], 1);
        assert!(fields(&obj).is_empty(), "{:?}", fields(&obj));
    }

    #[test]
    fn each_bad_field_is_named() {
        let bad = cronjob(json!({"schedule": "61 * * * *", "jobTemplate": template(),
            "timeZone": "Mars/Olympus", "concurrencyPolicy": "Sometimes",
            "startingDeadlineSeconds": -1}));
        assert_eq!(
            fields(&bad),
            [
                "spec.schedule",
                "spec.timeZone",
                "spec.concurrencyPolicy",
                "spec.startingDeadlineSeconds"
            ]
        );
        let tz = cronjob(json!({"schedule": "TZ=UTC * * * * *", "jobTemplate": template()}));
        assert_eq!(fields(&tz), ["spec.schedule"]);
        let always = cronjob(json!({"schedule": "@daily", "jobTemplate":
            {"spec": {"template": {"spec": {"restartPolicy": "Always",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}));
        assert_eq!(
            fields(&always),
            ["spec.jobTemplate.spec.template.spec.restartPolicy"]
        );
        let mut long = cronjob(json!({"schedule": "@daily", "jobTemplate": template()}));
        long["metadata"]["name"] = json!("x".repeat(53));
        assert_eq!(fields(&long), ["metadata.name"]);
        assert_eq!(
            fields(&cronjob(json!({"jobTemplate": template()}))),
            ["spec.schedule"]
        );
    }
}
