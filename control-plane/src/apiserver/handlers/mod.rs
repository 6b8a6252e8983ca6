//! The REST verbs over stored objects, one file a verb as in Kubernetes'
//! endpoint handlers; this module dispatches a request to its verb and holds
//! what several verbs share.

mod bind;
mod create;
mod delete;
mod get;
mod list;
mod patch;
mod scale;
mod token;
mod update;
mod watch;

use apimachinery::selectors::{supported_fields, FieldSelector, LabelSelector};
use apimachinery::table::{self, IncludeObject};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult};
use super::request::{self, Query, Target, Wants};
use super::storage::{StorageError, Stored};
use super::State;

use bind::bind;
pub use create::{create, random_suffix};
use delete::{delete, delete_collection};
use get::get;
use list::list;
use patch::patch;
pub use update::update;
use watch::watch;

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Maps a storage error onto the Status a client expects for `target`.
pub fn storage_err(e: StorageError, target: &Target) -> ApiError {
    let name = target.name.as_deref().unwrap_or("");
    match e {
        StorageError::NotFound => ApiError::not_found(target.res.plural, name),
        StorageError::AlreadyExists => ApiError::already_exists(target.res.plural, name),
        StorageError::Conflict => ApiError::conflict(target.res.plural, name),
        StorageError::Unavailable(m) => ApiError::unavailable(format!("etcd: {m}")),
        StorageError::Corrupt(k, m) => ApiError::internal(format!("stored object {k}: {m}")),
    }
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(h) = axum::http::HeaderValue::from_str(&format!("299 - {:?}", w)) {
            resp.headers_mut().append("warning", h);
        }
    }
    resp
}

/// A Table of `objects` of `res`: custom resources get their CRD's
/// printer columns, built-in ones the printers Kubernetes has.
pub(super) fn table_of(
    res: &crate::apiserver::resources::Resource,
    objects: &[Value],
    include: IncludeObject,
    list_meta: Option<&Value>,
) -> Value {
    match crate::apiserver::crd::registry().version(res) {
        Some(v) => {
            crate::apiserver::crd::table(&v.columns, objects, unix_now(), include, list_meta)
        }
        None => table::render(res.plural, objects, unix_now(), include, list_meta),
    }
}

fn render(
    state: &State,
    target: &Target,
    wants: Wants,
    query: &Query,
    obj: &Value,
) -> ApiResult<Value> {
    let _ = state;
    match wants {
        Wants::Json => Ok(obj.clone()),
        Wants::Table => {
            let include =
                IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
            Ok(table_of(
                target.res,
                std::slice::from_ref(obj),
                include,
                None,
            ))
        }
    }
}

async fn read(state: &State, target: &Target) -> ApiResult<Stored> {
    state
        .storage
        .get(&target.key())
        .await
        .map_err(|e| storage_err(e, target))?
        .ok_or_else(|| ApiError::not_found(target.res.plural, target.name.as_deref().unwrap_or("")))
}

/// Label and field selectors of a list or watch.
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn from_query(target: &Target, query: &Query) -> ApiResult<Self> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse fieldSelector: {e}")))?;
        let supported = supported_fields(target.res.plural);
        fields
            .check_supported(&supported)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

/// Checks that a body names the resource it is sent to, filling in what
/// clients may leave out (kind, apiVersion, namespace).
fn check_identity(target: &Target, obj: &mut Value) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    let res = target.res;
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(res.kind),
        Some(k) if k != res.kind => {
            return Err(ApiError::bad_request(format!(
                "the object provided is of kind {k:?}, but this endpoint serves {:?}",
                res.kind
            )))
        }
        _ => {}
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(res.api_version()),
        Some(v) if v != res.api_version() => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                res.api_version()
            )))
        }
        _ => {}
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    if res.namespaced {
        let url_ns = target.namespace.clone().unwrap_or_else(|| "default".into());
        match obj["metadata"].get("namespace").and_then(Value::as_str) {
            None | Some("") => obj["metadata"]["namespace"] = json!(url_ns),
            Some(ns) if ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {}
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if let Some(url_name) = &target.name {
        match obj["metadata"].get("name").and_then(Value::as_str) {
            None | Some("") => obj["metadata"]["name"] = json!(url_name),
            Some(n) if n != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({url_name})"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

async fn check_namespace(state: &State, target: &Target) -> ApiResult<()> {
    if !target.res.namespaced {
        return Ok(());
    }
    let ns = target.namespace.as_deref().unwrap_or("default");
    if state.cache.namespace_active(ns) {
        return Ok(());
    }
    let key = format!("/registry/namespaces/{ns}");
    let nsobj = state
        .storage
        .get(&key)
        .await
        .map_err(|e| storage_err(e, target))?;
    match nsobj {
        None => Err(ApiError::not_found("namespaces", ns)),
        Some(s) if s.value.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError::forbidden_plain(format!(
            "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            target.res.plural,
            target.name.as_deref().unwrap_or("")
        ))),
        Some(_) => Ok(()),
    }
}

/// A write whose allocated ClusterIP or NodePort another Service took
/// between choosing and storing it.
fn claim_race(target: &Target) -> ApiError {
    ApiError::conflict_msg(
        target.res.plural,
        target.name.as_deref().unwrap_or(""),
        "an allocated address or port was taken concurrently; retry",
    )
}

/// Dispatches a resource request to its verb.
pub async fn dispatch(
    state: &State,
    method: &Method,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let wants = request::wants(headers);
    let sub = target.sub.as_deref();
    if let Some(s) = sub {
        let allowed = target.res.subresource(s).map(|s| s.verbs).unwrap_or(&[]);
        let verb = request::verb(method, target, query);
        if !(allowed.contains(&verb) || matches!(s, "exec" | "attach") && verb == "get") {
            return Err(ApiError::method_not_allowed(format!(
                "{verb} is not supported on {}/{s}",
                target.res.plural
            )));
        }
    } else {
        let verb = request::verb(method, target, query);
        if !target.res.verbs.contains(&verb) {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({verb} {})",
                target.res.plural
            )));
        }
    }
    if target.res.group == super::resource_metrics::GROUP {
        return super::resource_metrics::serve(state, target, query).await;
    }
    match (method.clone(), target.name.is_some(), sub) {
        (Method::POST, true, Some("binding")) => {
            bind(
                state,
                target,
                request::decode_body(&request::content_type(headers), body)?,
            )
            .await
        }
        (Method::POST, false, None) if target.res.plural == "bindings" => {
            bind(
                state,
                target,
                request::decode_body(&request::content_type(headers), body)?,
            )
            .await
        }
        (Method::POST, true, Some("token")) if target.res.plural == "serviceaccounts" => {
            token::create(
                state,
                target,
                request::decode_body(&request::content_type(headers), body)?,
            )
            .await
        }
        (Method::GET, true, Some("log")) => super::nodeproxy::logs(state, target, query).await,
        // Served as a connection upgrade before requests reach dispatch;
        // this only keeps exec from falling through to `get`.
        (_, true, Some(sub @ ("exec" | "attach"))) => Err(ApiError::bad_request(format!(
            "{sub} needs a WebSocket upgrade (v5.channel.k8s.io)"
        ))),
        (_, true, Some("portforward")) => Err(ApiError::bad_request(
            "port-forward needs a WebSocket or SPDY/3.1 upgrade",
        )),
        (Method::GET, true, _) => get(state, target, wants, query).await,
        (Method::GET, false, _) if query.flag("watch") => watch(state, target, wants, query).await,
        (Method::GET, false, _) => list(state, target, wants, query).await,
        (Method::POST, false, None) => {
            let ct = request::content_type(headers);
            create(state, target, query, request::decode_body(&ct, body)?).await
        }
        (Method::PUT, true, _) => {
            let ct = request::content_type(headers);
            update(state, target, query, request::decode_body(&ct, body)?).await
        }
        (Method::PATCH, true, _) => patch(state, target, query, headers, body).await,
        (Method::DELETE, true, None) => delete(state, target, query, body).await,
        (Method::DELETE, false, None) => delete_collection(state, target, query, body).await,
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported here"
        ))),
    }
}
