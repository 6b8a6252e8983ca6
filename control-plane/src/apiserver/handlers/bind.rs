//! The pods/binding subresource (and the bindings collection) the
//! scheduler assigns pods with.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{json_response, now_rfc3339, read, storage_err};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::Target;
use crate::apiserver::storage::StorageError;
use crate::apiserver::State;

/// POST pods/NAME/binding (or bindings): assigns a pod to a node once.
pub async fn bind(state: &State, target: &Target, body: Value) -> ApiResult<Response> {
    let pod_name = target
        .name
        .clone()
        .or_else(|| {
            body.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or_else(|| ApiError::bad_request("binding has no name"))?;
    let node = body
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Binding",
                "",
                &pod_name,
                vec![crate::apiserver::errors::Cause::required("target.name")],
            )
        })?
        .to_string();
    let pods = crate::apiserver::resources::find("", "v1", "pods").expect("pods are served");
    let t = Target {
        res: pods,
        namespace: target.namespace.clone(),
        name: Some(pod_name.clone()),
        sub: None,
    };
    for _ in 0..5 {
        let current = read(state, &t).await?;
        let mut pod = current.value.clone();
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict_msg(
                "pods",
                &pod_name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(existing) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict_msg(
                "pods",
                &pod_name,
                &format!("pod {pod_name} is already assigned to node {existing:?}"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
        let conds = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conds.push(cond);
        pod["status"]["conditions"] = json!(conds);
        match state
            .storage
            .update(&t.key(), &pod, current.rev, &[], &[])
            .await
        {
            Ok(_) => {
                return Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            Err(StorageError::Conflict) => continue,
            Err(e) => return Err(storage_err(e, &t)),
        }
    }
    Err(ApiError::conflict("pods", &pod_name))
}
