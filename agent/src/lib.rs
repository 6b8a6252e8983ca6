//! The node agent: kubelet, kube-proxy and the CNI in one process.
pub mod config;
pub mod ebpf;
pub mod image;
pub mod netns;
pub mod node;
pub mod pods;
pub mod runtime;

/// Runs the agent: registers the Node and keeps it reported until SIGTERM.
pub async fn run(args: config::RunArgs) -> anyhow::Result<()> {
    let cfg = args.node_config()?;
    std::fs::create_dir_all(&cfg.state_dir)?;
    let client = args.client().await?;
    node::register(&client, &cfg).await?;
    let beat = node::heartbeat(client, cfg, || true);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = beat => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
