//! `control-plane`: the API server, scheduler and controller-manager.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "control-plane",
    version,
    about = "Kubernetes-compatible control plane over etcd"
)]
struct Cli {
    #[command(subcommand)]
    component: Component,
}

#[derive(Subcommand)]
enum Component {
    /// The API server: Kubernetes REST and watch over etcd.
    Apiserver(kestrel_control_plane::apiserver::Config),
    /// The scheduler: binds pending pods to nodes.
    Scheduler(kestrel_control_plane::scheduler::Config),
    /// The controller-manager: replication, deployments, nodes, endpoints,
    /// namespaces and garbage collection.
    ControllerManager(kestrel_control_plane::controllers::Config),
    /// Simulated nodes: Node objects, Leases and a stand-in kubelet that
    /// marks their pods Running, for tests and benchmarks at scale.
    HollowNodes(kestrel_control_plane::hollow::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().component {
        Component::Apiserver(config) => kestrel_control_plane::apiserver::run(config).await,
        Component::Scheduler(config) => kestrel_control_plane::scheduler::run(config).await,
        Component::HollowNodes(config) => kestrel_control_plane::hollow::run(config).await,
        Component::ControllerManager(config) => {
            kestrel_control_plane::controllers::run(config).await
        }
    }
}
