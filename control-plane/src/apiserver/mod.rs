//! The Kubernetes-compatible API server: REST and watch over objects kept
//! in etcd. Library first: `run` serves until the process ends, and tests
//! start it in-process or as the `control-plane apiserver` binary.

mod allocator;
mod componentstatus;
mod defaults;
pub mod discovery;
pub mod errors;
mod handlers;
pub mod request;
pub mod resources;
pub mod storage;
pub mod validation;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use errors::ApiError;
use storage::Storage;

/// Settings of the API server (flags of `control-plane apiserver`).
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// etcd client URLs, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub etcd_servers: Vec<String>,
    /// Address and port for plain HTTP without authentication. Only for
    /// tests and local experiments: every request is treated as the admin.
    #[arg(long)]
    pub insecure_bind_address: Option<SocketAddr>,
    /// ClusterIP range for Services.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,
    #[arg(skip = allocator::Cidr { base: 0, prefix: 32 })]
    pub service_cidr: allocator::Cidr,
}

/// Shared by every request.
pub struct Inner {
    pub storage: Storage,
    pub cache: Arc<watch::WatchCache>,
    pub config: Config,
}

/// Handle passed to handlers.
pub type State = Arc<Inner>;

/// Connects to etcd, seeds the built-in namespaces and starts the watch cache.
pub async fn build(mut config: Config) -> anyhow::Result<State> {
    config.service_cidr = config
        .service_cluster_ip_range
        .parse()
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    let storage = Storage::connect(&config.etcd_servers)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to etcd at {:?}: {e}", config.etcd_servers))?;
    seed(&storage).await?;
    let cache = watch::WatchCache::start(storage.clone()).await?;
    Ok(Arc::new(Inner {
        storage,
        cache,
        config,
    }))
}

/// The namespaces every cluster has from the start.
async fn seed(storage: &Storage) -> anyhow::Result<()> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(),
                         "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                         "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        storage
            .put_if_absent(&format!("/registry/namespaces/{ns}"), &obj)
            .await?;
    }
    Ok(())
}

/// The HTTP application: every path goes through `route`.
pub fn router(state: State) -> axum::Router {
    axum::Router::new().fallback(route).with_state(state)
}

fn ok_json(v: Value) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn route(axum::extract::State(state): axum::extract::State<State>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = request::Query::parse(parts.uri.query());
    let started = std::time::Instant::now();
    let resp = match (parts.method.clone(), path.as_str()) {
        (Method::GET, "/version") => ok_json(discovery::version()),
        (Method::GET, "/api") => ok_json(discovery::api_versions()),
        (Method::GET, "/apis") => ok_json(discovery::api_group_list()),
        (Method::GET, "/healthz" | "/livez") => (StatusCode::OK, "ok").into_response(),
        (Method::GET, "/readyz") => match state.storage.current_revision().await {
            Ok(_) => (StatusCode::OK, "ok").into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}")).into_response(),
        },
        (Method::GET, "/openapi/v3") => ok_json(discovery::openapi_root()),
        (Method::GET, p) if p.starts_with("/openapi/v3/") => {
            match discovery::openapi_group(&p["/openapi/v3/".len()..]) {
                Some(v) => ok_json(v),
                None => ApiError::path_not_found(p).into_response(),
            }
        }
        (Method::GET, p) if discovery_path(p).is_some() => discovery_path(p)
            .map(ok_json)
            .unwrap_or_else(|| ApiError::path_not_found(p).into_response()),
        (method, p) => match request::parse_path(p) {
            None => ApiError::path_not_found(p).into_response(),
            Some(Err(e)) => e.into_response(),
            Some(Ok(target)) => {
                let body = match axum::body::to_bytes(body, request::MAX_BODY).await {
                    Ok(b) => b,
                    Err(_) => return ApiError::too_large(request::MAX_BODY).into_response(),
                };
                match handlers::dispatch(&state, &method, &target, &query, &parts.headers, &body)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                }
            }
        },
    };
    tracing::debug!(method = %parts.method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

fn discovery_path(p: &str) -> Option<Value> {
    let parts: Vec<&str> = p.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", v] => discovery::resource_list("", v),
        ["apis", g] => discovery::api_group(g),
        ["apis", g, v] => discovery::resource_list(g, v),
        _ => None,
    }
}

/// Serves until the process is stopped.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let state = build(config.clone()).await?;
    let app = router(state);
    let Some(addr) = config.insecure_bind_address else {
        anyhow::bail!("no listener configured: pass --insecure-bind-address");
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving plain HTTP (no authentication)");
    axum::serve(listener, app).await?;
    Ok(())
}

#[allow(dead_code)]
fn empty() -> Body {
    Body::empty()
}
