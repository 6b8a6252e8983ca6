//! The node agent: kubelet, kube-proxy and the CNI in one process.
use anyhow::Context;

pub mod attach;
pub mod config;
pub mod dns;
pub mod ebpf;
pub mod exec;
pub mod image;
pub mod metrics;
pub mod netns;
pub mod network;
pub mod node;
pub mod nodeapi;
pub mod pods;
pub mod policy;
pub mod portforward;
pub mod runtime;
pub mod services;
pub mod stats;

/// Runs the agent: registers the Node, runs the pods bound to it and keeps
/// both reported until SIGTERM. Containers keep running when the agent
/// stops; the next agent adopts them.
pub async fn run(args: config::RunArgs) -> anyhow::Result<()> {
    let cfg = args.node_config()?;
    std::fs::create_dir_all(&cfg.state_dir)?;
    let (client, ca, certs) = args.client_with_credentials().await?;
    node::register(&client, &cfg).await?;
    if let (Some(certs), Some(path)) = (certs, &args.kubeconfig) {
        tokio::spawn(node::credentials::renew_forever(
            client.clone(),
            cfg.name.clone(),
            path.clone(),
            certs,
        ));
    }
    let node_ip = cfg
        .node_ip
        .clone()
        .or_else(|| node::machine::internal_ip().map(|i| i.to_string()));
    let pods = if args.no_pods {
        None
    } else {
        let state = cfg.state_dir.canonicalize()?;
        tracing::info!("connecting to the runtime helper");
        let runtime = runtime::Runtime::connect_or_spawn_in(
            &std::env::current_exe()?,
            &state.join("containers"),
            &state.join("runtime.sock"),
            &state.join("runtime-helper.log"),
            services::runtime_group(&args.cgroup_root).as_deref(),
        )
        .await?;
        tracing::info!("runtime helper ready");
        let images = image::ImageStore::open(&state.join("images"))?;
        let ip: std::net::Ipv4Addr = node_ip
            .as_deref()
            .context("the node has no IPv4 address; pass --node-ip")?
            .parse()
            .context("--node-ip is not an IPv4 address")?;
        let network =
            network::Network::start(&client, &cfg.name, ip, &args.network, &state).await?;
        let recorder = kit::events::Recorder::new(
            client.clone(),
            "kubelet",
            metrics::METRICS.events_dropped.clone(),
        )
        .on_node(&cfg.name);
        tokio::spawn(network::sync_routes(
            client.clone(),
            cfg.name.clone(),
            network.clone(),
            recorder.clone(),
        ));
        tokio::spawn(services::run(
            client.clone(),
            services::NodeInfo {
                name: cfg.name.clone(),
                ip,
                cluster_cidr: args.network.cluster_cidr,
                cgroup_root: args.cgroup_root.clone(),
                pin_dir: network.pin_dir.clone(),
            },
            args.services.clone(),
        ));
        let policy = policy::Engine::new(&cfg.name, ip, &network.pin_dir)?;
        tokio::spawn(policy.clone().run(client.clone()));
        std::fs::create_dir_all(&args.log_dir)?;
        let env = std::sync::Arc::new(pods::Env {
            client: client.clone(),
            recorder,
            runtime,
            images,
            node_name: cfg.name.clone(),
            node_ip,
            pods_dir: state.join("pods"),
            log_dir: args.log_dir.clone(),
            cgroup_root: args.cgroup_root.clone(),
            insecure_registries: args.insecure_registries.clone(),
            network,
            policy,
            dns: args.services.cluster_dns(),
        });
        let runtime = env.runtime.clone();
        let pins = env.network.pin_dir.clone();
        Some((tokio::spawn(pods::run(env)), runtime, pins))
    };
    let runtime = pods.as_ref().map(|p| p.1.clone());
    if let Some((_, _, pins)) = &pods {
        metrics::read_datapath(pins.clone());
    }
    let stats = runtime.clone().map(|r| {
        let sampler = stats::Sampler::new(r, args.log_dir.clone(), args.cgroup_root.clone());
        tokio::spawn(sampler.clone().run());
        sampler
    });
    // Absolute: the runtime helper opens these paths from its own cwd.
    let exec_dir = cfg.state_dir.canonicalize()?.join("exec");
    let pods_dir = (!args.no_pods).then(|| exec_dir.with_file_name("pods"));
    let api = tokio::spawn(nodeapi::serve(
        nodeapi::Listen {
            address: args.node_api_address,
            insecure: args.node_api_insecure_address,
        },
        nodeapi::Dirs {
            log_dir: args.log_dir.clone(),
            exec_dir,
            pods_dir,
        },
        runtime,
        ca,
        stats,
    ));
    let beat = node::heartbeat(client, cfg, || true);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = beat => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some((p, _, _)) = pods {
        p.abort();
    }
    api.abort();
    Ok(())
}

/// Stops every container this node runs, ends the runtime helper, unmounts
/// what pods left mounted under `state_dir`, removes the cgroup root, the
/// routes, the tunnel and the pins, and gives the uplink back its aggregate
/// size: the node is as before the agent ran (images stay).
/// `agent` is the agent binary, which serves as the runtime helper.
pub async fn reset(
    agent: &std::path::Path,
    state_dir: &std::path::Path,
    cgroup_root: &str,
    bpffs_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let state = state_dir.canonicalize()?;
    let socket = state.join("runtime.sock");
    if let Ok(r) = runtime::Runtime::connect_or_spawn(
        agent,
        &state.join("containers"),
        &socket,
        &state.join("runtime-helper.log"),
    )
    .await
    {
        for c in r.list().await.unwrap_or_default() {
            if let Err(e) = r.delete(&c.id, true).await {
                tracing::warn!("deleting container {}: {e}", c.id);
            }
        }
        let _ = r.shutdown().await;
    }
    services::reset(cgroup_root);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = state.to_string_lossy().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = std::fs::remove_dir_all(state.join("pods"));
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let dir = e.path().join(cgroup_root.trim_start_matches('/'));
            if let Ok(pods) = std::fs::read_dir(&dir) {
                for p in pods.flatten().filter(|p| p.path().is_dir()) {
                    pods::worker::remove_cgroup(&format!(
                        "{cgroup_root}/{}",
                        p.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    pods::worker::remove_cgroup(cgroup_root);
    // Pods are gone, and with their namespaces their veths: what is left of
    // the network is the address leases, the routes and the pins.
    let _ = std::fs::remove_dir_all(state.join("cni"));
    if let Err(e) = network::restore_uplink(&state).await {
        tracing::warn!("restoring the uplink: {e:#}");
    }
    if let Ok(routes) = network::routes::Routes::new() {
        if let Err(e) = routes.sync(&[]).await {
            tracing::warn!("removing node routes: {e}");
        }
        if let Err(e) = network::vxlan::remove_device(routes.handle()).await {
            tracing::warn!("removing the VXLAN device: {e}");
        }
    }
    if let Some(dir) = bpffs_dir {
        network::datapath::remove_pins(dir)?;
        // Nodes share the parent (/sys/fs/bpf/kestrel); the last one to
        // go removes it, while others still pin there it stays.
        if let Some(parent) = dir.parent().filter(|p| p.ends_with("kestrel")) {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}
