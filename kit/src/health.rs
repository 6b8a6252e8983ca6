//! `/healthz`, `/readyz` and `/metrics` over plain HTTP, for probes and
//! Prometheus.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::metrics::Registry;

/// What the endpoint reports.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Registry>,
    /// True once the component has synced its caches and leads.
    pub ready: Arc<AtomicBool>,
}

impl Health {
    pub fn new() -> Self {
        Self {
            metrics: Arc::new(Registry::default()),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Binds `addr` and serves in the background.
    pub async fn serve(&self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the health endpoint {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/livez", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(|State(h): State<Health>| async move {
                    if h.ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not leading or not synced")
                    }
                }),
            )
            .route(
                "/metrics",
                get(|State(h): State<Health>| async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        h.metrics.render(),
                    )
                }),
            )
            .with_state(self.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("health endpoint stopped: {e}");
            }
        });
        Ok(local)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}
