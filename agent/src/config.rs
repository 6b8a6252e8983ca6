//! The agent's flags, shared by `agent run` and the tests that start it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::node::NodeConfig;

/// Flags of `agent run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// kubeconfig with the API server's address and this node's credentials.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// API server URL; overrides the kubeconfig's server. Several,
    /// comma-separated, for a highly available control plane: the agent
    /// then connects through a local relay that fails over between them.
    #[arg(long, value_delimiter = ',')]
    pub master: Vec<String>,
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where pod data, images and state live; its filesystem is the node's
    /// ephemeral storage.
    #[arg(long, default_value = "/var/lib/kestrel/agent")]
    pub state_dir: PathBuf,
    /// Most pods this node runs.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u64,
    /// Resources kept for the system, e.g. `cpu=100m,memory=256Mi`.
    #[arg(long, default_value = "cpu=100m,memory=100Mi")]
    pub system_reserved: String,
    /// Resources kept for the agent itself, same form.
    #[arg(long, default_value = "")]
    pub kube_reserved: String,
    /// Hard eviction thresholds: `memory.available<100Mi,nodefs.available<10%`.
    #[arg(long, default_value = "memory.available<100Mi,nodefs.available<10%")]
    pub eviction_hard: String,
    /// The node's InternalIP (default: the first non-loopback IPv4 address).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Extra labels for the Node, `key=value,...`.
    #[arg(long, default_value = "")]
    pub node_labels: String,
    /// Seconds between Lease renewals.
    #[arg(long, default_value_t = 10)]
    pub node_lease_interval: u64,
    /// Longest time (seconds) between status reports when nothing changes.
    #[arg(long, default_value_t = 60)]
    pub node_status_report_frequency: u64,
    /// Where container logs go (CRI format, as kubelet writes them).
    #[arg(long, default_value = "/var/log/pods")]
    pub log_dir: PathBuf,
    /// Pod and container cgroups are made under this path of every
    /// cgroup hierarchy (v1 controllers and v2).
    #[arg(long, default_value = "/kestrel")]
    pub cgroup_root: String,
    /// Where the node API (container logs for `kubectl logs`, exec)
    /// listens, over HTTPS for clients with a certificate from the cluster
    /// CA. Without a CA in the kubeconfig it serves only /healthz and
    /// /metrics, and only on loopback (127.0.0.1 at this port).
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub node_api_address: std::net::SocketAddr,
    /// For clusters without a CA (an API server without TLS, as in tests):
    /// serve logs and exec over plain HTTP, to anyone who reaches this
    /// address. Must be one address (not 0.0.0.0) with the port of
    /// --node-api-address; ignored when the cluster has a CA.
    #[arg(long)]
    pub node_api_insecure_address: Option<std::net::SocketAddr>,
    /// A registry to pull from over plain HTTP (repeatable); loopback
    /// registries always are.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Register and report the node, but run no pods.
    #[arg(long)]
    pub no_pods: bool,
    #[command(flatten)]
    pub network: crate::network::NetworkArgs,
    #[command(flatten)]
    pub services: crate::services::ServiceArgs,
}

fn pairs(s: &str, sep: char) -> anyhow::Result<Vec<(String, String)>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once(sep)
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("{p:?} is not of the form key{sep}value"))
        })
        .collect()
}

/// (cpu millicores, memory bytes) of a `cpu=..,memory=..` list.
fn reserved(s: &str) -> anyhow::Result<(u64, u64)> {
    let mut out = (0, 0);
    for (k, v) in pairs(s, '=')? {
        match k.as_str() {
            "cpu" => out.0 = apimachinery::quantity::cpu_millis(&v)?.max(0) as u64,
            "memory" => out.1 = apimachinery::quantity::value(&v)?.max(0) as u64,
            "ephemeral-storage" | "pid" => {}
            other => anyhow::bail!("unknown reserved resource {other:?}"),
        }
    }
    Ok(out)
}

impl RunArgs {
    /// The node settings these flags describe.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let name = match &self.node_name {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
                .trim()
                .to_lowercase(),
        };
        let (sys_cpu, sys_mem) = reserved(&self.system_reserved).context("--system-reserved")?;
        let (kube_cpu, kube_mem) = reserved(&self.kube_reserved).context("--kube-reserved")?;
        let mut eviction_memory = 100 << 20;
        let mut eviction_disk_percent = 10;
        for (k, v) in pairs(&self.eviction_hard, '<').context("--eviction-hard")? {
            match k.as_str() {
                "memory.available" => {
                    eviction_memory = apimachinery::quantity::value(&v)?.max(0) as u64
                }
                "nodefs.available" => {
                    eviction_disk_percent = v
                        .trim_end_matches('%')
                        .parse()
                        .with_context(|| format!("nodefs.available {v:?} is not a percentage"))?
                }
                other => anyhow::bail!("--eviction-hard: unknown signal {other:?}"),
            }
        }
        if let Some(insecure) = self.node_api_insecure_address {
            anyhow::ensure!(
                !insecure.ip().is_unspecified(),
                "--node-api-insecure-address {insecure}: plain HTTP must be bound to one address, not all"
            );
            // The Node advertises one port, for both.
            anyhow::ensure!(
                insecure.port() == self.node_api_address.port(),
                "--node-api-insecure-address {insecure} must use the port of --node-api-address {}",
                self.node_api_address
            );
        }
        Ok(NodeConfig {
            name,
            state_dir: self.state_dir.clone(),
            max_pods: self.max_pods,
            reserved_cpu_millis: sys_cpu + kube_cpu,
            reserved_memory: sys_mem + kube_mem,
            eviction_memory,
            eviction_disk_percent,
            node_ip: self.node_ip.clone(),
            labels: pairs(&self.node_labels, '=').context("--node-labels")?,
            lease_interval: Duration::from_secs(self.node_lease_interval.max(1)),
            status_interval: Duration::from_secs(self.node_status_report_frequency.max(1)),
            runtime_version: "libcontainer://0.7".into(),
            api_port: self.node_api_address.port(),
            pod_cidr: self.network.pod_cidr.map(|c| c.to_string()),
        })
    }

    /// An API client from --kubeconfig and/or --master, and the cluster CA
    /// (DER) when the kubeconfig has one.
    pub async fn client(&self) -> anyhow::Result<(kube::Client, Option<Vec<Vec<u8>>>)> {
        let (client, ca, _) = self.client_with_credentials().await?;
        Ok((client, ca))
    }

    /// Like [`RunArgs::client`]; when the kubeconfig holds the node's
    /// certificate and key inline, the client presents them through
    /// [`Rotating`](crate::node::credentials::Rotating), returned too, so
    /// that a renewed certificate takes effect without a restart.
    pub async fn client_with_credentials(
        &self,
    ) -> anyhow::Result<(
        kube::Client,
        Option<Vec<Vec<u8>>>,
        Option<std::sync::Arc<crate::node::credentials::Rotating>>,
    )> {
        let master = apimachinery::failover::client_url(&self.master)
            .await
            .map_err(|e| anyhow::anyhow!("--master: {e}"))?;
        let mut config = match (&self.kubeconfig, &master) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
            }
            (None, Some(url)) => kube::Config::new(url.parse().context("--master is not a URL")?),
            (None, None) => anyhow::bail!("pass --kubeconfig PATH or --master URL"),
        };
        if let Some(url) = &master {
            config.cluster_url = url.parse().context("--master is not a URL")?;
        }
        config.read_timeout = None;
        let ca = config.root_cert.clone();
        let inline = match &self.kubeconfig {
            Some(path) => crate::node::credentials::inline_credentials(
                &crate::node::credentials::read_kubeconfig(path)?,
            ),
            None => None,
        };
        match inline {
            Some((cert, key)) if config.cluster_url.scheme_str() == Some("https") => {
                let certs =
                    std::sync::Arc::new(crate::node::credentials::Rotating::new(&cert, &key)?);
                let client = crate::node::credentials::rotating_client(config, certs.clone())?;
                Ok((client, ca, Some(certs)))
            }
            _ => Ok((kube::Client::try_from(config)?, ca, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_eviction_flags_parse() {
        assert_eq!(reserved("cpu=250m,memory=1Gi").unwrap(), (250, 1 << 30));
        assert_eq!(reserved("").unwrap(), (0, 0));
        assert!(reserved("gpu=1").is_err());
        assert!(reserved("cpu").is_err());
        assert_eq!(pairs("memory.available<1Gi", '<').unwrap()[0].1, "1Gi");
    }

    #[test]
    fn plain_http_node_api_takes_one_address_and_the_advertised_port() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let config = |extra: &[&str]| {
            let args = ["agent", "--node-name", "n"].iter().chain(extra);
            <Cli as clap::Parser>::try_parse_from(args)
                .unwrap()
                .run
                .node_config()
        };
        assert_eq!(config(&[]).unwrap().api_port, 10250);
        assert!(config(&["--node-api-insecure-address", "10.99.0.10:10250"]).is_ok());
        let all = config(&["--node-api-insecure-address", "0.0.0.0:10250"]).unwrap_err();
        assert!(all.to_string().contains("one address"), "{all}");
        let port = config(&["--node-api-insecure-address", "10.99.0.10:8080"]).unwrap_err();
        assert!(port.to_string().contains("port"), "{port}");
    }
}
