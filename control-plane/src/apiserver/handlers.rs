//! The REST verbs over stored objects.

use std::time::Duration;

use apimachinery::selectors::{supported_fields, FieldSelector, LabelSelector};
use apimachinery::table::{self, IncludeObject};
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult};
use super::request::{self, Query, Target, Wants};
use super::storage::{StorageError, Stored};
use super::validation::{self, FieldValidation};
use super::{allocator, defaults, State};

fn now_rfc3339() -> String {
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

fn json_response(code: StatusCode, v: &Value) -> Response {
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
            Ok(table::render(
                target.res.plural,
                std::slice::from_ref(obj),
                unix_now(),
                include,
                None,
            ))
        }
    }
}

/// GET of one object.
pub async fn get(
    state: &State,
    target: &Target,
    wants: Wants,
    query: &Query,
) -> ApiResult<Response> {
    if target.res.plural == "componentstatuses" {
        let all = super::componentstatus::list(state).await;
        let name = target.name.as_deref().unwrap_or("");
        let cs = all
            .into_iter()
            .find(|c| c["metadata"]["name"] == name)
            .ok_or_else(|| ApiError::not_found("componentstatuses", name))?;
        return Ok(json_response(
            StatusCode::OK,
            &render(state, target, wants, query, &cs)?,
        ));
    }
    let stored = read(state, target).await?;
    let obj = match target.sub.as_deref() {
        Some("scale") => scale_of(target, &stored.value),
        _ => stored.value,
    };
    Ok(json_response(
        StatusCode::OK,
        &render(state, target, wants, query, &obj)?,
    ))
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

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: i64,
    start: String,
}

/// GET of a collection, with selectors and paging.
pub async fn list(
    state: &State,
    target: &Target,
    wants: Wants,
    query: &Query,
) -> ApiResult<Response> {
    let filter = Filter::from_query(target, query)?;
    let limit = query.int("limit")?.filter(|l| *l > 0);
    let (mut start, mut at) = (None::<String>, None::<i64>);
    if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
        let c: Continue = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
        super::limits::continue_within(&c.start, &target.prefix())?;
        start = Some(c.start);
        at = Some(c.rv);
    }
    let mut items = Vec::new();
    let mut rv;
    let mut next = None;
    if target.res.plural == "componentstatuses" {
        items = super::componentstatus::list(state).await;
        rv = 0;
    } else {
        // Keep reading pages until the filtered result fills `limit`.
        loop {
            let page = match state
                .storage
                .list(&target.prefix(), start.as_deref(), limit, at)
                .await
            {
                Ok(p) => p,
                Err(StorageError::Unavailable(m)) if m.contains("compacted") => {
                    return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
                }
                Err(e) => return Err(storage_err(e, target)),
            };
            rv = page.revision;
            at = Some(page.revision);
            let last_key = page.items.last().map(|(k, _)| k.clone());
            for (key, stored) in page.items {
                if filter.matches(&stored.value) {
                    items.push(stored.value);
                    if limit.is_some_and(|l| items.len() as i64 >= l) {
                        start = Some(key);
                        break;
                    }
                }
                start = Some(key);
            }
            let full = limit.is_some_and(|l| items.len() as i64 >= l);
            let more = page.more || (full && start != last_key);
            if full {
                if more || start != last_key {
                    next = start.clone().map(|s| Continue { rv, start: s });
                }
                break;
            }
            if !page.more || last_key.is_none() {
                break;
            }
        }
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = next {
        let token = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&c).unwrap_or_default());
        meta["continue"] = json!(token);
    }
    let body = match wants {
        Wants::Table => {
            let include =
                IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
            table::render(target.res.plural, &items, unix_now(), include, Some(&meta))
        }
        Wants::Json => json!({
            "kind": format!("{}List", target.res.kind),
            "apiVersion": target.res.api_version(),
            "metadata": meta,
            "items": items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// A watch: the events after `resourceVersion` (or every object first, for
/// 0 or none), one JSON object a line, until the client goes away or
/// `timeoutSeconds` passes.
pub async fn watch(
    state: &State,
    target: &Target,
    wants: Wants,
    query: &Query,
) -> ApiResult<Response> {
    let filter = Filter::from_query(target, query)?;
    let name = target.name.clone().or_else(|| {
        FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .ok()
            .and_then(|f| f.exact("metadata.name").map(str::to_string))
    });
    let prefix = match &name {
        Some(n) if target.name.is_some() => target.key() + "\0",
        Some(n) => {
            let mut t = target.clone();
            t.name = Some(n.clone());
            t.key() + "\0"
        }
        None => target.prefix(),
    };
    let exact = prefix.ends_with('\0');
    let prefix = prefix.trim_end_matches('\0').to_string();
    let timeout = super::limits::watch_seconds(query)?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let include =
        IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
    let rv: i64 = match query.get("resourceVersion") {
        None | Some("") | Some("0") => 0,
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))?,
    };

    let mut initial = Vec::new();
    let (backlog, mut rx, from) = if rv == 0 {
        let (backlog, rx) = state
            .cache
            .subscribe(state.cache.latest())
            .map_err(|_| ApiError::internal("watch cache"))?;
        let page = state
            .storage
            .list(&prefix, None, None, None)
            .await
            .map_err(|e| storage_err(e, target))?;
        for (key, stored) in page.items {
            if (!exact || key == prefix) && filter.matches(&stored.value) {
                initial.push(stored.value);
            }
        }
        (backlog, rx, page.revision)
    } else {
        match state.cache.subscribe(rv) {
            Ok((b, r)) => (b, r, rv),
            Err(too_old) => {
                let status = ApiError::expired(format!(
                    "too old resource version: {} ({})",
                    too_old.requested, too_old.oldest
                ))
                .status();
                let line = json!({"type": "ERROR", "object": status}).to_string() + "\n";
                return Ok(stream_response(futures::stream::iter(vec![line])));
            }
        }
    };

    let plural = target.res.plural;
    let encode = move |ty: &str, obj: &Value| -> String {
        let object = match wants {
            Wants::Json => obj.clone(),
            Wants::Table => {
                table::render(plural, std::slice::from_ref(obj), unix_now(), include, None)
            }
        };
        json!({"type": ty, "object": object}).to_string() + "\n"
    };
    let (tx, out_rx) = tokio::sync::mpsc::channel::<String>(256);
    let api_version = target.res.api_version();
    let kind = target.res.kind;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        for obj in &initial {
            if tx.send(encode("ADDED", obj)).await.is_err() {
                return;
            }
        }
        let mut last = from;
        let matches = |key: &str| {
            if exact {
                key == prefix
            } else {
                key.starts_with(&prefix)
            }
        };
        let classify = |ev: &super::watch::Event| -> Option<(&'static str, Value)> {
            if !matches(&ev.key) {
                return None;
            }
            let now_in = !ev.deleted && filter.matches(&ev.object);
            let was_in = ev.prev.as_ref().is_some_and(|p| filter.matches(p));
            match (ev.deleted, was_in, now_in) {
                (true, true, _) => Some(("DELETED", ev.object.clone())),
                (false, false, true) => Some(("ADDED", ev.object.clone())),
                (false, true, true) => Some(("MODIFIED", ev.object.clone())),
                // It stopped matching the selector: for this watch it is gone.
                (false, true, false) => Some(("DELETED", ev.object.clone())),
                _ => None,
            }
        };
        for ev in backlog {
            if ev.rev <= last {
                continue;
            }
            last = ev.rev;
            if let Some((ty, obj)) = classify(&ev) {
                if tx.send(encode(ty, &obj)).await.is_err() {
                    return;
                }
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick() => {
                    if bookmarks {
                        // Only what this watch has passed on: the cache may
                        // already hold newer events still queued for it, and a
                        // client resuming from a later version would miss them.
                        let rv = last;
                        let b = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
                        if tx.send(b.to_string() + "\n").await.is_err() { return; }
                    }
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rev <= last { continue; }
                        last = ev.rev;
                        if let Some((ty, obj)) = classify(&ev) {
                            if tx.send(encode(ty, &obj)).await.is_err() { return; }
                        }
                    }
                    // Fell behind or the cache restarted: end the stream so the
                    // client re-watches from the last version it saw.
                    Err(_) => return,
                }
            }
        }
    });
    // The guard lives as long as the stream: the watch counts as open
    // until the client goes or the stream ends.
    let open = state.metrics.watch(&super::metrics::resource(target));
    let stream = futures::stream::unfold((out_rx, open), |(mut rx, open)| async move {
        rx.recv().await.map(|l| (l, (rx, open)))
    });
    Ok(stream_response(stream))
}

fn stream_response(lines: impl futures::Stream<Item = String> + Send + 'static) -> Response {
    use futures::StreamExt;
    let body =
        Body::from_stream(lines.map(|l| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(l))));
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header("transfer-encoding", "chunked")
        .body(body)
        .unwrap_or_else(|_| ApiError::internal("watch response").into_response())
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

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| CHARS[(*b as usize) % CHARS.len()] as char)
        .collect()
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

/// POST to a collection.
pub async fn create(
    state: &State,
    target: &Target,
    query: &Query,
    body: Value,
) -> ApiResult<Response> {
    let mode = FieldValidation::parse(query.get("fieldValidation"))?;
    let mut obj = body;
    let mut t = target.clone();
    check_identity(&t, &mut obj)?;
    let (mut obj, warnings) = validation::decode(t.res, &obj, mode)?;
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
    validation::validate(t.res, &obj)?;
    super::admission::admit_create(state, &t, &obj).await?;
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
fn prepare_update(target: &Target, old: &Value, mut new: Value) -> ApiResult<Value> {
    let res = target.res;
    let status_only = target.sub.as_deref() == Some("status");
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
                vec![super::errors::Cause::forbidden(
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
    super::admission::admit_update(target, old, &new)?;
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
async fn store_update(
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
        return update_scale(state, target, body).await;
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
    let new = prepare_update(target, &current.value, obj)?;
    let (v, code) = store_update(state, target, &current, new, query.dry_run()?).await?;
    Ok(with_warnings(json_response(code, &v), &warnings))
}

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
    for _ in 0..8 {
        let current = match state
            .storage
            .get(&target.key())
            .await
            .map_err(|e| storage_err(e, target))?
        {
            Some(c) => c,
            None if ct == "application/apply-patch+yaml" && target.sub.is_none() => {
                let resp = create(state, target, query, patch.clone()).await?;
                return Ok(resp);
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
            "application/json-patch+json" => Ok(super::limits::json_patch(&base, &patch)?),
            "application/merge-patch+json" => apimachinery::patch::merge_patch(&base, &patch),
            "application/strategic-merge-patch+json" => {
                apimachinery::patch::strategic_merge_patch(&base, &patch)
            }
            "application/apply-patch+yaml" => apimachinery::patch::apply_merge(&base, &patch),
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if target.sub.as_deref() == Some("scale") {
            let replicas = scale_replicas(&patched)?;
            let mut new = current.value.clone();
            new["spec"]["replicas"] = json!(replicas);
            let mut t = target.clone();
            t.sub = None;
            let new = prepare_update(&t, &current.value, new)?;
            match store_update(state, &t, &current, new, query.dry_run()?).await {
                Ok((v, code)) => return Ok(json_response(code, &scale_of(target, &v))),
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        let mut patched = patched;
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
        let new = prepare_update(target, &current.value, patched)?;
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

fn scale_replicas(scale: &Value) -> ApiResult<i64> {
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
            vec![super::errors::Cause::invalid(
                "spec.replicas",
                &json!(r),
                "must be greater than or equal to 0",
            )],
        ));
    }
    Ok(r)
}

/// The autoscaling/v1 Scale view of a workload.
pub fn scale_of(target: &Target, obj: &Value) -> Value {
    let meta = &obj["metadata"];
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
    let _ = target;
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

async fn update_scale(state: &State, target: &Target, body: Value) -> ApiResult<Response> {
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
    new["spec"]["replicas"] = json!(replicas);
    let mut t = target.clone();
    t.sub = None;
    let new = prepare_update(&t, &current.value, new)?;
    let (v, code) = store_update(state, &t, &current, new, false).await?;
    Ok(json_response(code, &scale_of(target, &v)))
}

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
                vec![super::errors::Cause::required("target.name")],
            )
        })?
        .to_string();
    let pods = super::resources::find("", "v1", "pods").expect("pods are served");
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
        if !(allowed.contains(&verb) || s == "exec" && verb == "get") {
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
        (Method::GET, true, Some("log")) => super::nodeproxy::logs(state, target, query).await,
        // Served as a connection upgrade before requests reach dispatch;
        // this only keeps exec from falling through to `get`.
        (_, true, Some("exec")) => Err(ApiError::bad_request(
            "exec needs a WebSocket upgrade (v5.channel.k8s.io)",
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
