//! The rules of ephemeral containers: they come only through
//! `pods/ephemeralcontainers`, are only ever added, and have none of what
//! only regular containers have.

use serde_json::Value;

use super::str_at;
use crate::apiserver::errors::{ApiError, ApiResult, Cause};

/// Ephemeral containers only come through `pods/ephemeralcontainers`,
/// into a pod that exists.
pub fn no_ephemeral_on_create(pod: &Value) -> ApiResult<()> {
    let set = pod
        .pointer("/spec/ephemeralContainers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !set {
        return Ok(());
    }
    Err(ApiError::invalid(
        "Pod",
        "",
        str_at(pod, &["metadata", "name"]).unwrap_or(""),
        vec![Cause::forbidden(
            "spec.ephemeralContainers",
            "cannot be set on create",
        )],
    ))
}

/// What an update through `pods/ephemeralcontainers` may do: add
/// ephemeral containers, never change or remove one, and give the new ones
/// none of what only regular containers have (ports, probes, lifecycle,
/// resources). `old` and `new` are whole pods.
pub fn validate_ephemeral_update(old: &Value, new: &Value) -> ApiResult<()> {
    let list = |v: &Value| -> Vec<Value> {
        v.pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (list(old), list(new));
    let name_of = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut causes = Vec::new();
    for c in &before {
        let name = name_of(c);
        match after.iter().find(|n| name_of(n) == name) {
            None => causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                format!("existing ephemeral containers {name:?} may not be removed"),
            )),
            Some(n) if n != c => causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                format!("existing ephemeral containers {name:?} may not be changed"),
            )),
            Some(_) => {}
        }
    }
    let regular: Vec<String> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| new.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten()
        .map(name_of)
        .collect();
    let set = |v: Option<&Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    for (i, c) in after.iter().enumerate() {
        if before.iter().any(|b| name_of(b) == name_of(c)) {
            continue;
        }
        let p = format!("spec.ephemeralContainers[{i}]");
        for field in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "resources",
            "resizePolicy",
            "restartPolicy",
        ] {
            if set(c.get(field)) {
                causes.push(Cause::forbidden(
                    format!("{p}.{field}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(t) = c.get("targetContainerName").and_then(Value::as_str) {
            if !t.is_empty() && !regular.iter().any(|n| n == t) {
                causes.push(Cause {
                    reason: "FieldValueNotFound",
                    field: format!("{p}.targetContainerName"),
                    message: format!("Not found: {t:?}"),
                });
            }
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        "Pod",
        "",
        str_at(new, &["metadata", "name"]).unwrap_or(""),
        causes,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::validate_pod_spec;
    use super::*;
    use serde_json::json;

    fn pod(ephemeral: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "main", "image": "busybox"}],
            "ephemeralContainers": ephemeral,
        }})
    }

    fn fields(r: ApiResult<()>) -> String {
        let e = r.expect_err("refused");
        assert_eq!(e.code, 422);
        e.message
    }

    #[test]
    fn ephemeral_containers_are_only_added() {
        let one = json!([{"name": "dbg", "image": "busybox"}]);
        let two = json!([{"name": "dbg", "image": "busybox"}, {"name": "b", "image": "busybox", "targetContainerName": "main"}]);
        assert!(validate_ephemeral_update(&pod(json!(null)), &pod(one.clone())).is_ok());
        assert!(validate_ephemeral_update(&pod(one.clone()), &pod(two.clone())).is_ok());
        let m = fields(validate_ephemeral_update(
            &pod(two.clone()),
            &pod(one.clone()),
        ));
        assert!(m.contains("spec.ephemeralContainers: Forbidden: existing ephemeral containers \"b\" may not be removed"), "{m}");
        let changed = json!([{"name": "dbg", "image": "alpine"}]);
        let m = fields(validate_ephemeral_update(&pod(one.clone()), &pod(changed)));
        assert!(m.contains("may not be changed"), "{m}");
    }

    #[test]
    fn new_ephemeral_containers_have_no_ports_probes_or_resources() {
        let bad = json!([{"name": "dbg", "image": "busybox", "ports": [{"containerPort": 80}],
            "readinessProbe": {"exec": {"command": ["true"]}}, "resources": {"limits": {"cpu": "1"}},
            "targetContainerName": "nope"}]);
        let m = fields(validate_ephemeral_update(&pod(json!(null)), &pod(bad)));
        for f in [
            "[0].ports",
            "[0].readinessProbe",
            "[0].resources",
            "[0].targetContainerName: Not found",
        ] {
            assert!(
                m.contains(&format!("spec.ephemeralContainers{f}")),
                "{f}: {m}"
            );
        }
        // What kubectl sends and defaulting adds is not "set".
        let ok = json!([{"name": "dbg", "image": "busybox", "resources": {}, "ports": []}]);
        assert!(validate_ephemeral_update(&pod(json!(null)), &pod(ok)).is_ok());
    }

    #[test]
    fn names_are_unique_across_all_containers_and_none_on_create() {
        let mut causes = Vec::new();
        let p = pod(json!([{"name": "main", "image": "busybox"}]));
        validate_pod_spec(&p["spec"], "spec", &mut causes);
        assert!(
            causes
                .iter()
                .any(|c| c.field == "spec.ephemeralContainers[0].name"
                    && c.reason == "FieldValueDuplicate"),
            "{causes:?}"
        );
        let m = fields(no_ephemeral_on_create(&pod(
            json!([{"name": "x", "image": "busybox"}]),
        )));
        assert!(m.contains("cannot be set on create"), "{m}");
        assert!(no_ephemeral_on_create(&pod(json!(null))).is_ok());
    }
}
