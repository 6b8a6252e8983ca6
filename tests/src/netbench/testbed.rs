//! The paths `bench-net` measures, built from namespaces of its own: a
//! plain veth pair, the reference bridge plugin's nodes and pods, and the
//! real control plane with two agents and their pods.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::bridge_cni::CniNode;
use super::chart::Family;
use super::{check_interrupted, interrupted, Pair};
use crate::cluster::ControlPlane;
use crate::kubectl::Kubectl;
use crate::net::{veth_between, Netns, Segment};
use crate::node::Node;

/// Indices into the case list, in the order `build` makes them.
pub const VETH: usize = 0;
pub const NODE_TO_NODE: usize = 1;
pub const OURS_SAME: usize = 2;
pub const OURS_CROSS: usize = 3;
pub const BRIDGE_SAME: usize = 4;
pub const BRIDGE_CROSS: usize = 5;
pub const LEGACY_SAME: usize = 6;
pub const LEGACY_CROSS: usize = 7;
pub const VXLAN_CROSS: usize = 8;
pub const NODE_TO_NODE_VXLAN: usize = 9;
pub const VXLAN_DEVICE_CROSS: usize = 10;

/// What the agents of the 64 KiB rows are told: the aggregate size every
/// interface starts with, so those rows show what BIG TCP brings.
const LEGACY_AGGREGATES: &[&str] = &["--gso-max-size", "65536"];

/// What the agents of the VXLAN row are told: pods reach the other node
/// through the tunnel instead of native routes.
const VXLAN: &[&str] = &["--tunnel", "vxlan"];
/// The same, with the kernel's VXLAN device wrapping what pods send
/// instead of the programs: what the programs' own encapsulation is worth.
const VXLAN_DEVICE: &[&str] = &["--tunnel", "vxlan", "--vxlan-encap", "device"];

/// One measured path.
pub struct Case {
    /// Row heading in the table.
    pub title: &'static str,
    /// Bar label in the chart.
    pub short: &'static str,
    pub family: Family,
    pub pair: Pair,
}

/// Everything the paths are made of, removed on drop in field order: the
/// agents' nodes (their pods first) before the control plane they talk to.
pub struct Testbed {
    pub nodes: Vec<Node>,
    _cp: ControlPlane,
    _cni_nodes: Vec<CniNode>,
    _cni_segment: Segment,
    _veth: (Netns, Netns),
    pub cases: Vec<Case>,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Ctrl-C reaches the API server too: deleting the pods through it
        // would only wait out kubectl's timeouts. Without an agent process
        // the node's drop skips that, and its `agent reset` stops the pods'
        // containers and removes their sandboxes all the same.
        if interrupted() {
            for n in &mut self.nodes {
                n.proc = None;
            }
        }
    }
}

/// Two namespaces joined by one veth pair.
fn plain_veth() -> Result<((Netns, Netns), Pair)> {
    let a = Netns::new("va")?;
    let b = Netns::new("vb")?;
    let (in_a, in_b) = veth_between(&a, &b, "v")?;
    a.addr_up(&in_a, "10.98.0.1/24")?;
    b.addr_up(&in_b, "10.98.0.2/24")?;
    let pair = Pair::new(a.path(), b.path(), "10.98.0.2".parse()?);
    Ok(((a, b), pair))
}

/// What [`bridge_plugin`] builds.
struct BridgeBed {
    segment: Segment,
    nodes: Vec<CniNode>,
    /// The nodes themselves, over the segment.
    node_to_node: Pair,
    /// The nodes through a VXLAN tunnel between them.
    node_to_node_vxlan: Pair,
    same: Pair,
    cross: Pair,
}

/// Two nodes with the bridge plugin: pods 0 and 1 on the first, pod 0 on
/// the second, and a VXLAN tunnel between the nodes.
fn bridge_plugin() -> Result<BridgeBed> {
    let segment = Segment::new()?;
    let mut n1 = CniNode::new(&segment, 1)?;
    let mut n2 = CniNode::new(&segment, 2)?;
    n1.route_to(&n2)?;
    n2.route_to(&n1)?;
    n1.tunnel_to(&n2, "10.97.0.1")?;
    n2.tunnel_to(&n1, "10.97.0.2")?;
    let node_to_node_vxlan = Pair::new(n1.netns.path(), n2.netns.path(), "10.97.0.2".parse()?);
    n1.add_pod()?;
    n1.add_pod()?;
    n2.add_pod()?;
    // The nodes themselves: the segment's veths and bridge, no pod link.
    let nodes = Pair::new(n1.netns.path(), n2.netns.path(), n2.ip.parse()?);
    let same = Pair::new(
        n1.pods[0].netns.path(),
        n1.pods[1].netns.path(),
        n1.pods[1].ip,
    );
    let cross = Pair::new(
        n1.pods[0].netns.path(),
        n2.pods[0].netns.path(),
        n2.pods[0].ip,
    );
    Ok(BridgeBed {
        segment,
        nodes: vec![n1, n2],
        node_to_node: nodes,
        node_to_node_vxlan,
        same,
        cross,
    })
}

/// A pod that only holds its sandbox: the measuring processes join its
/// network namespace from outside.
pub fn pod_yaml(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  \
         terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: busybox, command: [sleep, '3600']}}\n---\n"
    )
}

/// The network namespace and address of pod `name` on `node`, once it runs.
pub fn pod_endpoint(k: &Kubectl, name: &str, node: &Node) -> Result<(PathBuf, Ipv4Addr)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        check_interrupted()?;
        if let Ok(out) = k.run(&["get", "pod", name, "-o", "json"]) {
            let p: Value = serde_json::from_str(&out)?;
            let ip = p["status"]["podIP"].as_str().and_then(|s| s.parse().ok());
            let uid = p["metadata"]["uid"].as_str();
            if let (true, Some(ip), Some(uid)) = (p["status"]["phase"] == "Running", ip, uid) {
                // Where the agent bind-mounts the pod's namespace.
                let ns = node
                    .state
                    .path()
                    .join("pods")
                    .join(uid)
                    .join("sandbox/ns/net");
                ensure!(
                    ns.exists(),
                    "pod {name} runs but {} is missing",
                    ns.display()
                );
                return Ok((ns, ip));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "pod {name} not Running with an IP after 90 s\n{}",
                node.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two agents started with `agent_args`; pods `{tag}1` and `{tag}2` on the
/// first node, `{tag}3` on the second. Returns (nodes, same-node,
/// cross-node).
fn ebpf_datapath(
    cp: &ControlPlane,
    tag: &str,
    agent_args: &[&str],
) -> Result<(Vec<Node>, Pair, Pair)> {
    let n1 = Node::start_with(cp, agent_args);
    let n2 = Node::start_with(cp, agent_args);
    let k = cp.kubectl();
    let names = [1, 2, 3].map(|i| format!("{tag}{i}"));
    let yaml = pod_yaml(&names[0], &n1.name)
        + &pod_yaml(&names[1], &n1.name)
        + &pod_yaml(&names[2], &n2.name);
    let out = k.run_stdin(&["apply", "-f", "-"], &yaml)?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a1, _) = pod_endpoint(&k, &names[0], &n1)?;
    let (a2, a2_ip) = pod_endpoint(&k, &names[1], &n1)?;
    let (b1, b1_ip) = pod_endpoint(&k, &names[2], &n2)?;
    let same = Pair::new(a1.clone(), a2, a2_ip);
    let cross = Pair::new(a1, b1, b1_ip);
    Ok((vec![n1, n2], same, cross))
}

/// Builds every path; the agents' pods are running and addressed when it
/// returns.
pub fn build() -> Result<Testbed> {
    eprintln!("  plain veth pair");
    let (veth, veth_pair) = plain_veth()?;
    eprintln!("  bridge plugin: two nodes, three pods");
    let bridge = bridge_plugin()?;
    eprintln!("  control plane and two agents, three pods");
    let cp = ControlPlane::start_networked(&[])?;
    let (mut nodes, ours_same, ours_cross) = ebpf_datapath(&cp, "a", &[])?;
    eprintln!("  two more agents at 64 KiB aggregates, three pods");
    let (legacy_nodes, legacy_same, legacy_cross) = ebpf_datapath(&cp, "l", LEGACY_AGGREGATES)?;
    nodes.extend(legacy_nodes);
    eprintln!("  two more agents with VXLAN between them, three pods");
    // Their same-node pair is the native one's: only the tunnel is new.
    let (vxlan_nodes, _, vxlan_cross) = ebpf_datapath(&cp, "x", VXLAN)?;
    nodes.extend(vxlan_nodes);
    eprintln!("  two more agents with VXLAN wrapped by the device, three pods");
    let (device_nodes, _, device_cross) = ebpf_datapath(&cp, "d", VXLAN_DEVICE)?;
    nodes.extend(device_nodes);
    let cases = vec![
        Case {
            title: "plain veth pair (the limit)",
            short: "veth",
            family: Family::Veth,
            pair: veth_pair,
        },
        Case {
            title: "node to node over the segment bridge (the limit across nodes)",
            short: "node to node",
            family: Family::Veth,
            pair: bridge.node_to_node,
        },
        Case {
            title: "eBPF datapath, pod to pod, same node",
            short: "ours, 1 node",
            family: Family::Ours,
            pair: ours_same,
        },
        Case {
            title: "eBPF datapath, pod to pod, two nodes",
            short: "ours, 2 nodes",
            family: Family::Ours,
            pair: ours_cross,
        },
        Case {
            title: "bridge plugin, pod to pod, same node",
            short: "bridge, 1 node",
            family: Family::Bridge,
            pair: bridge.same,
        },
        Case {
            title: "bridge plugin, pod to pod, two nodes",
            short: "bridge, 2 nodes",
            family: Family::Bridge,
            pair: bridge.cross,
        },
        Case {
            title: "eBPF datapath at 64 KiB aggregates, same node",
            short: "ours 64K, 1 node",
            family: Family::Ours,
            pair: legacy_same,
        },
        Case {
            title: "eBPF datapath at 64 KiB aggregates, two nodes",
            short: "ours 64K, 2 nodes",
            family: Family::Ours,
            pair: legacy_cross,
        },
        Case {
            title: "eBPF datapath, pod to pod, two nodes over VXLAN",
            short: "ours VXLAN, 2 nodes",
            family: Family::Ours,
            pair: vxlan_cross,
        },
        Case {
            title: "node to node over VXLAN (the limit through a tunnel)",
            short: "node to node VXLAN",
            family: Family::Veth,
            pair: bridge.node_to_node_vxlan,
        },
        Case {
            title: "eBPF datapath, two nodes over VXLAN wrapped by the kernel's device",
            short: "ours VXLAN device, 2 nodes",
            family: Family::Ours,
            pair: device_cross,
        },
    ];
    Ok(Testbed {
        nodes,
        _cp: cp,
        _cni_nodes: bridge.nodes,
        _cni_segment: bridge.segment,
        _veth: veth,
        cases,
    })
}

/// A decision counter of `node`'s eBPF programs, as `agent bpf status`
/// prints it.
fn counter(node: &Node, name: &str) -> Result<u64> {
    let status = node.bpf_status();
    status
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .with_context(|| format!("no counter {name} in:\n{status}"))
}

/// The counters that show pod traffic took the programs: (node index,
/// counter) for same-node delivery, leaving for the other node, and
/// arriving from it.
pub const COUNTERS: [(usize, &str); 3] = [
    (0, "pod_to_local_pod"),
    (0, "pod_to_remote_node"),
    (1, "uplink_to_local_pod"),
];

/// The current values of [`COUNTERS`].
pub fn counters(nodes: &[Node]) -> Result<Vec<u64>> {
    COUNTERS
        .iter()
        .map(|(n, name)| counter(&nodes[*n], name))
        .collect()
}
