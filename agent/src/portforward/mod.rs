//! `kubectl port-forward` on the node: `/portForward/{ns}/{pod}`, reached
//! through the API server, upgraded either to a WebSocket with subprotocol
//! `SPDY/3.1+portforward.k8s.io` (SPDY frames carried in binary messages,
//! what kubectl tries first) or to plain SPDY/3.1 with
//! `X-Stream-Protocol-Version: portforward.k8s.io` (its fallback). Either
//! way the SPDY session is served here, and each forwarded connection is a
//! TCP connection to localhost inside the pod's network namespace.

pub mod session;
pub mod spdy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The protocol spoken inside the SPDY session.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of SPDY tunnelled through WebSocket.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Where to find the pods this node runs.
pub struct Ctx {
    /// Pods' log directories, `{ns}_{pod}_{uid}`, name the pods here.
    pub log_dir: PathBuf,
    /// Pods' state, `{uid}/sandbox/ns/net` their network namespaces;
    /// absent when the agent runs no pods.
    pub pods_dir: Option<PathBuf>,
}

impl Ctx {
    /// The network namespace of pod `ns/pod`, if it runs here.
    fn netns(&self, ns: &str, pod: &str) -> Option<PathBuf> {
        let pods_dir = self.pods_dir.as_ref()?;
        let prefix = format!("{ns}_{pod}_");
        std::fs::read_dir(&self.log_dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_prefix(&prefix).map(str::to_string)
            })
            .filter(|uid| !uid.is_empty() && !uid.contains('/') && !uid.starts_with('.'))
            .map(|uid| pods_dir.join(uid))
            .filter(|dir| dir.join("sandbox/ns/net").exists())
            // A pod deleted and made again under the same name: the newest.
            .max_by_key(|dir| dir.metadata().and_then(|m| m.modified()).ok())
            .map(|dir| dir.join("sandbox/ns/net"))
    }
}

/// Connects to `port` on localhost in the network namespace `netns`.
async fn dial(netns: PathBuf, port: u16, who: String) -> Result<tokio::net::TcpStream, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let connected = tokio::task::spawn_blocking(move || {
        let ns = crate::netns::NetNs::open(&netns).map_err(|e| e.to_string())?;
        ns.run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("dial tcp4 {addr}: {e}"))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .and_then(|s| {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
    });
    connected.map_err(|e| format!("error forwarding port {port} to pod {who}: {e}"))
}

fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `GET` (WebSocket) or `POST` (SPDY) `/portForward/{ns}/{pod}`.
pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    request: Request,
) -> Response {
    let Some(netns) = ctx.netns(&ns, &pod) else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on this node"),
        )
            .into_response();
    };
    let who = format!("{ns}/{pod}");
    let dial: session::Dial = Arc::new(move |port| {
        let (netns, who) = (netns.clone(), who.clone());
        Box::pin(dial(netns, port, who))
    });
    let (mut parts, _) = request.into_parts();
    if has_token(&parts.headers, "upgrade", "websocket") {
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        };
        if !has_token(&parts.headers, "sec-websocket-protocol", WEBSOCKET_PROTOCOL) {
            return (
                StatusCode::BAD_REQUEST,
                format!("port-forward over WebSocket needs subprotocol {WEBSOCKET_PROTOCOL}"),
            )
                .into_response();
        }
        tracing::info!("port-forward to {ns}/{pod} over a WebSocket");
        return ws
            .protocols([WEBSOCKET_PROTOCOL])
            .on_upgrade(move |socket| tunnel(socket, dial));
    }
    if !has_token(&parts.headers, "upgrade", "SPDY/3.1") {
        return (
            StatusCode::BAD_REQUEST,
            "port-forward needs a connection upgrade to SPDY/3.1 or a WebSocket",
        )
            .into_response();
    }
    if !has_token(&parts.headers, "x-stream-protocol-version", PROTOCOL) {
        return (
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: none of the requested protocols is supported; this server speaks {PROTOCOL}"),
        )
            .into_response();
    }
    let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return (
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded",
        )
            .into_response();
    };
    tracing::info!("port-forward to {ns}/{pod} over SPDY");
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(io) => hyper_util::rt::TokioIo::new(io),
            Err(e) => {
                tracing::warn!("port-forward: upgrade failed: {e}");
                return;
            }
        };
        let (read, write) = tokio::io::split(io);
        let _ = session::serve(read, write, dial).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// SPDY inside a WebSocket: binary messages carry the bytes, their
/// boundaries mean nothing.
async fn tunnel(socket: WebSocket, dial: session::Dial) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut from_session, mut to_session) = tokio::io::split(theirs);
    let (mut sink, mut messages) = socket.split();
    let inbound = async move {
        while let Some(Ok(m)) = messages.next().await {
            match m {
                Message::Binary(b) if to_session.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_session.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let (read, write) = tokio::io::split(ours);
    let served = session::serve(read, write, dial);
    let _ = tokio::join!(
        tokio::spawn(inbound),
        tokio::spawn(outbound),
        tokio::spawn(served)
    );
}

#[cfg(test)]
mod tests;
