//! Defaults and validation of apps/v1 StatefulSets.

use serde_json::{json, Value};

use super::defaults::set_default;
use super::errors::Cause;

/// StatefulSet defaults: one replica, pods one after another, rolling
/// updates of every ordinal, claims kept.
pub fn default(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let Some(spec) = obj["spec"].as_object_mut() else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "minReadySeconds", json!(0));
    set_default(spec, "updateStrategy", json!({}));
    if let Some(st) = spec
        .get_mut("updateStrategy")
        .and_then(Value::as_object_mut)
    {
        set_default(st, "type", json!("RollingUpdate"));
        if st.get("type") == Some(&json!("RollingUpdate")) {
            set_default(st, "rollingUpdate", json!({}));
            if let Some(ru) = st.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                set_default(ru, "partition", json!(0));
            }
        }
    }
    set_default(spec, "persistentVolumeClaimRetentionPolicy", json!({}));
    if let Some(p) = spec
        .get_mut("persistentVolumeClaimRetentionPolicy")
        .and_then(Value::as_object_mut)
    {
        set_default(p, "whenDeleted", json!("Retain"));
        set_default(p, "whenScaled", json!("Retain"));
    }
    for t in spec
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        super::volumes::default_pvc(t);
        if t.get("status").is_none_or(Value::is_null) {
            t["status"] = json!({"phase": "Pending"});
        }
    }
    if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        super::defaults::pod_spec(ps);
    }
}

/// What the API server refuses in a StatefulSet.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    super::workloads::check_selector(&spec, "statefulset", causes);
    for field in ["replicas", "minReadySeconds", "revisionHistoryLimit"] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64).filter(|n| *n < 0) {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    super::workloads::check_long_running_template(&spec, causes);
    if let Some(p) = spec.get("podManagementPolicy") {
        if !matches!(p.as_str(), Some("OrderedReady" | "Parallel")) {
            causes.push(Cause::not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
    }
    if let Some(p) = spec
        .pointer("/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .filter(|p| *p < 0)
    {
        causes.push(Cause::invalid(
            "spec.updateStrategy.rollingUpdate.partition",
            &Value::from(p),
            "must be greater than or equal to 0",
        ));
    }
    for when in ["whenDeleted", "whenScaled"] {
        let path = format!("/persistentVolumeClaimRetentionPolicy/{when}");
        if let Some(v) = spec.pointer(&path) {
            if !matches!(v.as_str(), Some("Retain" | "Delete")) {
                causes.push(Cause::not_supported(
                    format!("spec.persistentVolumeClaimRetentionPolicy.{when}"),
                    v,
                    &["Delete", "Retain"],
                ));
            }
        }
    }
    let mut names = Vec::new();
    for (i, t) in spec
        .get("volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = t.pointer("/metadata/name").and_then(Value::as_str);
        let path = format!("spec.volumeClaimTemplates[{i}]");
        match name {
            None | Some("") => causes.push(Cause::required(format!("{path}.metadata.name"))),
            Some(n) if !super::validation::is_dns_label(n) => causes.push(Cause::invalid(
                format!("{path}.metadata.name"),
                &Value::from(n),
                "must be a lowercase RFC 1123 label",
            )),
            Some(n) if names.contains(&n) => causes.push(Cause::duplicate(
                format!("{path}.metadata.name"),
                &Value::from(n),
            )),
            Some(n) => names.push(n),
        }
        let mut inner = Vec::new();
        super::volumes::validate_pvc(t, &mut inner);
        causes.extend(inner.into_iter().map(|mut c| {
            c.field = format!("{path}.{}", c.field);
            c
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> Value {
        json!({"metadata": {"name": "web"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "serviceName": "web",
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"},
                            "spec": {"accessModes": ["ReadWriteOnce"],
                                     "resources": {"requests": {"storage": "1Gi"}}}}]}})
    }

    #[test]
    fn statefulsets_default_to_ordered_rolling_updates_keeping_claims() {
        let mut s = sts();
        default(&mut s);
        assert_eq!(s["spec"]["replicas"], 1);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(s["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);
        assert_eq!(
            s["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            s["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        let mut causes = Vec::new();
        validate(&s, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn bad_statefulsets_are_refused_naming_the_field() {
        let mut s = sts();
        s["spec"]["podManagementPolicy"] = json!("Random");
        s["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": -1}});
        s["spec"]["persistentVolumeClaimRetentionPolicy"] = json!({"whenScaled": "Keep"});
        s["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] = json!({});
        let mut causes = Vec::new();
        validate(&s, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.podManagementPolicy",
                "spec.updateStrategy.rollingUpdate.partition",
                "spec.persistentVolumeClaimRetentionPolicy.whenScaled",
                "spec.volumeClaimTemplates[0].spec.resources[storage]",
            ]
        );
    }
}
