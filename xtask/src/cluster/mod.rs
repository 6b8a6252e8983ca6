//! `cargo xtask up` and `cargo xtask down`: a local cluster whose state
//! lives in `.cluster/` at the workspace root.
//!
//! Layout: `etcd/` (data, kept across restarts), `pki/` (kept), `kubeconfig`,
//! `run/<component>.pid` and `logs/<component>.log`.

mod component;
mod control_plane;
mod etcd;
mod image;
mod netns;
mod nodes;
mod pki;
mod registry;
mod topology;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::util;
use component::{all_components, reap};
pub use image::{image, ImageTask};
use netns::{build_namespaces, existing_nodes, in_netns, ip, node_netns, CP_ADDRESS, CP_NETNS};
use topology::Topology;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Return once the cluster is ready and leave it running.
    #[arg(long)]
    pub detach: bool,
    /// etcd client port on 127.0.0.1.
    #[arg(long, default_value_t = 2379)]
    pub etcd_port: u16,
    /// API server port on 127.0.0.1.
    #[arg(long, default_value_t = 6443)]
    pub apiserver_port: u16,
    /// Build and run debug binaries (faster to build, slower to run).
    #[arg(long)]
    pub debug: bool,
    /// A cluster of N nodes, each a network namespace on a bridge in the
    /// control plane's namespace, instead of one node on this machine.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// A highly available control plane: N etcd members, API servers,
    /// schedulers and controller-managers (leader-elected), control plane
    /// i at 10.99.0.i; every agent fails over between the API servers.
    /// Runs in namespaces, with as many nodes as control planes unless
    /// --nodes says otherwise.
    #[arg(long, default_value_t = 1)]
    pub control_planes: u32,
    /// Also run a cluster-local image registry (Debian's docker-registry,
    /// data in .cluster/registry) that every node pulls from over plain
    /// HTTP; `cargo xtask image push` fills it.
    #[arg(long)]
    pub registry: bool,
    /// The registry's port.
    #[arg(long, default_value_t = 5000)]
    pub registry_port: u16,
}

#[derive(clap::Args)]
pub struct DownArgs {
    /// Also delete the cluster's data (etcd, certificates, kubeconfig).
    #[arg(long)]
    pub purge: bool,
}

fn state_dir() -> PathBuf {
    util::root().join(".cluster")
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    crate::setup::run(false)?;
    let t = Topology::new(&args, build(args.debug)?)?;
    if let Some(n) = t.nodes {
        util::step(&format!(
            "building the network: namespace {CP_NETNS} (bridge at {CP_ADDRESS}) and {n} node namespaces"
        ));
        build_namespaces(n, t.cps)?;
    }
    etcd::start(&t)?;
    let kubeconfig = control_plane::start_apiservers(&t)?;
    control_plane::start_controllers(&t)?;
    let registry = match args.registry {
        true => Some(registry::start(&t)?),
        false => None,
    };
    let nodes = nodes::start(&t, &kubeconfig, registry.as_deref())?;
    print_ready(&t, &kubeconfig, nodes.len(), registry.as_deref());
    if args.detach {
        eprintln!("the cluster keeps running; stop it with `cargo xtask down`");
        return Ok(());
    }
    run_until_interrupted();
    down(DownArgs { purge: false })
}

/// Builds the binaries and returns their directory.
fn build(debug: bool) -> anyhow::Result<PathBuf> {
    util::step("building the binaries");
    let mut build = vec!["build", "--workspace", "--bins"];
    if !debug {
        build.push("--release");
    }
    util::cargo(&build)?;
    let profile = if debug { "debug" } else { "release" };
    Ok(util::root().join("target").join(profile))
}

fn print_ready(t: &Topology, kubeconfig: &Path, nodes: usize, registry: Option<&str>) {
    eprintln!();
    if t.cps == 1 {
        eprintln!(
            "the cluster is ready: API server at https://127.0.0.1:{}, {nodes} node(s)",
            t.apiserver_port,
        );
    } else {
        eprintln!(
            "the cluster is ready: {} control planes, API servers at https://127.0.0.1:{}..{} \
             (the kubeconfig names the first; `kubectl --server` picks another), {nodes} node(s)",
            t.cps,
            t.apiserver_port,
            t.apiserver_port + t.cps as u16 - 1,
        );
    }
    eprintln!();
    eprintln!("    export KUBECONFIG={}", kubeconfig.display());
    eprintln!("    kubectl get nodes -o wide");
    eprintln!("    kubectl run hello --image=busybox --restart=Never -- echo hello");
    eprintln!();
    if let Some(addr) = registry {
        eprintln!("the cluster registry is at {addr}; fill it from an image archive and run it:");
        eprintln!("    cargo xtask image push app.tar {addr}/app:1");
        eprintln!("    kubectl create deployment app --image={addr}/app:1");
        eprintln!();
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Waits for Ctrl-C (or SIGTERM), or for a component to exit.
fn run_until_interrupted() {
    eprintln!("press Ctrl-C to stop the cluster");
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        reap();
        for c in all_components() {
            if c.pid().is_none() {
                eprintln!("{} exited; see {}", c.name, c.log_file().display());
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        }
    }
    eprintln!();
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    util::step("stopping the cluster");
    for c in all_components().iter().rev() {
        c.stop();
    }
    // Containers outlive the agent by design; a stopped cluster runs none.
    let agent = ["release", "debug"]
        .iter()
        .map(|p| util::root().join("target").join(p).join("agent"))
        .find(|p| p.exists());
    let mut nodes: Vec<(PathBuf, Option<String>, String)> =
        vec![(state_dir().join("agent"), None, "/kestrel".to_string())];
    for i in existing_nodes() {
        let name = format!("kestrel-node-{i}");
        nodes.push((
            state_dir().join("nodes").join(&name),
            Some(node_netns(i)),
            format!("/{name}"),
        ));
    }
    for (dir, ns, cgroup_root) in nodes {
        let Some(agent) = &agent else { break };
        if !dir.join("runtime.sock").exists() && ns.is_none() {
            continue;
        }
        let mut cmd = Command::new(agent);
        cmd.arg("reset")
            .arg("--state-dir")
            .arg(&dir)
            .arg("--cgroup-root")
            .arg(&cgroup_root);
        if let Some(ns) = &ns {
            let name = ns.clone();
            cmd.arg("--bpffs-dir")
                .arg(Path::new("/sys/fs/bpf/kestrel").join(&name));
            in_netns(&mut cmd, ns)?;
        }
        if dir.exists() {
            let _ = util::run(&mut cmd);
        }
    }
    eprintln!("    containers stopped");
    // The namespaces go with everything in them; data stays for the next
    // `up`.
    for i in existing_nodes() {
        let _ = ip(&["netns", "delete", &node_netns(i)]);
    }
    if Path::new("/run/netns").join(CP_NETNS).exists() {
        let _ = ip(&["netns", "delete", CP_NETNS]);
        eprintln!("    network namespaces removed");
    }
    let _ = std::fs::remove_dir_all(state_dir().join("run"));
    if args.purge {
        remove_all(&state_dir())?;
        eprintln!("    removed {}", state_dir().display());
    }
    Ok(())
}

fn remove_all(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
