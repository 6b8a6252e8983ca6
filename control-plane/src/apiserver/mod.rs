//! The Kubernetes-compatible API server: REST and watch over objects kept
//! in etcd. Library first: `run` serves until the process ends, and tests
//! start it in-process or as the `control-plane apiserver` binary.

pub mod admission;
mod allocator;
pub mod auth;
pub mod authz;
mod autoscaling;
mod builtin;
mod componentstatus;
pub mod crd;
mod cronjobs;
mod defaults;
pub mod discovery;
pub mod errors;
mod fieldmanager;
mod handlers;
mod limits;
pub mod metrics;
mod networkpolicies;
pub mod nodeproxy;
pub mod openapi;
pub mod request;
pub mod resource_metrics;
pub mod resources;
pub mod satoken;
mod statefulsets;
pub mod storage;
pub mod validation;
mod volumes;
pub mod watch;
mod workloads;

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
    /// CA that signed the etcd members' certificates (https etcd URLs).
    #[arg(long)]
    pub etcd_cafile: Option<std::path::PathBuf>,
    /// Client certificate presented to etcd, for members that require one.
    #[arg(long, requires = "etcd_keyfile")]
    pub etcd_certfile: Option<std::path::PathBuf>,
    /// Key of --etcd-certfile.
    #[arg(long, requires = "etcd_certfile")]
    pub etcd_keyfile: Option<std::path::PathBuf>,
    /// Address and port for plain HTTP without authentication. Only for
    /// tests and local experiments: every request is treated as the admin.
    #[arg(long)]
    pub insecure_bind_address: Option<SocketAddr>,
    /// Address and port of the HTTPS listener (client certificates or tokens).
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub bind_address: SocketAddr,
    /// Serve no HTTPS at all (only with --insecure-bind-address, for tests).
    #[arg(long)]
    pub no_tls: bool,
    /// Where the CA, serving and admin certificates live; made on first start.
    #[arg(long, default_value = "/var/lib/kestrel/pki")]
    pub cert_dir: std::path::PathBuf,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// Write an admin kubeconfig (client certificate) to this path.
    #[arg(long)]
    pub admin_kubeconfig: Option<std::path::PathBuf>,
    /// The server URL put in the admin kubeconfig (default https://127.0.0.1:PORT).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Bearer tokens, one per line: token,user,uid[,"group1,group2"].
    #[arg(long)]
    pub token_auth_file: Option<std::path::PathBuf>,
    /// ClusterIP range for Services.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,
    /// The address pods and other machines reach this server at: its
    /// endpoint in Service default/kubernetes (default: --bind-address, or
    /// the host of --advertise-url, unless unspecified or loopback).
    #[arg(long)]
    pub advertise_address: Option<std::net::IpAddr>,
    /// ClusterIP of Service kube-system/kube-dns, the address the agents
    /// answer DNS on (default: the tenth address of the range, 10.96.0.10).
    #[arg(long)]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// tolerationSeconds added to pods for the not-ready NoExecute taint
    /// (DefaultTolerationSeconds admission): how long they stay on a
    /// NotReady node before eviction.
    #[arg(long, default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// Likewise for the unreachable taint (node stopped heartbeating).
    #[arg(long, default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
    /// Seconds a client has to send a request's headers, and that an
    /// idle kept-alive connection stays open, before it is closed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_header_timeout: u64,
    /// Most HTTPS connections open at once; more are closed on accept.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Admission plugins to turn on, comma-separated (all are on by
    /// default; this is for symmetry with kube-apiserver). `ServiceAccount`
    /// gives pods their ServiceAccount (which must exist: the
    /// controller-manager makes `default` in every namespace) and the
    /// volume with its token, the cluster CA and the namespace.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub enable_admission_plugins: Vec<admission::Plugin>,
    /// Admission plugins to turn off, comma-separated. Without
    /// `ServiceAccount`, pods are stored as sent: no account is checked and
    /// no token is mounted (for API servers used without a
    /// controller-manager).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub disable_admission_plugins: Vec<admission::Plugin>,
    /// The `iss` of ServiceAccount tokens, and their audience unless a
    /// request names others.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    pub service_account_issuer: String,
    #[arg(skip = allocator::Cidr::new(std::net::Ipv4Addr::UNSPECIFIED, 32))]
    pub service_cidr: allocator::Cidr,
}

/// Shared by every request.
pub struct Inner {
    pub tokens: auth::Tokens,
    pub sa_signer: satoken::Signer,
    pub storage: Storage,
    pub cache: Arc<watch::WatchCache>,
    pub config: Config,
    pub metrics: Arc<metrics::Metrics>,
    pub rbac: Arc<authz::rbac::Cache>,
}

/// Handle passed to handlers.
pub type State = Arc<Inner>;

/// Connects to etcd, seeds the built-in namespaces and starts the watch cache.
pub async fn build(mut config: Config) -> anyhow::Result<State> {
    admission::check_flags(&config)?;
    config.service_cidr = allocator::service_range(&config.service_cluster_ip_range)
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    let tls = storage::EtcdTls::load(&config)?;
    let storage = Storage::connect(&config.etcd_servers, tls.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to etcd at {:?}: {e}", config.etcd_servers))?;
    seed(&storage).await?;
    authz::bootstrap::seed(&storage).await?;
    let cache = watch::WatchCache::start(storage.clone()).await?;
    let rbac = authz::rbac::Cache::start(storage.clone(), cache.clone()).await?;
    crd::start(storage.clone(), cache.clone()).await?;
    let tokens = auth::Tokens::load(config.token_auth_file.as_deref())?;
    // The key sits with the CA, so servers sharing the PKI share it.
    let sa_signer = satoken::Signer::load((!config.no_tls).then_some(config.cert_dir.as_path()))?;
    Ok(Arc::new(Inner {
        tokens,
        sa_signer,
        storage,
        cache,
        config,
        metrics: Arc::default(),
        rbac,
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
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let bearer = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(auth::bearer_token)
        .map(str::to_string);
    let mut user = parts
        .extensions
        .get::<auth::ConnUser>()
        .and_then(|c| c.0.clone())
        .or_else(|| state.tokens.user(bearer.as_deref()?));
    if user.is_none() {
        if let Some(t) = &bearer {
            user = satoken::authenticate(&state, t).await;
        }
    }
    // Only an authenticated user may act as another.
    let user = match user.map(|u| authz::reviews::impersonate(&state, u, &parts.headers)) {
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => return e.into_response(),
        None => None,
    };
    // Paths that name no resource are authorized by RBAC's
    // nonResourceURLs; without credentials, as `system:anonymous`.
    let nonresource = authz::nonresource::is_nonresource(&path);
    let anonymous = user.is_none();
    let user = match user {
        Some(u) => u,
        None if nonresource => authz::nonresource::anonymous(),
        None => return ApiError::unauthorized().into_response(),
    };
    if nonresource {
        if let Err(e) = authz::nonresource::authorize(&state, &user, &parts.method, &path) {
            // A client that sent no credentials is told to send some.
            return match anonymous {
                true => ApiError::unauthorized().into_response(),
                false => e.into_response(),
            };
        }
    }
    let mut query = request::Query::parse(parts.uri.query());
    if let Some(agent) = parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        query.set(
            fieldmanager::AGENT_MANAGER,
            fieldmanager::agent_product(agent),
        );
    }
    let started = std::time::Instant::now();
    let resp = match (parts.method.clone(), path.as_str()) {
        (Method::GET, "/version") => ok_json(discovery::version()),
        (Method::GET, "/api") => ok_json(discovery::api_versions()),
        (Method::GET, "/apis") => ok_json(discovery::api_group_list()),
        (Method::GET, "/healthz" | "/livez") => (StatusCode::OK, "ok").into_response(),
        (Method::GET, "/metrics") => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            state.metrics.render(),
        )
            .into_response(),
        (Method::GET, "/readyz") => match state.storage.current_revision().await {
            Ok(_) => (StatusCode::OK, "ok").into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}")).into_response(),
        },
        (Method::POST, NODE_CERTIFICATE_PATH) => renew_node_certificate(&state, &user, body).await,
        (Method::GET, "/.well-known/openid-configuration") => ok_json(
            satoken::openid_configuration(&state.config.service_account_issuer),
        ),
        (Method::GET, "/openid/v1/jwks") => ok_json(state.sa_signer.jwks()),
        (Method::GET, "/openapi/v3") => openapi::v3_index(&parts.headers),
        (Method::GET, p) if p.starts_with("/openapi/v3/") => {
            openapi::v3_document(&p["/openapi/v3/".len()..], &query, &parts.headers)
        }
        (Method::GET, "/openapi/v2") => openapi::v2(&parts.headers),
        (Method::GET, p) if discovery_path(p).is_some() => discovery_path(p)
            .map(ok_json)
            .unwrap_or_else(|| ApiError::path_not_found(p).into_response()),
        (method, p) => match parse_path_fresh(&state, p).await {
            None => ApiError::path_not_found(p).into_response(),
            Some(Err(e)) => e.into_response(),
            Some(Ok(target)) => {
                // Forwarding ports is a `create` of pods/portforward
                // whichever way the client upgrades, as upstream asks of
                // WebSocket upgrades.
                let portforward =
                    target.sub.as_deref() == Some("portforward") && target.res.plural == "pods";
                let authz_method = if portforward {
                    Method::POST
                } else {
                    method.clone()
                };
                if let Err(e) =
                    authz::authorize(&state, &user, &authz_method, &target, &query).await
                {
                    return e.into_response();
                }
                if target.sub.as_deref() == Some("log") {
                    if let Err(e) = limits::log_options(&query) {
                        return e.into_response();
                    }
                }
                if portforward && target.name.is_some() {
                    let raw = parts.uri.query().unwrap_or("").to_string();
                    return match nodeproxy::portforward(&state, &target, &raw, &mut parts).await {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    };
                }
                if matches!(target.sub.as_deref(), Some("exec" | "attach"))
                    && target.res.plural == "pods"
                {
                    let raw = parts.uri.query().unwrap_or("").to_string();
                    return match nodeproxy::exec(&state, &target, &query, &raw, &mut parts).await {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    };
                }
                let body = match axum::body::to_bytes(body, request::MAX_BODY).await {
                    Ok(b) => b,
                    Err(_) => return ApiError::too_large(request::MAX_BODY).into_response(),
                };
                if authz::reviews::is_review(&target) {
                    if method != Method::POST {
                        return ApiError::new(405, "MethodNotAllowed", "reviews are only created")
                            .into_response();
                    }
                    return authz::reviews::handle(&state, &user, &target, &parts.headers, &body);
                }
                let handled =
                    handlers::dispatch(&state, &method, &target, &query, &parts.headers, &body);
                let handled = authz::escalation::scope(user.clone(), state.rbac.clone(), handled);
                let resp = match admission::with_user(user, handled).await {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                };
                state.metrics.observe(
                    metrics::verb(&method, &target, &query),
                    &metrics::resource(&target),
                    resp.status().as_u16(),
                    started.elapsed(),
                );
                resp
            }
        },
    };
    tracing::debug!(method = %parts.method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

/// Where a node sends a certificate request (PEM) to get a new client
/// certificate for itself, signed by the cluster CA, before its own lapses.
pub const NODE_CERTIFICATE_PATH: &str = "/kestrel/v1/node-client-certificate";

async fn renew_node_certificate(state: &State, user: &auth::User, body: Body) -> Response {
    let Some(node) = user.node_name() else {
        return ApiError::forbidden_plain(format!(
            "User {:?} cannot renew a node certificate: only nodes renew their own",
            user.name
        ))
        .into_response();
    };
    let Ok(csr) = axum::body::to_bytes(body, 64 * 1024).await else {
        return ApiError::too_large(64 * 1024).into_response();
    };
    let pki = auth::Pki {
        dir: state.config.cert_dir.clone(),
    };
    match auth::renew_node_certificate(&pki, node, &String::from_utf8_lossy(&csr)) {
        Ok(pem) => {
            tracing::info!(node, "issued a renewed node client certificate");
            (
                StatusCode::CREATED,
                [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
                pem,
            )
                .into_response()
        }
        Err(e) => ApiError::bad_request(e.to_string()).into_response(),
    }
}

/// Parses a resource path; a resource this server does not know yet may
/// belong to a CRD written a moment ago through another server or before
/// the watch delivered it, so the CRDs are reloaded once before a 404.
async fn parse_path_fresh(state: &State, p: &str) -> Option<Result<request::Target, ApiError>> {
    let parsed = request::parse_path(p)?;
    if parsed.as_ref().is_err_and(|e| e.code == 404)
        && p.starts_with("/apis/")
        && crd::registry().refresh(&state.storage).await.is_ok()
    {
        return request::parse_path(p);
    }
    Some(parsed)
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

/// Serves until the process is stopped: HTTPS unless `--no-tls`, and plain
/// HTTP (everyone is admin) only when `--insecure-bind-address` is given.
pub async fn run(config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.no_tls || config.insecure_bind_address.is_some(),
        "--no-tls leaves nothing to serve: give --insecure-bind-address too"
    );
    let state = build(config.clone()).await?;
    let app = router(state.clone());
    let mut tasks = tokio::task::JoinSet::new();
    // What the listener really got (--bind-address may ask for port 0).
    let mut secure_port = config.bind_address.port();
    if let Some(addr) = config.insecure_bind_address {
        use axum::serve::ListenerExt;
        // Small JSON responses must not wait for Nagle's algorithm.
        let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tracing::warn!(%addr, "serving plain HTTP: every request there is treated as the admin");
        let app = app
            .clone()
            .layer(axum::Extension(auth::ConnUser(Some(auth::User::admin()))));
        tasks.spawn(async move {
            axum::serve(listener, app)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if !config.no_tls {
        let pki = auth::ensure_pki(&config.cert_dir, &config.tls_sans)?;
        let listener = tokio::net::TcpListener::bind(config.bind_address).await?;
        let port = listener.local_addr()?.port();
        secure_port = port;
        if let Some(path) = &config.admin_kubeconfig {
            let server = config
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("https://127.0.0.1:{port}"));
            let kc = auth::admin_kubeconfig(&pki, &server)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // It holds the admin's private key.
            auth::write_private(path, &kc)?;
            tracing::info!(path = %path.display(), "wrote the admin kubeconfig");
        }
        let tls = tokio_rustls::TlsAcceptor::from(auth::server_config(&pki)?);
        tracing::info!(addr = %listener.local_addr()?, "serving HTTPS");
        // One budget for every listener: the limit is on the process.
        let limits = ConnLimits {
            open: Arc::new(tokio::sync::Semaphore::new(config.max_connections as usize)),
            header_timeout: std::time::Duration::from_secs(config.request_header_timeout),
        };
        tasks.spawn(serve_tls(
            listener,
            tls.clone(),
            app.clone(),
            limits.clone(),
        ));
        for listener in inherited_listeners()? {
            tracing::info!(addr = %listener.local_addr()?, "serving HTTPS on an inherited socket");
            tasks.spawn(serve_tls(
                listener,
                tls.clone(),
                app.clone(),
                limits.clone(),
            ));
        }
    }
    let endpoint = builtin::endpoint_address(
        config.advertise_address,
        config.bind_address.ip(),
        config.advertise_url.as_deref(),
    )
    .filter(|_| !config.no_tls)
    .map(|ip| (ip, secure_port));
    tokio::spawn(builtin::run(state.clone(), endpoint, secure_port));
    tokio::spawn(authz::aggregation::run(state.clone()));
    match tasks.join_next().await {
        Some(r) => r?,
        None => Ok(()),
    }
}

/// Listening sockets handed over by whoever started us, the way systemd
/// socket activation does (`LISTEN_FDS` sockets from fd 3 on;
/// `LISTEN_PID`, when set, must be our pid). They let a server in one
/// network namespace also answer on a socket made in another.
fn inherited_listeners() -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    let Some(n) = std::env::var("LISTEN_FDS").ok() else {
        return Ok(Vec::new());
    };
    if let Ok(pid) = std::env::var("LISTEN_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(Vec::new());
        }
    }
    let n: i32 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("LISTEN_FDS={n:?} is not a number"))?;
    let mut out = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: by the socket-activation protocol these fds are ours and
        // open; each is wrapped exactly once.
        let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        out.push(tokio::net::TcpListener::from_std(std)?);
    }
    Ok(out)
}

/// What keeps slow or numerous clients from holding the server: a
/// connection that dribbles its headers, or sits idle between requests,
/// is closed after `header_timeout`, and past `open` connections new ones
/// are closed at once.
#[derive(Clone)]
struct ConnLimits {
    open: Arc<tokio::sync::Semaphore>,
    header_timeout: std::time::Duration,
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    limits: ConnLimits,
) -> anyhow::Result<()> {
    use tower::ServiceExt;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limits.open.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let app = app.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(stream)) = tokio::time::timeout(
                header_timeout.min(std::time::Duration::from_secs(10)),
                tls.accept(tcp),
            )
            .await
            else {
                return;
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| auth::user_from_cert(c.as_ref()));
            let service = hyper::service::service_fn(
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(auth::ConnUser(user.clone()));
                    app.clone().oneshot(req.map(Body::new))
                },
            );
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let _ = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
