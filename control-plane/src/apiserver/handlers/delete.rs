//! DELETE of one object or of a collection: preconditions, propagation
//! finalizers, graceful pod deletion.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{json_response, read, storage_err, Filter};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target};
use crate::apiserver::storage::StorageError;
use crate::apiserver::{allocator, State};

/// Options of a DELETE, from its body or query.
struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<String>,
    dry_run: bool,
}

fn delete_options(query: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let b: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let propagation = b
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| query.get("propagationPolicy").map(str::to_string));
    if let Some(p) = &propagation {
        if !matches!(p.as_str(), "Background" | "Foreground" | "Orphan") {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
            )));
        }
    }
    let mut dry_run = query.dry_run()?;
    if b.get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"))
    {
        dry_run = true;
    }
    Ok(DeleteOptions {
        grace: b
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or(query.int("gracePeriodSeconds")?),
        propagation,
        uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        rv: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run,
    })
}

/// DELETE of one object.
pub async fn delete(
    state: &State,
    target: &Target,
    query: &Query,
    body: &[u8],
) -> ApiResult<Response> {
    let opts = delete_options(query, body)?;
    let (v, code) = delete_one(state, target, &opts).await?;
    Ok(json_response(code, &v))
}

async fn delete_one(
    state: &State,
    target: &Target,
    opts: &DeleteOptions,
) -> ApiResult<(Value, StatusCode)> {
    for _ in 0..5 {
        let current = read(state, target).await?;
        let mut obj = current.value.clone();
        if opts
            .uid
            .as_ref()
            .is_some_and(|u| obj["metadata"]["uid"] != json!(u))
        {
            return Err(ApiError::conflict_msg(
                target.res.plural,
                target.name.as_deref().unwrap_or(""),
                "Precondition failed: UID in precondition does not match the UID of the object",
            ));
        }
        if opts
            .rv
            .as_ref()
            .is_some_and(|r| *r != current.rev.to_string())
        {
            return Err(ApiError::conflict(
                target.res.plural,
                target.name.as_deref().unwrap_or(""),
            ));
        }
        let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let policy = opts.propagation.as_deref().unwrap_or("Background");
        let add = match policy {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            _ => None,
        };
        if let Some(f) = add {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        let deleting = obj["metadata"].get("deletionTimestamp").is_some();
        let namespace_with_content = target.res.kind == "Namespace"
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        // A pod on a node gets its grace period: the agent stops it and
        // then deletes it for good with grace 0.
        let pod_grace = if target.res.kind == "Pod"
            && obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && obj
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .is_none_or(|p| p != "Succeeded" && p != "Failed")
        {
            let default = obj
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30);
            opts.grace.unwrap_or(default).max(0)
        } else {
            0
        };
        let graceful = pod_grace > 0;
        if !finalizers.is_empty() || namespace_with_content || graceful {
            if deleting && !graceful && finalizers.is_empty() && !namespace_with_content {
                // fallthrough to the real delete below
            } else {
                if deleting && !graceful {
                    return Ok((obj, StatusCode::OK));
                }
                let shorter = obj["metadata"]["deletionGracePeriodSeconds"]
                    .as_i64()
                    .is_none_or(|g| pod_grace < g);
                if deleting && !shorter {
                    return Ok((obj, StatusCode::OK));
                }
                let when = chrono::Utc::now() + chrono::Duration::seconds(pod_grace);
                obj["metadata"]["deletionTimestamp"] =
                    json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace);
                if !finalizers.is_empty() {
                    obj["metadata"]["finalizers"] = json!(finalizers);
                }
                if target.res.kind == "Namespace" {
                    obj["status"]["phase"] = json!("Terminating");
                }
                if opts.dry_run {
                    return Ok((obj, StatusCode::OK));
                }
                match state
                    .storage
                    .update(&target.key(), &obj, current.rev, &[], &[])
                    .await
                {
                    Ok(rev) => {
                        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
                        return Ok((obj, StatusCode::OK));
                    }
                    Err(StorageError::Conflict) => continue,
                    Err(e) => return Err(storage_err(e, target)),
                }
            }
        }
        if opts.dry_run {
            return Ok((obj, StatusCode::OK));
        }
        let release = allocator::claims_of(target.res, &obj);
        match state
            .storage
            .delete(&target.key(), current.rev, &release)
            .await
        {
            Ok(rev) => {
                obj["metadata"]["resourceVersion"] = json!(rev.to_string());
                if target.res.kind == "CustomResourceDefinition"
                    && crate::apiserver::resources::is_builtin(target.res)
                {
                    // Stop serving the kind first, so no object is created
                    // after its siblings are removed.
                    let _ = crate::apiserver::crd::registry()
                        .refresh(&state.storage)
                        .await;
                    crate::apiserver::crd::delete_objects(&state.storage, &obj).await?;
                }
                return Ok((obj, StatusCode::OK));
            }
            Err(StorageError::Conflict) => continue,
            Err(e) => return Err(storage_err(e, target)),
        }
    }
    Err(ApiError::conflict(
        target.res.plural,
        target.name.as_deref().unwrap_or(""),
    ))
}

/// DELETE of a collection: every object the selectors match.
pub async fn delete_collection(
    state: &State,
    target: &Target,
    query: &Query,
    body: &[u8],
) -> ApiResult<Response> {
    let opts = delete_options(query, body)?;
    let filter = Filter::from_query(target, query)?;
    let page = state
        .storage
        .list(&target.prefix(), None, None, None)
        .await
        .map_err(|e| storage_err(e, target))?;
    let mut items = Vec::new();
    for (_, stored) in page.items {
        if !filter.matches(&stored.value) {
            continue;
        }
        let mut t = target.clone();
        t.name = stored.value["metadata"]["name"]
            .as_str()
            .map(str::to_string);
        t.namespace = stored.value["metadata"]["namespace"]
            .as_str()
            .map(str::to_string)
            .or(t.namespace);
        match delete_one(state, &t, &opts).await {
            Ok((v, _)) => items.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", target.res.kind), "apiVersion": target.res.api_version(), "metadata": {}, "items": items}),
    ))
}
