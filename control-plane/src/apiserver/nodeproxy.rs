//! `pods/<name>/log`, `exec` and `portforward`, proxied to the node agent
//! that runs the pod (its node API, at the node's InternalIP and
//! `daemonEndpoints` port). Over
//! HTTPS the API server presents its kubelet-client certificate; like
//! Kubernetes without `--kubelet-certificate-authority`, it does not verify
//! the agent's self-signed serving certificate.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::errors::ApiError;
use super::request::{Query, Target};
use super::State;

type ApiResult<T> = Result<T, ApiError>;

/// Accepts any server certificate: the agent's is self-signed.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_tls(state: &State) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pki = super::auth::Pki {
        dir: state.config.cert_dir.clone(),
    };
    let (cert, key) = super::auth::kubelet_client(&pki)?;
    let certs = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no key in the kubelet client key file"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// Where the node API of `node` listens.
fn endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node.pointer("/status/addresses")?.as_array()?;
    let ip = addrs
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addrs.iter().find(|a| a["type"] == "Hostname"))?["address"]
        .as_str()?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250) as u16;
    Some((ip, port))
}

/// The pod, container and node API address a request is for.
struct Located {
    name: String,
    ns: String,
    container: String,
    node: String,
    host: String,
    port: u16,
}

async fn locate(state: &State, target: &Target, query: &Query) -> ApiResult<Located> {
    let (pod, mut at) = find_pod(state, target).await?;
    let name = &at.name;
    let names: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            pod.pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    // Ephemeral containers are reached by name, never by default.
    let ephemeral: Vec<String> = pod
        .pointer("/spec/ephemeralContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    at.container = match query.get("container") {
        Some(c) if names.iter().chain(&ephemeral).any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )))
        }
    };
    Ok(at)
}

/// The pod and node API address a request for the whole pod is for.
async fn locate_pod(state: &State, target: &Target) -> ApiResult<Located> {
    Ok(find_pod(state, target).await?.1)
}

async fn find_pod(state: &State, target: &Target) -> ApiResult<(Value, Located)> {
    let name = target.name.clone().unwrap_or_default();
    let ns = target.namespace.clone().unwrap_or_else(|| "default".into());
    let pod = state
        .storage
        .get(&target.key())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found("pods", &name))?
        .value;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_string();
    let node = state
        .storage
        .get(&format!("/registry/nodes/{node_name}"))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found("nodes", &node_name))?
        .value;
    let (host, port) = endpoint(&node)
        .ok_or_else(|| ApiError::unavailable(format!("node {node_name} has no address")))?;
    let at = Located {
        name,
        ns,
        container: String::new(),
        node: node_name,
        host,
        port,
    };
    Ok((pod, at))
}

impl Located {
    fn unavailable(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::unavailable(format!(
            "the node agent on {} ({}:{}): {e}",
            self.node, self.host, self.port
        ))
    }
}

/// Sends `request` to the node API of `at` (TLS unless the API server
/// itself runs without), returning the response and, for upgrades, the
/// connection to take over.
async fn forward(
    state: &State,
    at: &Located,
    request: axum::http::Request<Body>,
) -> ApiResult<hyper::Response<hyper::body::Incoming>> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((at.host.as_str(), at.port)),
    )
    .await
    .map_err(|_| at.unavailable("connect timed out"))?
    .map_err(|e| at.unavailable(e))?;
    let _ = tcp.set_nodelay(true);
    if state.config.no_tls {
        send(hyper_util::rt::TokioIo::new(tcp), request).await
    } else {
        let tls = client_tls(state).map_err(|e| ApiError::internal(e.to_string()))?;
        let server_name = rustls::pki_types::ServerName::try_from(at.host.clone())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| at.unavailable(e))?;
        send(hyper_util::rt::TokioIo::new(stream), request).await
    }
    .map_err(|e| at.unavailable(e))
}

async fn error_from(at: &Located, response: hyper::Response<hyper::body::Incoming>) -> ApiError {
    use http_body_util::BodyExt;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).to_string();
    match status.as_u16() {
        400 => ApiError::bad_request(text),
        404 => ApiError::not_found("pods", &at.name),
        _ => at.unavailable(text),
    }
}

/// `GET pods/<name>/log`.
pub async fn logs(state: &State, target: &Target, query: &Query) -> ApiResult<Response> {
    let at = locate(state, target, query).await?;
    let params = {
        let mut p = form_urlencoded::Serializer::new(String::new());
        for k in [
            "follow",
            "tailLines",
            "timestamps",
            "sinceSeconds",
            "previous",
            "limitBytes",
        ] {
            if let Some(v) = query.get(k) {
                p.append_pair(k, v);
            }
        }
        p.finish()
    };
    let path = format!(
        "/containerLogs/{}/{}/{}?{params}",
        at.ns, at.name, at.container
    );
    let request = axum::http::Request::get(&path)
        .header("host", format!("{}:{}", at.host, at.port))
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let response = forward(state, &at, request).await?;
    if response.status() != StatusCode::OK {
        return Err(error_from(&at, response).await);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(Body::new(response.into_body()))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `pods/<name>/exec` or `pods/<name>/attach` as a WebSocket: the upgrade
/// is passed to the node agent and, once it agrees, the two connections
/// are spliced together.
pub async fn exec(
    state: &State,
    target: &Target,
    query: &Query,
    raw_query: &str,
    parts: &mut axum::http::request::Parts,
) -> ApiResult<Response> {
    let sub = match target.sub.as_deref() {
        Some("attach") => "attach",
        _ => "exec",
    };
    if !upgrades_to(&parts.headers, "websocket") {
        // kubectl falls back to SPDY when it sees this.
        return Err(ApiError::bad_request(format!(
            "{sub} needs a WebSocket upgrade (v5.channel.k8s.io); SPDY is not supported"
        )));
    }
    let at = locate(state, target, query).await?;
    let path = format!("/{sub}/{}/{}/{}?{raw_query}", at.ns, at.name, at.container);
    splice(state, &at, axum::http::Method::GET, &path, parts).await
}

/// `pods/<name>/portforward`: a WebSocket carrying SPDY (kubectl's first
/// try) or a plain SPDY/3.1 upgrade (its fallback), both served by the
/// node agent, to which the connection is spliced as for exec.
pub async fn portforward(
    state: &State,
    target: &Target,
    raw_query: &str,
    parts: &mut axum::http::request::Parts,
) -> ApiResult<Response> {
    let method = if upgrades_to(&parts.headers, "websocket") {
        axum::http::Method::GET
    } else if upgrades_to(&parts.headers, "SPDY/3.1") {
        axum::http::Method::POST
    } else {
        return Err(ApiError::bad_request(
            "Upgrade request required: port-forward needs a WebSocket or SPDY/3.1 upgrade",
        ));
    };
    let at = locate_pod(state, target).await?;
    let path = format!("/portForward/{}/{}?{raw_query}", at.ns, at.name);
    splice(state, &at, method, &path, parts).await
}

fn upgrades_to(headers: &axum::http::HeaderMap, protocol: &str) -> bool {
    headers
        .get_all("upgrade")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(protocol))
}

/// The headers of an upgrade the agent is asked with, WebSocket's and
/// SPDY's: a header a request does not carry is simply not passed.
const ASK: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
/// The headers of the agent's agreement passed back to the client.
const ANSWER: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Passes an upgrade request to the node agent and, once the agent
/// agrees, answers with its agreement and copies bytes between the
/// client's connection and the agent's.
async fn splice(
    state: &State,
    at: &Located,
    method: axum::http::Method,
    path: &str,
    parts: &mut axum::http::request::Parts,
) -> ApiResult<Response> {
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{}:{}", at.host, at.port));
    for h in ASK {
        for v in parts.headers.get_all(*h) {
            request = request.header(*h, v.clone());
        }
    }
    let request = request
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let client = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
    let response = forward(state, at, request).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(error_from(at, response).await);
    }
    let mut reply = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in ANSWER {
        for v in response.headers().get_all(*h) {
            reply = reply.header(*h, v.clone());
        }
    }
    let what = path.split('/').nth(1).unwrap_or_default().to_string();
    tokio::spawn(async move {
        let (upstream, downstream) = match (hyper::upgrade::on(response).await, client.await) {
            (Ok(u), Ok(d)) => (u, d),
            (u, d) => {
                tracing::warn!(
                    "{what} upgrade failed: node side {:?}, client side {:?}",
                    u.err(),
                    d.err()
                );
                return;
            }
        };
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        let mut downstream = hyper_util::rt::TokioIo::new(downstream);
        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    });
    reply
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn send<T>(
    io: T,
    req: axum::http::Request<Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// GETs `path` from the node API of `node` (a Node object) and decodes its
/// JSON answer.
pub async fn node_json(state: &State, node: &Value, path: &str) -> ApiResult<Value> {
    use http_body_util::BodyExt;
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (host, port) = endpoint(node)
        .ok_or_else(|| ApiError::unavailable(format!("node {name} has no address")))?;
    let at = Located {
        name: String::new(),
        ns: String::new(),
        container: String::new(),
        node: name,
        host,
        port,
    };
    let request = axum::http::Request::get(path)
        .header("host", format!("{}:{}", at.host, at.port))
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let response = forward(state, &at, request).await?;
    if !response.status().is_success() {
        return Err(at.unavailable(format!("{path}: {}", response.status())));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| at.unavailable(e))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| at.unavailable(format!("{path}: {e}")))
}
