//! The node API the API server proxies `kubectl logs` to:
//! `GET /containerLogs/{namespace}/{pod}/{container}` with kubelet's query
//! parameters (follow, tailLines, timestamps, sinceSeconds, previous,
//! limitBytes), exec and port-forward. Over HTTPS, only clients with a certificate from
//! the cluster CA that are not nodes (the API server, admins) get in;
//! without a cluster CA there is no one to let in, and logs and exec are
//! not served unless asked for on an address of their own (see `serve`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// Query parameters of a log request, as kubectl sends them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    #[serde(default)]
    pub follow: bool,
    pub tail_lines: Option<i64>,
    #[serde(default)]
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
    #[serde(default)]
    pub previous: bool,
    pub limit_bytes: Option<i64>,
}

/// The log files of one container, oldest attempt first.
pub fn attempts(log_dir: &Path, ns: &str, pod: &str, container: &str) -> Vec<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            std::fs::read_dir(e.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|f| {
            let name = f.file_name().to_string_lossy().to_string();
            let n: u32 = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, f.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Turns CRI log lines into what the user sees: the text, joined across
/// partial lines, with the timestamp in front when asked.
pub fn render(
    cri: &str,
    opts: &LogOptions,
    since: Option<k8s_openapi::jiff::Timestamp>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in cri.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let text = parts.next().unwrap_or("");
        if let Some(since) = since {
            if ts
                .parse::<k8s_openapi::jiff::Timestamp>()
                .is_ok_and(|t| t < since)
            {
                continue;
            }
        }
        if pending.is_empty() && opts.timestamps {
            pending.push_str(ts);
            pending.push(' ');
        }
        pending.push_str(text);
        if tag == "F" {
            pending.push('\n');
            out.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    if let Some(n) = opts.tail_lines.filter(|n| *n >= 0) {
        let n = n as usize;
        if out.len() > n {
            out.drain(..out.len() - n);
        }
    }
    out
}

fn error(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

/// Where container logs are, the state of the log handler.
struct Logs {
    log_dir: PathBuf,
}

async fn container_logs(
    State(ctx): State<Arc<Logs>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(opts): Query<LogOptions>,
) -> Response {
    let files = attempts(&ctx.log_dir, &ns, &pod, &container);
    let file = if opts.previous {
        match files.len() {
            n if n >= 2 => files[n - 2].clone(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                )
            }
        }
    } else {
        match files.last() {
            Some(f) => f.clone(),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "container \"{container}\" in pod \"{pod}\" is waiting to start: no logs yet"
                ),
                )
            }
        }
    };
    let since = opts.since_seconds.filter(|s| *s > 0).map(|s| {
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(s)
    });
    let text = tokio::fs::read_to_string(&file).await.unwrap_or_default();
    let mut first = render(&text, &opts, since).concat();
    if let Some(limit) = opts.limit_bytes.filter(|l| *l > 0) {
        first.truncate(limit as usize);
    }
    if !opts.follow || opts.previous {
        return ([("content-type", "text/plain")], first).into_response();
    }
    // Follow: stream what is appended until a newer attempt starts or the
    // pod's logs go away (the pod was deleted).
    let stream = futures::stream::unfold(
        (
            Some(first),
            text.len(),
            file,
            ctx.clone(),
            ns,
            pod,
            container,
            opts,
        ),
        |(first, mut offset, file, ctx, ns, pod, container, opts)| async move {
            if let Some(f) = first {
                return Some((
                    Ok::<_, std::io::Error>(f),
                    (None, offset, file, ctx, ns, pod, container, opts),
                ));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let text = tokio::fs::read_to_string(&file).await.ok()?;
                if text.len() < offset {
                    // Rotated: start over in the new file.
                    offset = 0;
                }
                // Only whole lines; a half-written one waits.
                let upto = text[offset..]
                    .rfind('\n')
                    .map(|i| offset + i + 1)
                    .unwrap_or(offset);
                if upto > offset {
                    let chunk = render(
                        &text[offset..upto],
                        &LogOptions {
                            timestamps: opts.timestamps,
                            ..Default::default()
                        },
                        None,
                    )
                    .concat();
                    return Some((Ok(chunk), (None, upto, file, ctx, ns, pod, container, opts)));
                }
                let latest = attempts(&ctx.log_dir, &ns, &pod, &container);
                if latest.last() != Some(&file) {
                    return None;
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response".into()))
}

/// Where the node API finds what it serves.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// Containers' logs, `{ns}_{pod}_{uid}/{container}/{n}.log`.
    pub log_dir: PathBuf,
    /// Where exec sessions keep their FIFOs.
    pub exec_dir: PathBuf,
    /// Pods' state (their sandboxes); absent when the agent runs no pods.
    pub pods_dir: Option<PathBuf>,
}

/// Where the node API listens.
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    /// `--node-api-address`: over HTTPS when the cluster has a CA.
    pub address: SocketAddr,
    /// `--node-api-insecure-address`: logs and exec over plain HTTP, for
    /// clusters without a CA only.
    pub insecure: Option<SocketAddr>,
}

/// The address the node API uses without a cluster CA: `addr` when it is
/// loopback, else loopback at its port. Unauthenticated, it must not be
/// reachable from other machines.
pub fn local_only(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_loopback() {
        return addr;
    }
    let ip: std::net::IpAddr = match addr {
        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    SocketAddr::new(ip, addr.port())
}

/// Serves the node API. It fails closed: with the cluster CA (`ca_der`),
/// everything over HTTPS with a fresh self-signed serving certificate,
/// requiring client certificates from that CA that name `system:masters`
/// (the API server's kubelet client, admins); without one, only
/// /healthz and /metrics, over plain HTTP on loopback. Logs and exec
/// without a CA need `listen.insecure`, a specific address (clusters
/// whose API server has no TLS either, such as tests).
pub async fn serve(
    listen: Listen,
    dirs: Dirs,
    runtime: Option<crate::runtime::Runtime>,
    ca_der: Option<Vec<Vec<u8>>>,
    stats: Option<Arc<crate::stats::Sampler>>,
) -> anyhow::Result<()> {
    let Dirs {
        log_dir,
        exec_dir,
        pods_dir,
    } = dirs;
    let exec = axum::Router::new()
        .route(
            "/exec/{ns}/{pod}/{container}",
            axum::routing::get(crate::exec::handle),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            axum::routing::get(crate::attach::handle),
        )
        .with_state(Arc::new(crate::exec::Ctx {
            log_dir: log_dir.clone(),
            runtime,
            exec_dir,
        }))
        .route(
            "/portForward/{ns}/{pod}",
            axum::routing::get(crate::portforward::handle).post(crate::portforward::handle),
        )
        .with_state(Arc::new(crate::portforward::Ctx {
            log_dir: log_dir.clone(),
            pods_dir,
        }));
    let private = axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(Arc::new(Logs { log_dir }))
        .route(
            "/stats/resource",
            axum::routing::get(move || {
                let latest = stats.as_ref().and_then(|s| s.latest());
                async move {
                    match latest {
                        Some(summary) => axum::Json(summary).into_response(),
                        None => error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no usage sampled yet".into(),
                        ),
                    }
                }
            }),
        )
        .merge(exec);
    let public = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(|| async {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    crate::metrics::render(),
                )
            }),
        );
    let app = private.merge(public.clone());
    let Some(ca) = ca_der.filter(|c| !c.is_empty()) else {
        return serve_plain(listen, app, public).await;
    };
    if let Some(insecure) = listen.insecure {
        tracing::warn!("ignoring --node-api-insecure-address {insecure}: the cluster has a CA, so the node API is served over HTTPS alone");
    }
    let addr = listen.address;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let tls = tls_config(&ca)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tracing::info!("node API on https://{addr}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("node API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            // Nodes, the scheduler, the controller-manager and users hold
            // certificates from the same CA; only the API server (its
            // kubelet client) and admins may read logs, exec or metrics.
            let admitted = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| cert_is_admin(c.as_ref()));
            if !admitted {
                return;
            }
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    use tower::ServiceExt;
                    app.clone().oneshot(req.map(Body::new))
                });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

/// The node API of a cluster without a CA: /healthz and /metrics on
/// loopback, and everything on the insecure address when one is given.
async fn serve_plain(
    listen: Listen,
    app: axum::Router,
    public: axum::Router,
) -> anyhow::Result<()> {
    let local = local_only(listen.address);
    if local != listen.address {
        tracing::warn!(
            "no cluster CA known: the node API serves only /healthz and /metrics, on http://{local} instead of {}",
            listen.address
        );
    }
    let Some(insecure) = listen.insecure else {
        let listener = tokio::net::TcpListener::bind(local).await?;
        tracing::info!("node API on http://{local} (health and metrics only)");
        axum::serve(listener, public).await?;
        return Ok(());
    };
    anyhow::ensure!(
        !insecure.ip().is_unspecified(),
        "--node-api-insecure-address {insecure}: plain HTTP without authentication must be bound to one address, not all"
    );
    tracing::warn!("node API on http://{insecure} without authentication (no cluster CA known)");
    let open = axum::serve(tokio::net::TcpListener::bind(insecure).await?, app);
    if insecure == local {
        open.await?;
        return Ok(());
    }
    let health = axum::serve(tokio::net::TcpListener::bind(local).await?, public);
    tokio::try_join!(async { open.await }, async { health.await })?;
    Ok(())
}

/// Whether a client certificate (already verified against the cluster CA)
/// names a member of `system:masters`.
fn cert_is_admin(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let admin = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str().is_ok_and(|o| o == "system:masters"));
    admin
}

fn tls_config(ca_der: &[Vec<u8>]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_der {
        roots.add(rustls::pki_types::CertificateDer::from(c.clone()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.trim().to_string(), "localhost".into()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kestrel-agent");
    let cert = params.self_signed(&key)?;
    let chain = vec![cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRI: &str = "2026-01-01T00:00:01.000000001Z stdout F one\n2026-01-01T00:00:02.000000001Z stderr P tw\n2026-01-01T00:00:02.100000001Z stderr F o\n2026-01-01T00:00:03.000000001Z stdout F three\n";

    #[test]
    fn cri_lines_become_what_kubectl_prints() {
        assert_eq!(
            render(CRI, &LogOptions::default(), None).concat(),
            "one\ntwo\nthree\n"
        );
        let tail = LogOptions {
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(render(CRI, &tail, None).concat(), "three\n");
        let ts = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            render(CRI, &ts, None)[0],
            "2026-01-01T00:00:01.000000001Z one\n"
        );
        let since: k8s_openapi::jiff::Timestamp = "2026-01-01T00:00:02Z".parse().unwrap();
        assert_eq!(
            render(CRI, &LogOptions::default(), Some(since)).concat(),
            "two\nthree\n"
        );
    }
}
