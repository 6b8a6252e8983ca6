//! Service load balancing without kube-proxy: ClusterIPs are balanced at
//! the socket layer by cgroup sock_addr programs (see `agent-ebpf/src/lb.rs`)
//! over maps this module keeps equal to the Services and EndpointSlices.
//!
//! Who is balanced: every process in the cgroup v2 subtree the programs
//! attach to. That is `--cgroup-root` by default, which holds every pod
//! (see `cgroup` for how pods land there on hybrid hosts). A process of
//! the node itself reaches ClusterIPs when it runs in that subtree too; on
//! a machine that is only a node, `--service-cgroup /` balances every
//! process on it, as kube-proxy does.

pub mod bpf;
pub mod cgroup;
pub mod describe;
pub mod model;
pub mod query;
pub mod sync;
pub mod table;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;

pub use describe::describe;

use crate::dns;
use model::{Desired, Frontend, Proto, Target};

/// Service flags of `agent run`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServiceArgs {
    /// The cgroup (a path in the cgroup v2 hierarchy) whose processes have
    /// ClusterIPs balanced; it must contain --cgroup-root so pods are
    /// covered. Default: --cgroup-root. `/` covers every process on the
    /// machine (only for a machine that runs a single agent).
    #[arg(long)]
    pub service_cgroup: Option<String>,
    /// Leave ClusterIPs alone (another proxy balances them); no cluster
    /// DNS either.
    #[arg(long)]
    pub no_service_proxy: bool,
    /// The cluster DNS address (a ClusterIP) ClusterFirst pods' resolv.conf
    /// names. Every agent answers it for its own pods: names of Services
    /// and pods from the API, other names relayed to the node's resolvers.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: Ipv4Addr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The port of the agent's DNS server on the node's address, where the
    /// cluster DNS address's port 53 is sent.
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Serve no cluster DNS: pods get the node's resolv.conf.
    #[arg(long)]
    pub no_cluster_dns: bool,
}

impl ServiceArgs {
    /// The cluster DNS pods are given, if this agent serves one.
    pub fn cluster_dns(&self) -> Option<dns::ClusterDns> {
        (!self.no_service_proxy && !self.no_cluster_dns).then(|| dns::ClusterDns {
            nameserver: self.cluster_dns,
            domain: self.cluster_domain.trim_matches('.').to_string(),
        })
    }
}

/// What the load balancer needs to know of its node.
pub struct NodeInfo {
    pub name: String,
    /// The node's address, where its DNS server listens.
    pub ip: Ipv4Addr,
    /// The cluster's pod network: the DNS server answers it.
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Pod cgroups live under this path (`--cgroup-root`).
    pub cgroup_root: String,
    /// The agent's bpffs directory.
    pub pin_dir: PathBuf,
}

/// The cgroup v2 directory the programs attach at.
fn attach_point(cgroup_root: &str, args: &ServiceArgs) -> anyhow::Result<PathBuf> {
    let mount = cgroup::v2_mount().context(
        "this host has no cgroup v2 hierarchy, which socket load balancing of ClusterIPs needs",
    )?;
    let at = args.service_cgroup.as_deref().unwrap_or(cgroup_root);
    anyhow::ensure!(
        cgroup::contains(at, cgroup_root),
        "--service-cgroup {at} does not contain --cgroup-root {cgroup_root}: pods would not be balanced"
    );
    let dir = cgroup::group_dir(&mount, at);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    Ok(dir)
}

/// Attaches the load balancer of `node`, starts its DNS server, then
/// keeps both in sync with the API until the agent stops. Failing to
/// attach is logged, not fatal: pods still run, only ClusterIPs do not
/// answer.
pub async fn run(client: kube::Client, node: NodeInfo, args: ServiceArgs) {
    if args.no_service_proxy {
        return;
    }
    let setup = || -> anyhow::Result<table::Table<bpf::KernelMaps>> {
        let dir = attach_point(&node.cgroup_root, &args)?;
        let object = crate::ebpf::object(None)?;
        let maps = bpf::attach(&object, &node.pin_dir, &dir)
            .with_context(|| format!("attaching the load balancer at {}", dir.display()))?;
        let table = table::Table::load(maps)?;
        tracing::info!(cgroup = %dir.display(), "service load balancing attached");
        Ok(table)
    };
    let table = match setup() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("service load balancing is off: {e:#}");
            return;
        }
    };
    let mut local = Vec::new();
    let zone = match args.cluster_dns() {
        Some(cluster) => {
            let zone: dns::SharedZone =
                Arc::new(RwLock::new(dns::zone::Zone::new(&cluster.domain)));
            let bind = std::net::SocketAddr::new(node.ip.into(), args.dns_port);
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let upstream = dns::upstreams(&resolv, cluster.nameserver);
            let served = zone.clone();
            // The cluster's pods, and this node (its own processes, and
            // host-network pods, come from its address or loopback).
            let mut allowed = vec![
                node.cluster_cidr,
                ipnet::Ipv4Net::from(node.ip),
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8)
                    .unwrap_or_else(|_| ipnet::Ipv4Net::from(std::net::Ipv4Addr::LOCALHOST)),
            ];
            allowed.dedup();
            let access = dns::Access::new(allowed, dns::access::MAX_IN_FLIGHT);
            tokio::spawn(async move {
                if let Err(e) = dns::serve(bind, served, upstream, access).await {
                    tracing::error!("cluster DNS on {bind}: {e}");
                }
            });
            tokio::spawn(dns::reserve(client.clone(), cluster.nameserver));
            // The cluster DNS address leads to this node's own server.
            for proto in [Proto::Udp, Proto::Tcp] {
                local.push((
                    Frontend {
                        vip: cluster.nameserver,
                        port: 53,
                        proto,
                    },
                    Desired {
                        active: vec![Target {
                            ip: node.ip,
                            port: args.dns_port,
                        }],
                        ..Default::default()
                    },
                ));
            }
            Some(zone)
        }
        None => None,
    };
    sync::run(client, node.name, node.ip, table, local, zone).await
}

/// For `agent reset`, once the runtime helper was told to exit: removes
/// its cgroup v2 group when it has left it. The load balancer's links go
/// with the other pins in the bpffs directory.
pub fn reset(cgroup_root: &str) {
    if let Some(dir) = cgroup::runtime_group(cgroup_root) {
        cgroup::remove_when_empty(&dir, std::time::Duration::from_secs(5));
    }
}

/// The cgroup v2 group the runtime helper of an agent with `cgroup_root`
/// joins, if the host has a v2 hierarchy.
pub fn runtime_group(cgroup_root: &str) -> Option<PathBuf> {
    cgroup::runtime_group(cgroup_root)
}
