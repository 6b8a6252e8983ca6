//! PATCH in the formats kubectl sends.

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::create::create_recorded;
use super::scale::{scale_of, scale_replicas};
use super::update::{prepare_update, store_update};
use super::{check_identity, json_response, storage_err, with_warnings};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{self, Query, Target};
use crate::apiserver::validation::{self, FieldValidation};
use crate::apiserver::{fieldmanager, State};

/// PATCH in any of the four formats kubectl uses; retried on conflicts
/// with concurrent writers since the patch does not name a version.
pub async fn patch(
    state: &State,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let ct = request::content_type(headers);
    let patch = request::decode_body(&ct, body)?;
    let mode = FieldValidation::parse(query.get("fieldValidation"))?;
    let apply = ct == "application/apply-patch+yaml";
    fieldmanager::check_options(query, apply)?;
    for _ in 0..8 {
        let current = match state
            .storage
            .get(&target.key())
            .await
            .map_err(|e| storage_err(e, target))?
        {
            Some(c) => c,
            None if apply && target.sub.is_none() => {
                let merged = fieldmanager::merge(target, &Value::Null, &patch)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                let obj = fieldmanager::apply(target, query, &Value::Null, &patch, merged)?;
                return create_recorded(state, target, query, obj, true).await;
            }
            None => {
                return Err(ApiError::not_found(
                    target.res.plural,
                    target.name.as_deref().unwrap_or(""),
                ))
            }
        };
        let base = if target.sub.as_deref() == Some("scale") {
            scale_of(target, &current.value)
        } else {
            current.value.clone()
        };
        let patched = match ct.as_str() {
            "application/json-patch+json" => {
                Ok(crate::apiserver::limits::json_patch(&base, &patch)?)
            }
            "application/merge-patch+json" => apimachinery::patch::merge_patch(&base, &patch),
            "application/strategic-merge-patch+json" => {
                apimachinery::patch::strategic_merge_patch(&base, &patch)
            }
            "application/apply-patch+yaml" => fieldmanager::merge(target, &base, &patch),
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if target.sub.as_deref() == Some("scale") {
            let replicas = scale_replicas(&patched)?;
            let mut new = current.value.clone();
            super::scale::set_replicas(target, &mut new, replicas);
            let mut t = target.clone();
            t.sub = None;
            let mut new = prepare_update(&t, &current.value, new)?;
            fieldmanager::on_update(target, query, &current.value, &mut new)?;
            match store_update(state, &t, &current, new, query.dry_run()?).await {
                Ok((v, code)) => return Ok(json_response(code, &scale_of(target, &v))),
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        let mut patched = match apply {
            true => fieldmanager::apply(target, query, &current.value, &patch, patched)?,
            false => patched,
        };
        check_identity(target, &mut patched)?;
        let (patched, warnings) = validation::decode(target.res, &patched, mode)?;
        if let Some(uid) = patch.pointer("/metadata/uid").and_then(Value::as_str) {
            if current.value["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::conflict_msg(
                    target.res.plural,
                    target.name.as_deref().unwrap_or(""),
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        current.value["metadata"]["uid"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
        if let Some(rv) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if rv != current.rev.to_string() {
                return Err(ApiError::conflict(
                    target.res.plural,
                    target.name.as_deref().unwrap_or(""),
                ));
            }
        }
        let mut new = prepare_update(target, &current.value, patched)?;
        if !apply {
            fieldmanager::on_update(target, query, &current.value, &mut new)?;
        }
        match store_update(state, target, &current, new, query.dry_run()?).await {
            Ok((v, code)) => return Ok(with_warnings(json_response(code, &v), &warnings)),
            Err(e)
                if e.reason == "Conflict"
                    && patch.pointer("/metadata/resourceVersion").is_none() =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        target.res.plural,
        target.name.as_deref().unwrap_or(""),
    ))
}
