//! The node agent: kubelet, kube-proxy and the CNI in one process.
pub mod config;
pub mod ebpf;
pub mod image;
pub mod netns;
pub mod node;
pub mod pods;
pub mod runtime;

/// Runs the agent: registers the Node, runs the pods bound to it and keeps
/// both reported until SIGTERM. Containers keep running when the agent
/// stops; the next agent adopts them.
pub async fn run(args: config::RunArgs) -> anyhow::Result<()> {
    let cfg = args.node_config()?;
    std::fs::create_dir_all(&cfg.state_dir)?;
    let client = args.client().await?;
    node::register(&client, &cfg).await?;
    let node_ip = cfg
        .node_ip
        .clone()
        .or_else(|| node::machine::internal_ip().map(|i| i.to_string()));
    let pods = if args.no_pods {
        None
    } else {
        let state = cfg.state_dir.canonicalize()?;
        let runtime = runtime::Runtime::connect_or_spawn(
            &std::env::current_exe()?,
            &state.join("containers"),
            &state.join("runtime.sock"),
            &state.join("runtime-helper.log"),
        )
        .await?;
        let images = image::ImageStore::open(&state.join("images"))?;
        std::fs::create_dir_all(&args.log_dir)?;
        let env = std::sync::Arc::new(pods::Env {
            client: client.clone(),
            runtime,
            images,
            node_name: cfg.name.clone(),
            node_ip,
            pods_dir: state.join("pods"),
            log_dir: args.log_dir.clone(),
            cgroup_root: args.cgroup_root.clone(),
        });
        Some(tokio::spawn(pods::run(env)))
    };
    let beat = node::heartbeat(client, cfg, || true);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = beat => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some(p) = pods {
        p.abort();
    }
    Ok(())
}
