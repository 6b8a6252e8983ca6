//! The controller-manager: one loop per kind of desired state, each a small
//! reconcile function over watched objects (see `replicaset`, `deployment`,
//! `daemonset`, `statefulset`, `job`, `nodelifecycle`, `nodeipam`, `endpoints`, `namespace`,
//! `garbagecollector`, `serviceaccounts`, `volume`). They share caches, events and leader election.

pub mod context;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod garbagecollector;
pub mod history;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod serviceaccounts;
pub mod statefulset;
pub mod volume;

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use kube::Api;

use crate::component::events::Recorder;
use crate::component::health::Health;
use crate::component::leader::{self, LeaderArgs};
use crate::component::ClientArgs;
use context::{Context, Expectations};

/// Flags of `control-plane controller-manager`.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Where /healthz, /readyz and /metrics are served (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:10257")]
    pub bind_address: SocketAddr,
    /// Objects of one kind reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrent_syncs: u16,
    /// How often node health is checked (seconds).
    #[arg(long, default_value_t = 5)]
    pub node_monitor_period: u64,
    /// A node whose Lease and status are not renewed for this long
    /// (seconds) becomes Unknown and is tainted unreachable.
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// Nodes per second tainted for eviction in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,
    /// Nodes per second tainted for eviction in a partly disrupted zone
    /// larger than --large-cluster-size-threshold (smaller ones stop).
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,
    /// Fraction of NotReady nodes (more than two) from which a zone is
    /// partly disrupted.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,
    /// Zones of at most this many nodes evict nothing when partly disrupted.
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,
    /// Give every node a podCIDR from --cluster-cidr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub allocate_node_cidrs: bool,
    /// The pod network, split into one range per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: nodeipam::Cidr,
    /// Prefix length of each node's podCIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// The cluster CA (PEM), published to every namespace as ConfigMap
    /// kube-root-ca.crt (default: the CA the kubeconfig trusts; with
    /// neither nothing is published).
    #[arg(long)]
    pub root_ca_file: Option<std::path::PathBuf>,
    /// Create the default StorageClass `local-path` (volumes are
    /// directories on the node their first pod is scheduled to).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_storage_class: bool,
    /// Image of the pod that removes a deleted local-path volume's
    /// directory on its node (it runs `rm -rf`).
    #[arg(long, default_value = "busybox")]
    pub local_path_helper_image: String,
}

/// Runs every controller until SIGTERM or loss of leadership.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Flags are checked before anything starts.
    anyhow::ensure!(
        !config.allocate_node_cidrs
            || (config.node_cidr_mask_size >= config.cluster_cidr.len
                && config.node_cidr_mask_size <= 30),
        "--node-cidr-mask-size {} does not fit in --cluster-cidr {}",
        config.node_cidr_mask_size,
        config.cluster_cidr
    );
    // Read once at start, so a wrong path fails the start, not a loop.
    let root_ca = match &config.root_ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--root-ca-file {}: {e}", p.display()))?,
        ),
        None => config.client.trusted_ca().await?,
    };
    let client = config.client.client().await?;
    let health = Health::new();
    let addr = health.serve(config.bind_address).await?;
    tracing::info!("controller-manager health and metrics on http://{addr}");
    let leader = config.leader.clone();
    leader::while_leading(client.clone(), "kube-controller-manager", &leader, || {
        run_controllers(client, config, health, root_ca)
    })
    .await
}

/// Starts every controller; returns when one of them stops.
async fn run_controllers(
    client: kube::Client,
    config: Config,
    health: Health,
    root_ca: Option<String>,
) -> anyhow::Result<()> {
    let pod_feed = context::PodFeed::start(Api::<Pod>::all(client.clone()));
    let pods = pod_feed.store();
    let dropped = health.metrics.counter(
        "controller_events_dropped_total",
        "Events dropped under load.",
    );
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "controller-manager", dropped),
        client: client.clone(),
        pods: pods.clone(),
        pod_feed,
        expectations: Expectations::default(),
        metrics: health.metrics.clone(),
    });
    pods.wait_until_ready()
        .await
        .map_err(|e| anyhow::anyhow!("pod cache: {e}"))?;
    health
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);

    let n = config.concurrent_syncs.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(replicaset::run::<ReplicaSet>(ctx.clone(), n));
    tasks.spawn(replicaset::run::<ReplicationController>(ctx.clone(), n));
    tasks.spawn(deployment::run(ctx.clone(), n));
    tasks.spawn(job::run(ctx.clone(), n));
    tasks.spawn(cronjob::run(ctx.clone(), n));
    tasks.spawn(hpa::run(ctx.clone()));
    tasks.spawn(daemonset::run(ctx.clone(), n));
    tasks.spawn(statefulset::run(ctx.clone(), n));
    tasks.spawn(garbagecollector::run(ctx.clone()));
    tasks.spawn(namespace::run(ctx.clone()));
    tasks.spawn(serviceaccounts::run(ctx.clone(), root_ca));
    tasks.spawn(endpoints::run(ctx.clone(), n));
    tasks.spawn(volume::run(
        ctx.clone(),
        volume::Settings {
            default_class: config.default_storage_class,
            helper_image: config.local_path_helper_image.clone(),
        },
        n,
    ));
    tasks.spawn(nodelifecycle::run(
        ctx.clone(),
        nodelifecycle::Settings {
            period: std::time::Duration::from_secs(config.node_monitor_period.max(1)),
            grace: std::time::Duration::from_secs(config.node_monitor_grace_period.max(1)),
            eviction: nodelifecycle::Policy {
                eviction_rate: config.node_eviction_rate,
                secondary_eviction_rate: config.secondary_node_eviction_rate,
                unhealthy_zone_threshold: config.unhealthy_zone_threshold,
                large_cluster_size: config.large_cluster_size_threshold,
            },
        },
    ));
    if config.allocate_node_cidrs {
        tasks.spawn(nodeipam::run(
            client.clone(),
            config.cluster_cidr,
            config.node_cidr_mask_size,
        ));
    }
    tasks.join_next().await;
    anyhow::bail!("a controller stopped")
}
