//! Turning an HTTP request into what the handlers need: which resource,
//! which object, the query parameters and the decoded body.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method};
use serde_json::Value;

use super::errors::{ApiError, ApiResult};
use super::resources::{self, Resource};

/// The largest request body accepted (Kubernetes' limit is about 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A request for a resource, parsed from its path.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    /// The etcd key of the named object.
    pub fn key(&self) -> String {
        key_for(
            self.res,
            self.namespace.as_deref(),
            self.name.as_deref().unwrap_or(""),
        )
    }

    /// The etcd prefix a list or watch reads.
    pub fn prefix(&self) -> String {
        match (&self.namespace, self.res.namespaced) {
            (Some(ns), true) => format!("{}{}/", resource_prefix(self.res), ns),
            _ => resource_prefix(self.res),
        }
    }
}

/// The etcd prefix under which every object of `res` lives. Custom
/// resources carry their group too, as in Kubernetes: a CRD may reuse a
/// built-in plural (`pods.example.com`) and must not share its objects.
pub fn resource_prefix(res: &Resource) -> String {
    if resources::is_builtin(res) {
        format!("/registry/{}/", res.plural)
    } else {
        format!("/registry/{}/{}/", res.group, res.plural)
    }
}

/// The etcd key of one object.
pub fn key_for(res: &Resource, namespace: Option<&str>, name: &str) -> String {
    match (res.namespaced, namespace) {
        (true, Some(ns)) => format!("{}{}/{}", resource_prefix(res), ns, name),
        _ => format!("{}{}", resource_prefix(res), name),
    }
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` resource paths.
/// Returns None for paths that are not resource requests.
pub fn parse_path(path: &str) -> Option<ApiResult<Target>> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    let mut rest: Vec<&str> = rest.to_vec();
    let mut namespace = None;
    // `/namespaces/NS/RESOURCE/...`, except a namespace's own subresources.
    if rest[0] == "namespaces" && rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
        namespace = Some(rest[1].to_string());
        rest.drain(..2);
    }
    let plural = rest[0];
    let Some(res) = resources::find(group, version, plural) else {
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        return Some(Err(ApiError::path_not_found(&format!(
            "{gv}, Resource={plural}"
        ))));
    };
    let name = rest.get(1).map(|s| s.to_string());
    let sub = rest.get(2).map(|s| s.to_string());
    if rest.len() > 3 {
        return Some(Err(ApiError::path_not_found(path)));
    }
    if let Some(s) = &sub {
        if res.subresource(s).is_none() {
            return Some(Err(ApiError::path_not_found(&format!(
                "{}/{s}",
                res.plural
            ))));
        }
    }
    if res.namespaced && namespace.is_none() && name.is_some() {
        return Some(Err(ApiError::path_not_found(path)));
    }
    if !res.namespaced && namespace.is_some() {
        return Some(Err(ApiError::path_not_found(path)));
    }
    if let Some(ns) = &namespace {
        if !super::validation::is_dns_label(ns) {
            return Some(Err(ApiError::path_not_found(path)));
        }
    }
    Some(Ok(Target {
        res,
        namespace,
        name,
        sub,
    }))
}

/// Query parameters (the first value of each).
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Self(map)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// Sets `k`, replacing what the client sent under that key.
    pub fn set(&mut self, k: &str, v: String) {
        self.0.insert(k.to_string(), v);
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {k}: {v:?} is not an integer"))
            }),
        }
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(o) => Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {o:?}: supported values: \"All\""
            ))),
        }
    }
}

/// What the client asked to get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    Json,
    Table,
}

/// Reads the Accept header; Tables only when asked for by `as=Table`.
pub fn wants(headers: &HeaderMap) -> Wants {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in accept.split(',') {
        let p = part.trim();
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
            return Wants::Table;
        }
        if p.starts_with("application/json")
            || p.starts_with("*/*")
            || p.starts_with("application/yaml")
        {
            return Wants::Json;
        }
    }
    Wants::Json
}

/// The request's media type (lower case, without parameters).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a JSON or YAML body into a JSON value.
pub fn decode_body(content_type: &str, body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match content_type {
        ""
        | "application/json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
        }),
        "application/yaml"
        | "application/apply-patch+yaml"
        | "application/x-yaml"
        | "text/yaml" => {
            let v: serde_yaml::Value = serde_yaml::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the body of the request is not valid YAML: {e}"))
            })?;
            serde_json::to_value(v).map_err(|e| {
                ApiError::bad_request(format!("the YAML body cannot be represented as JSON: {e}"))
            })
        }
        // What `kubectl create namespace|deployment|configmap|...` sends.
        "application/vnd.kubernetes.protobuf" => {
            apimachinery::protobuf::decode(body).map_err(|e| match e {
                apimachinery::protobuf::DecodeError::UnsupportedKind { .. }
                | apimachinery::protobuf::DecodeError::UnsupportedEncoding(_) => {
                    ApiError::new(415, "UnsupportedMediaType", e.to_string())
                }
                _ => ApiError::bad_request(format!(
                    "the body of the request is not valid Kubernetes protobuf: {e}"
                )),
            })
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// The verb Kubernetes would log for this method and target.
pub fn verb(method: &Method, target: &Target, query: &Query) -> &'static str {
    match *method {
        Method::GET if target.name.is_none() && query.flag("watch") => "watch",
        Method::GET if target.name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if target.name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}
