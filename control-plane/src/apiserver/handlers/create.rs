//! POST to a collection: names, server-set metadata, defaults, allocation.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{
    check_identity, check_namespace, claim_race, json_response, now_rfc3339, storage_err,
    with_warnings,
};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target};
use crate::apiserver::storage::StorageError;
use crate::apiserver::validation::{self, FieldValidation};
use crate::apiserver::{allocator, defaults, fieldmanager, State};

/// Five characters that read as no word, for generated names.
pub fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| CHARS[(*b as usize) % CHARS.len()] as char)
        .collect()
}

/// POST to a collection.
pub async fn create(
    state: &State,
    target: &Target,
    query: &Query,
    body: Value,
) -> ApiResult<Response> {
    create_recorded(state, target, query, body, false).await
}

/// A create whose `managedFields` the caller has already written when
/// `recorded` (server-side apply of a new object); otherwise the creator
/// is recorded as owning every field it sent.
pub(super) async fn create_recorded(
    state: &State,
    target: &Target,
    query: &Query,
    body: Value,
    recorded: bool,
) -> ApiResult<Response> {
    let mode = FieldValidation::parse(query.get("fieldValidation"))?;
    let mut obj = body;
    let mut t = target.clone();
    check_identity(&t, &mut obj)?;
    let (mut obj, warnings) = validation::decode(t.res, &obj, mode)?;
    if !recorded {
        fieldmanager::on_update(&t, query, &Value::Null, &mut obj)?;
    }
    if obj["metadata"]
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        if let Some(g) = obj["metadata"].get("generateName").and_then(Value::as_str) {
            obj["metadata"]["name"] = json!(format!("{g}{}", random_suffix()));
        }
    }
    t.name = obj["metadata"]["name"].as_str().map(str::to_string);
    check_namespace(state, &t).await?;
    let meta = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    if !matches!(
        t.res.kind,
        "Event"
            | "Lease"
            | "ConfigMap"
            | "Secret"
            | "Endpoints"
            | "EndpointSlice"
            | "Namespace"
            | "Node"
    ) {
        meta.insert("generation".into(), json!(1));
    }
    defaults::apply(t.res.kind, &mut obj);
    if t.res.kind == "Pod" {
        defaults::toleration_seconds(
            &mut obj,
            state.config.default_not_ready_toleration_seconds,
            state.config.default_unreachable_toleration_seconds,
        );
    }
    if t.res.has_status() && t.res.kind != "Node" {
        defaults::initial_status(t.res.kind, &mut obj);
    }
    crate::apiserver::crd::prepare_create(&t, &mut obj);
    if t.res.kind == "CustomResourceDefinition" && crate::apiserver::resources::is_builtin(t.res) {
        crate::apiserver::crd::admit_definition(&mut obj, &now_rfc3339());
    }
    crate::apiserver::admission::mutate_create(state, &t, &mut obj).await?;
    validation::validate(t.res, &obj)?;
    if t.res.kind == "Pod" && crate::apiserver::resources::is_builtin(t.res) {
        validation::no_ephemeral_on_create(&obj)?;
    }
    crate::apiserver::admission::admit_create(state, &t, &obj).await?;
    // Two creates can pick the same free address between reading the
    // claims and writing theirs; etcd lets one win, and the other picks
    // again rather than handing the race to the client.
    let unallocated = obj;
    let mut attempts = 0;
    let (mut obj, rev) = loop {
        let mut obj = unallocated.clone();
        let claims = allocator::allocate(state, t.res, &mut obj, None).await?;
        if query.dry_run()? {
            return Ok(with_warnings(
                json_response(StatusCode::CREATED, &obj),
                &warnings,
            ));
        }
        match state.storage.create(&t.key(), &obj, &claims).await {
            Ok(rev) => break (obj, rev),
            Err(StorageError::Conflict) if attempts < 8 => attempts += 1,
            Err(StorageError::Conflict) => return Err(claim_race(&t)),
            Err(e) => return Err(storage_err(e, &t)),
        }
    };
    obj["metadata"]["resourceVersion"] = json!(rev.to_string());
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &obj),
        &warnings,
    ))
}
