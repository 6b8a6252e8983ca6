//! The node agents: one on this machine, or one per node namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::component::Component;
use super::netns::{in_netns, node_netns, CP_ADDRESS};
use super::topology::Topology;
use super::{pki, state_dir};
use crate::setup::kubectl_path;
use crate::util;

/// A node of the cluster.
pub struct Node {
    pub name: String,
    /// Its namespace, or None for the node on this machine.
    ns: Option<String>,
    /// The agent's state directory.
    dir: PathBuf,
}

impl Node {
    fn component(&self) -> Component {
        Component::named(match self.ns {
            Some(_) => format!("agent-{}", self.name),
            None => "agent".into(),
        })
    }
}

/// The node on this machine: named after the host, as kubelet does.
fn host_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

fn nodes(t: &Topology) -> Vec<Node> {
    match t.nodes {
        None => vec![Node {
            name: host_node_name(),
            ns: None,
            dir: state_dir().join("agent"),
        }],
        Some(n) => (1..=n)
            .map(|i| {
                let name = format!("kestrel-node-{i}");
                let dir = state_dir().join("nodes").join(&name);
                Node {
                    name,
                    ns: Some(node_netns(i)),
                    dir,
                }
            })
            .collect(),
    }
}

/// Starts every node's agent, pulling from `registry` if there is one, and
/// waits until each node is Ready.
pub fn start(t: &Topology, kubeconfig: &Path, registry: Option<&str>) -> anyhow::Result<Vec<Node>> {
    let nodes = nodes(t);
    util::step(&format!("starting {} node agent(s)", nodes.len()));
    for node in &nodes {
        start_agent(t, node, registry)?;
    }
    for node in &nodes {
        node.component().wait_ready(Duration::from_secs(90), || {
            Command::new(kubectl_path())
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args([
                    "get",
                    "node",
                    &node.name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .output()
                .is_ok_and(|o| o.stdout == b"True")
        })?;
        eprintln!("    node {} is Ready", node.name);
    }
    Ok(nodes)
}

fn start_agent(t: &Topology, node: &Node, registry: Option<&str>) -> anyhow::Result<()> {
    let agent = t.agent_bin();
    let dir = &node.dir;
    std::fs::create_dir_all(dir)?;
    let server = match t.cp_ns {
        Some(_) => format!("https://{CP_ADDRESS}:{}", t.apiserver_port),
        None => format!("https://127.0.0.1:{}", t.apiserver_port),
    };
    // The agent authenticates as its node, with a certificate from the CA.
    let node_kubeconfig = dir.join("kubeconfig");
    pki::node_kubeconfig(t, &node.name, &server, &node_kubeconfig)?;
    // A busybox image from Debian's busybox-static, so pods run without
    // a registry.
    let archive = state_dir().join("busybox.tar");
    if !archive.exists() {
        util::run(
            Command::new(&agent)
                .args(["image", "build-busybox"])
                .arg(&archive)
                .arg("--state-dir")
                .arg(dir),
        )?;
    }
    if !dir.join("images").exists() {
        util::run(
            Command::new(&agent)
                .args(["image", "import"])
                .arg(&archive)
                .arg("--state-dir")
                .arg(dir),
        )?;
    }
    let mut cmd = Command::new(&agent);
    cmd.arg("run")
        .arg("--kubeconfig")
        .arg(&node_kubeconfig)
        // Every API server: with several, the agent fails over.
        .arg(format!("--master={}", t.api_urls().join(",")))
        .args(registry.iter().map(|r| format!("--insecure-registry={r}")))
        .arg("--node-name")
        .arg(&node.name)
        .arg("--state-dir")
        .arg(dir);
    if let Some(ns) = &node.ns {
        cmd.arg("--log-dir")
            .arg(dir.join("pod-logs"))
            .arg("--cgroup-root")
            .arg(format!("/{}", node.name));
        in_netns(&mut cmd, ns)?;
    } else {
        // The only agent on this machine: every process of it reaches
        // ClusterIPs, as with kube-proxy.
        cmd.arg("--log-dir")
            .arg(state_dir().join("logs").join("pods"))
            .args(["--service-cgroup", "/"]);
    }
    node.component().start(&mut cmd)
}
