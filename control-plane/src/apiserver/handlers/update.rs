//! PUT of a whole object or its /status, and the merge and store steps
//! that patch and scale share with it.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::create::create;
use super::scale::update_scale;
use super::{check_identity, claim_race, json_response, storage_err, with_warnings};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target};
use crate::apiserver::storage::{StorageError, Stored};
use crate::apiserver::validation::{self, FieldValidation};
use crate::apiserver::{allocator, defaults, fieldmanager, State};

/// Fields of a pod's spec that may change after creation.
fn pod_spec_change_allowed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        for list in ["containers", "initContainers"] {
            if let Some(cs) = v.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("activeDeadlineSeconds");
            o.remove("tolerations");
            o.remove("terminationGracePeriodSeconds");
            // Binding sets the node once; the binding endpoint guards it.
            o.remove("nodeName");
        }
        v
    };
    strip(old) == strip(new)
}

/// Merges an incoming object with the stored one for an update of
/// `target` (main resource or /status), then validates it.
pub(super) fn prepare_update(target: &Target, old: &Value, mut new: Value) -> ApiResult<Value> {
    let res = target.res;
    let status_only = target.sub.as_deref() == Some("status");
    if target.sub.as_deref() == Some("ephemeralcontainers") {
        // Only spec.ephemeralContainers moves, and only by additions.
        let mut merged = old.clone();
        let ephemeral = new
            .pointer("/spec/ephemeralContainers")
            .cloned()
            .unwrap_or(Value::Null);
        match merged.get_mut("spec").and_then(Value::as_object_mut) {
            Some(spec) if !ephemeral.is_null() => {
                spec.insert("ephemeralContainers".into(), ephemeral);
            }
            Some(spec) => {
                spec.remove("ephemeralContainers");
            }
            None => {}
        }
        defaults::apply(res.kind, &mut merged);
        validation::validate_ephemeral_update(old, &merged)?;
        crate::apiserver::admission::admit_update(target, old, &merged)?;
        validation::validate(res, &merged)?;
        return Ok(merged);
    }
    if status_only {
        // Only the status moves; everything else is the stored object's.
        let mut merged = old.clone();
        merged["status"] = new.get("status").cloned().unwrap_or(json!({}));
        new = merged;
    } else if res.has_status() {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    // Server-owned metadata cannot be changed by clients.
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if !status_only {
        defaults::apply(res.kind, &mut new);
        if res.kind == "Pod" && !pod_spec_change_allowed(&old["spec"], &new["spec"]) {
            return Err(ApiError::invalid(
                "Pod",
                "",
                old["metadata"]["name"].as_str().unwrap_or(""),
                vec![crate::apiserver::errors::Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                )],
            ));
        }
        let spec_changed = strip_meta_status(old) != strip_meta_status(&new);
        if spec_changed && old["metadata"].get("generation").is_some() {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
    }
    if res.kind == "CustomResourceDefinition" && crate::apiserver::resources::is_builtin(res) {
        crate::apiserver::crd::admit_definition(&mut new, &super::now_rfc3339());
    }
    crate::apiserver::admission::admit_update(target, old, &new)?;
    validation::validate(res, &new)?;
    Ok(new)
}

fn strip_meta_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

/// Writes `new` over the stored revision `rev`; deletes instead when the
/// object is being deleted and its last finalizer is gone.
pub(super) async fn store_update(
    state: &State,
    target: &Target,
    old: &Stored,
    mut new: Value,
    dry_run: bool,
) -> ApiResult<(Value, StatusCode)> {
    let finalizers_empty = new["metadata"]
        .get("finalizers")
        .and_then(Value::as_array)
        .is_none_or(|f| f.is_empty());
    let (add, release) =
        allocator::allocate_update(state, target.res, &old.value, &mut new).await?;
    if dry_run {
        return Ok((new, StatusCode::OK));
    }
    if new["metadata"].get("deletionTimestamp").is_some()
        && finalizers_empty
        && !is_graceful_pod(target, &new)
    {
        let release = allocator::claims_of(target.res, &old.value);
        let rev = state
            .storage
            .delete(&target.key(), old.rev, &release)
            .await
            .map_err(|e| storage_err(e, target))?;
        new["metadata"]["resourceVersion"] = json!(rev.to_string());
        return Ok((new, StatusCode::OK));
    }
    let rev = state
        .storage
        .update(&target.key(), &new, old.rev, &add, &release)
        .await
        .map_err(|e| match e {
            // The object was still at its revision, so a claim lost a race.
            StorageError::AlreadyExists => claim_race(target),
            e => storage_err(e, target),
        })?;
    new["metadata"]["resourceVersion"] = json!(rev.to_string());
    Ok((new, StatusCode::OK))
}

/// A pod on a node that is terminating: only the agent's final delete removes it.
fn is_graceful_pod(target: &Target, obj: &Value) -> bool {
    target.res.kind == "Pod"
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

/// PUT of a whole object (or its /status, or its /scale).
pub async fn update(
    state: &State,
    target: &Target,
    query: &Query,
    body: Value,
) -> ApiResult<Response> {
    if target.sub.as_deref() == Some("scale") {
        return update_scale(state, target, query, body).await;
    }
    let mode = FieldValidation::parse(query.get("fieldValidation"))?;
    let mut obj = body;
    check_identity(target, &mut obj)?;
    let (obj, warnings) = validation::decode(target.res, &obj, mode)?;
    let current = match state
        .storage
        .get(&target.key())
        .await
        .map_err(|e| storage_err(e, target))?
    {
        Some(c) => c,
        None if matches!(target.res.kind, "Endpoints" | "Lease") && target.sub.is_none() => {
            return create(state, target, query, obj).await;
        }
        None => {
            return Err(ApiError::not_found(
                target.res.plural,
                target.name.as_deref().unwrap_or(""),
            ))
        }
    };
    if let Some(rv) = obj["metadata"]
        .get("resourceVersion")
        .and_then(Value::as_str)
    {
        if rv != current.rev.to_string() {
            return Err(ApiError::conflict(
                target.res.plural,
                target.name.as_deref().unwrap_or(""),
            ));
        }
    }
    let mut new = prepare_update(target, &current.value, obj)?;
    fieldmanager::on_update(target, query, &current.value, &mut new)?;
    let (v, code) = store_update(state, target, &current, new, query.dry_run()?).await?;
    Ok(with_warnings(json_response(code, &v), &warnings))
}
