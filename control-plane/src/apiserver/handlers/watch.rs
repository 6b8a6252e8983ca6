//! Watches: the initial state or the events after a resource version,
//! streamed one JSON object a line.

use std::time::Duration;

use apimachinery::selectors::FieldSelector;
use apimachinery::table::IncludeObject;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{storage_err, Filter};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target, Wants};
use crate::apiserver::State;

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
    let timeout = crate::apiserver::limits::watch_seconds(query)?;
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

    let res = target.res;
    let encode = move |ty: &str, obj: &Value| -> String {
        let object = match wants {
            Wants::Json => obj.clone(),
            Wants::Table => super::table_of(res, std::slice::from_ref(obj), include, None),
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
        let classify = |ev: &crate::apiserver::watch::Event| -> Option<(&'static str, Value)> {
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
    let open = state
        .metrics
        .watch(&crate::apiserver::metrics::resource(target));
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
