//! HorizontalPodAutoscaler (autoscaling/v2): defaults and validation as
//! upstream's, for the fields the controller reads.

use serde_json::{json, Value};

use super::errors::Cause;

/// What autoscaling/v2 defaults: one replica at least, and 80% CPU when no
/// metric is given.
pub fn default(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("minReplicas").is_none_or(Value::is_null) {
        spec.insert("minReplicas".into(), json!(1));
    }
    if spec
        .get("metrics")
        .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty))
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
}

const TYPES: &[&str] = &[
    "Resource",
    "Pods",
    "Object",
    "External",
    "ContainerResource",
];
const TARGETS: &[&str] = &["Utilization", "Value", "AverageValue"];

pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let target = &spec["scaleTargetRef"];
    if target.is_null() {
        causes.push(Cause::required("spec.scaleTargetRef"));
    } else {
        for field in ["kind", "name"] {
            if target[field].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("spec.scaleTargetRef.{field}")));
            }
        }
    }
    let max = spec["maxReplicas"].as_i64();
    match max {
        None => causes.push(Cause::required("spec.maxReplicas")),
        Some(m) if m < 1 => causes.push(Cause::invalid(
            "spec.maxReplicas",
            &spec["maxReplicas"],
            "must be greater than or equal to 1",
        )),
        _ => {}
    }
    if let Some(min) = spec["minReplicas"].as_i64() {
        if min < 1 {
            causes.push(Cause::invalid(
                "spec.minReplicas",
                &spec["minReplicas"],
                "must be greater than or equal to 1",
            ));
        } else if max.is_some_and(|m| min > m) {
            causes.push(Cause::invalid(
                "spec.maxReplicas",
                &spec["maxReplicas"],
                "must be greater than or equal to `minReplicas`",
            ));
        }
    }
    for (i, m) in spec["metrics"].as_array().into_iter().flatten().enumerate() {
        let at = format!("spec.metrics[{i}]");
        let ty = m["type"].as_str().unwrap_or("");
        if !TYPES.contains(&ty) {
            causes.push(Cause::not_supported(
                format!("{at}.type"),
                &m["type"],
                TYPES,
            ));
            continue;
        }
        if ty != "Resource" && ty != "ContainerResource" {
            continue;
        }
        let source = if ty == "Resource" {
            "resource"
        } else {
            "containerResource"
        };
        let r = &m[source];
        if r.is_null() {
            causes.push(Cause::required(format!("{at}.{source}")));
            continue;
        }
        if r["name"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("{at}.{source}.name")));
        }
        let t = &r["target"];
        match t["type"].as_str() {
            Some("Utilization") => match t["averageUtilization"].as_i64() {
                Some(u) if u > 0 => {}
                Some(_) => causes.push(Cause::invalid(
                    format!("{at}.{source}.target.averageUtilization"),
                    &t["averageUtilization"],
                    "must be greater than 0",
                )),
                None => causes.push(Cause::required_msg(
                    format!("{at}.{source}.target.averageUtilization"),
                    "must set either a target raw value or a target utilization",
                )),
            },
            Some(ty) if TARGETS.contains(&ty) => {}
            _ => causes.push(Cause::not_supported(
                format!("{at}.{source}.target.type"),
                &t["type"],
                TARGETS,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: Value) -> Value {
        let mut o = json!({"metadata": {"name": "web"}, "spec": spec});
        default(&mut o);
        o
    }

    fn fields(o: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(o, &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn defaults_and_validation_name_the_field() {
        let ok =
            hpa(json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3}));
        assert_eq!(ok["spec"]["minReplicas"], 1);
        assert_eq!(
            ok["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert!(fields(&ok).is_empty());
        let bad = hpa(
            json!({"scaleTargetRef": {"kind": "Deployment"}, "minReplicas": 4, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}},
                        {"type": "Nope"}]}),
        );
        assert_eq!(
            fields(&bad),
            [
                "spec.scaleTargetRef.name",
                "spec.maxReplicas",
                "spec.metrics[0].resource.target.averageUtilization",
                "spec.metrics[1].type"
            ]
        );
        assert_eq!(
            fields(&json!({"spec": {}})),
            ["spec.scaleTargetRef", "spec.maxReplicas"]
        );
    }
}
