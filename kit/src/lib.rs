//! What every component shares (the scheduler, the controller-manager and
//! the node agent): an API client made from flags, with failover between
//! API servers; leader election through a Lease; a health and metrics
//! endpoint; an event recorder behind a bounded queue; a store fed by a
//! watch; and shutdown on SIGTERM. They are all ordinary API clients.

pub mod events;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod watch;

use std::path::PathBuf;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How a component reaches the API server.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// kubeconfig with the API server's address and credentials.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// API server URL; overrides the kubeconfig's server (plain HTTP for an
    /// API server started with --insecure-bind-address). Several,
    /// comma-separated, for a highly available control plane: the component
    /// then connects through a local relay that fails over between them.
    #[arg(long, value_delimiter = ',')]
    pub master: Vec<String>,
    /// Requests per second the component may send (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub kube_api_qps: u32,
}

impl ClientArgs {
    /// A kube client from --kubeconfig and/or --master.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = self.config().await?;
        kube::Client::try_from(config).context("building the API client")
    }

    /// The CA (PEM) the kubeconfig trusts for the API server, if it names
    /// one: the cluster CA, when no other is given.
    pub async fn trusted_ca(&self) -> anyhow::Result<Option<String>> {
        use base64::Engine;
        let config = self.config().await?;
        let pems: Vec<String> = config
            .root_cert
            .iter()
            .flatten()
            .map(|der| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                let lines: Vec<&str> = b64
                    .as_bytes()
                    .chunks(64)
                    .filter_map(|c| std::str::from_utf8(c).ok())
                    .collect();
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                )
            })
            .collect();
        Ok((!pems.is_empty()).then(|| pems.concat()))
    }

    async fn config(&self) -> anyhow::Result<kube::Config> {
        let master = apimachinery::failover::client_url(&self.master)
            .await
            .map_err(|e| anyhow::anyhow!("--master: {e}"))?;
        let mut config = match (&self.kubeconfig, &master) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .with_context(|| format!("using kubeconfig {}", path.display()))?
            }
            (None, Some(url)) => kube::Config::new(
                url.parse()
                    .with_context(|| format!("--master {url:?} is not a URL"))?,
            ),
            (None, None) => anyhow::bail!("pass --kubeconfig PATH or --master URL"),
        };
        if let Some(url) = &master {
            config.cluster_url = url
                .parse()
                .with_context(|| format!("--master {url:?} is not a URL"))?;
        }
        // Watches are long; the default read timeout would cut them.
        config.read_timeout = None;
        Ok(config)
    }
}

/// `host_pid`: the identity a component uses in leases and events.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{}", std::process::id())
}

/// Now as Kubernetes' MicroTime.
pub fn micro_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Now as Kubernetes' Time (seconds precision on the wire).
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
