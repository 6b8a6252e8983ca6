//! TokenRequest (`serviceaccounts/NAME/token`): a signed token for a
//! ServiceAccount, optionally bound to a pod so that it dies with it.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::json_response;
use crate::apiserver::errors::{ApiError, ApiResult, Cause};
use crate::apiserver::request::Target;
use crate::apiserver::State;

/// Lifetime when the request names none.
const DEFAULT_SECONDS: i64 = 3600;
/// Shortest lifetime granted: shorter tokens would be refreshed too often
/// to be worth it.
const MIN_SECONDS: i64 = 600;
/// Longest lifetime granted.
const MAX_SECONDS: i64 = 48 * 3600;

async fn read(state: &State, key: &str) -> ApiResult<Option<Value>> {
    Ok(state
        .storage
        .get(key)
        .await
        .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))?
        .map(|s| s.value))
}

fn invalid(name: &str, field: &str, value: &Value, detail: &str) -> ApiError {
    ApiError::invalid(
        "TokenRequest",
        "authentication.k8s.io",
        name,
        vec![Cause::invalid(field, value, detail)],
    )
}

/// POST `serviceaccounts/NAME/token`.
pub async fn create(state: &State, target: &Target, body: Value) -> ApiResult<Response> {
    let ns = target.namespace.as_deref().unwrap_or("default");
    let name = target.name.as_deref().unwrap_or("");
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let Some(sa) = read(state, &format!("/registry/serviceaccounts/{ns}/{name}")).await? else {
        return Err(ApiError::not_found("serviceaccounts", name));
    };
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_SECONDS,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid(name, "spec.expirationSeconds", v, "must be an integer"))?,
    };
    if seconds < MIN_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &json!(seconds),
            "may not specify a duration less than 10 minutes",
        ));
    }
    let seconds = seconds.min(MAX_SECONDS);
    let issuer = &state.config.service_account_issuer;
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![issuer.clone()]);

    let sa_uid = sa.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    let mut k8s = json!({
        "namespace": ns,
        "serviceaccount": {"name": name, "uid": sa_uid},
    });
    let mut bound_node: Option<String> = None;
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    if let Some(b) = bound {
        let kind = b.get("kind").and_then(Value::as_str).unwrap_or("");
        let obj_name = b.get("name").and_then(Value::as_str).unwrap_or("");
        if kind != "Pod" {
            return Err(invalid(
                name,
                "spec.boundObjectRef.kind",
                &json!(kind),
                "tokens can be bound only to a Pod",
            ));
        }
        let pod = read(state, &format!("/registry/pods/{ns}/{obj_name}"))
            .await?
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .ok_or_else(|| ApiError::not_found("pods", obj_name))?;
        let uid = pod.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
        if let Some(want) = b
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            if uid.as_str() != Some(want) {
                return Err(ApiError::conflict_msg(
                    "pods",
                    obj_name,
                    &format!("the UID in the bound object reference ({want}) does not match the UID in record ({uid})"),
                ));
            }
        }
        let pod_sa = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if pod_sa != name {
            return Err(invalid(
                name,
                "spec.boundObjectRef",
                &json!(obj_name),
                &format!("pod runs as service account {pod_sa:?}, not {name:?}"),
            ));
        }
        bound_node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .map(str::to_string);
        k8s["pod"] = json!({"name": obj_name, "uid": uid});
    }

    if let Some(node) = crate::apiserver::admission::serviceaccount::requesting_node() {
        let on = bound_node.as_deref();
        if on != Some(node.as_str()) {
            return Err(ApiError::forbidden_plain(format!(
                "node {node:?} may only request tokens bound to its own pods (this one is bound to {on:?})"
            )));
        }
    }
    let now = chrono::Utc::now();
    let exp = now + chrono::Duration::seconds(seconds);
    let claims = json!({
        "iss": issuer,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": audiences,
        "exp": exp.timestamp(),
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": k8s,
    });
    let token = state
        .sa_signer
        .sign(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(seconds);
    let out = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns,
                     "creationTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
        "spec": spec,
        "status": {
            "token": token,
            "expirationTimestamp": exp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
    });
    Ok(json_response(StatusCode::CREATED, &out))
}
