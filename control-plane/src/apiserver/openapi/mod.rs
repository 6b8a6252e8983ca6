//! OpenAPI documents: `/openapi/v3` (an index, then one document per
//! group/version) and `/openapi/v2`, with the full schemas of every built-in
//! kind (generated from the k8s-openapi types) and of every served custom
//! resource. kubectl reads them for `explain`, for `--validate` and to learn
//! which query parameters the server takes.
//!
//! Nothing is built at start: the first request builds every document once
//! and they are kept until the set of served CRDs changes. Each document is
//! served with a content hash (in the index's URLs and as ETag), so a
//! client's cache of an unchanged document stays valid.

mod document;
mod schemas;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::crd;
use super::errors::ApiError;
use super::request::Query;
use super::resources::{Resource, RESOURCES};

/// One serialized document and the hash of its bytes.
pub struct Served {
    pub body: Bytes,
    pub hash: String,
}

impl Served {
    fn new(doc: &Value) -> Self {
        let body = Bytes::from(doc.to_string());
        let digest = ring::digest::digest(&ring::digest::SHA256, &body);
        let hash = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        Self { body, hash }
    }
}

/// The documents of one set of served CRDs.
pub struct Docs {
    generation: u64,
    /// v3 documents by `api/v1` / `apis/<group>/<version>`.
    pub v3: BTreeMap<String, Served>,
    /// The v3 index listing them.
    pub index: Served,
    /// What v2 is built from, kept so v2 is only built when asked for.
    custom: Vec<(&'static Resource, Option<Value>)>,
    v2: OnceLock<Served>,
}

impl Docs {
    /// The v2 document, built on first use.
    pub fn v2(&self) -> &Served {
        self.v2
            .get_or_init(|| Served::new(&document::v2_document(&sources(self.custom.clone()))))
    }
}

/// The built-in definitions, generated once per process.
fn builtin() -> &'static schemas::Builtin {
    static BUILTIN: OnceLock<schemas::Builtin> = OnceLock::new();
    BUILTIN.get_or_init(schemas::builtin)
}

fn sources(custom: Vec<(&'static Resource, Option<Value>)>) -> document::Sources<'static> {
    let mut resources: Vec<&'static Resource> = RESOURCES.iter().collect();
    resources.extend(custom.iter().map(|(r, _)| *r));
    document::Sources {
        builtin: builtin(),
        resources,
        custom,
    }
}

/// Builds the documents for the given custom resources.
pub fn build(generation: u64, custom: Vec<(&'static Resource, Option<Value>)>) -> Docs {
    let src = sources(custom);
    let v3: BTreeMap<String, Served> = document::v3_documents(&src)
        .into_iter()
        .map(|(gv, doc)| (gv, Served::new(&doc)))
        .collect();
    let paths: serde_json::Map<String, Value> = v3
        .iter()
        .map(|(gv, s)| {
            (
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", s.hash)}),
            )
        })
        .collect();
    let index = Served::new(&json!({"paths": paths}));
    Docs {
        generation,
        v3,
        index,
        custom: src.custom,
        v2: OnceLock::new(),
    }
}

/// The documents of the CRDs served now; rebuilt only when they changed.
pub fn current() -> Arc<Docs> {
    static DOCS: Mutex<Option<Arc<Docs>>> = Mutex::new(None);
    let registry = crd::registry();
    // Held while building, so concurrent first requests build once.
    let mut docs = DOCS.lock().unwrap_or_else(|p| p.into_inner());
    match docs.as_ref() {
        Some(d) if d.generation == registry.generation() => d.clone(),
        _ => {
            let started = std::time::Instant::now();
            let (generation, custom) = registry.schemas();
            let built = Arc::new(build(generation, custom));
            tracing::debug!(
                generation,
                documents = built.v3.len(),
                bytes = built.v3.values().map(|s| s.body.len()).sum::<usize>(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "built the OpenAPI v3 documents"
            );
            *docs = Some(built.clone());
            built
        }
    }
}

fn etag(hash: &str) -> String {
    format!("\"{hash}\"")
}

/// A JSON document, or 304 when the client holds this version already.
fn send(served: &Served, headers: &HeaderMap, cache_control: &'static str) -> Response {
    let tag = etag(&served.hash);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            served.body.clone(),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    resp
}

/// `GET /openapi/v3`: where each group/version's document is.
pub fn v3_index(headers: &HeaderMap) -> Response {
    send(&current().index, headers, "no-cache, private")
}

/// `GET /openapi/v3/<api/v1 | apis/group/version>`. A URL whose hash is
/// current may be cached for good; an old hash is sent to the current URL.
pub fn v3_document(gv: &str, query: &Query, headers: &HeaderMap) -> Response {
    let gv = gv.trim_matches('/');
    let docs = current();
    let Some(served) = docs.v3.get(gv) else {
        return ApiError::path_not_found(&format!("/openapi/v3/{gv}")).into_response();
    };
    match query.get("hash") {
        Some(h) if h == served.hash => send(served, headers, "public, immutable"),
        Some(_) => {
            let location = format!("/openapi/v3/{gv}?hash={}", served.hash);
            let mut resp = StatusCode::MOVED_PERMANENTLY.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        None => send(served, headers, "no-cache, private"),
    }
}

/// `GET /openapi/v2`, as JSON. kubectl asks for the protobuf encoding
/// only, which this server does not speak: it gets 406 and falls back to
/// its compiled-in types, as with a server without v2.
pub fn v2(headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let json_ok = accept.split(',').any(|t| {
        let t = t.split(';').next().unwrap_or("").trim();
        matches!(t, "application/json" | "application/*" | "*/*" | "")
    });
    if !json_ok {
        return ApiError::new(
            406,
            "NotAcceptable",
            format!("only application/json is served here, not {accept}"),
        )
        .into_response();
    }
    send(current().v2(), headers, "no-cache, private")
}
