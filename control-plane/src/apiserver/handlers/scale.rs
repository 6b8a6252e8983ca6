//! The /scale subresource: the autoscaling/v1 Scale view of a workload
//! and writes of its replica count.

use apimachinery::selectors::LabelSelector;
use axum::response::Response;
use serde_json::{json, Value};

use super::update::{prepare_update, store_update};
use super::{json_response, read};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target};
use crate::apiserver::State;

pub(super) fn scale_replicas(scale: &Value) -> ApiResult<i64> {
    let r = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if r < 0 {
        return Err(ApiError::invalid(
            "Scale",
            "autoscaling",
            scale
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
            vec![crate::apiserver::errors::Cause::invalid(
                "spec.replicas",
                &json!(r),
                "must be greater than or equal to 0",
            )],
        ));
    }
    Ok(r)
}

/// Where the replica counts and selector live: fixed for built-in
/// workloads, named by the CRD for custom ones.
fn paths(target: &Target) -> crate::apiserver::crd::ScalePaths {
    crate::apiserver::crd::scale_paths(target.res).unwrap_or_else(|| {
        crate::apiserver::crd::ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        }
    })
}

/// Writes the desired replica count at the resource's spec path, making
/// the objects on the way.
pub(super) fn set_replicas(target: &Target, obj: &mut Value, replicas: i64) {
    let path = paths(target).spec_replicas;
    let mut cur = obj;
    for part in path.trim_start_matches('/').split('/') {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = &mut cur[part];
    }
    *cur = json!(replicas);
}

/// The autoscaling/v1 Scale view of a workload.
pub fn scale_of(target: &Target, obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let p = paths(target);
    if crate::apiserver::crd::scale_paths(target.res).is_some() {
        let selector = p
            .label_selector
            .as_deref()
            .and_then(|s| obj.pointer(s))
            .and_then(Value::as_str)
            .unwrap_or("");
        return json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": obj.pointer(&p.spec_replicas).cloned().unwrap_or(json!(0))},
            "status": {"replicas": obj.pointer(&p.status_replicas).cloned().unwrap_or(json!(0)), "selector": selector},
        });
    }
    let selector = match obj.pointer("/spec/selector") {
        Some(Value::Object(m))
            if m.contains_key("matchLabels") || m.contains_key("matchExpressions") =>
        {
            LabelSelector::from_json(&obj["spec"]["selector"])
                .map(|s| s.to_string())
                .unwrap_or_default()
        }
        Some(Value::Object(m)) => LabelSelector::from_map(m).to_string(),
        _ => String::new(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

pub(super) async fn update_scale(
    state: &State,
    target: &Target,
    query: &Query,
    body: Value,
) -> ApiResult<Response> {
    let current = read(state, target).await?;
    if let Some(rv) = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        if !rv.is_empty() && rv != current.rev.to_string() {
            return Err(ApiError::conflict(
                target.res.plural,
                target.name.as_deref().unwrap_or(""),
            ));
        }
    }
    let replicas = scale_replicas(&body)?;
    let mut new = current.value.clone();
    set_replicas(target, &mut new, replicas);
    let mut t = target.clone();
    t.sub = None;
    let mut new = prepare_update(&t, &current.value, new)?;
    crate::apiserver::fieldmanager::on_update(target, query, &current.value, &mut new)?;
    let (v, code) = store_update(state, &t, &current, new, query.dry_run()?).await?;
    Ok(json_response(code, &scale_of(target, &v)))
}
