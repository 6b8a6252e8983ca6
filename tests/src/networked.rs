//! A cluster on a node network, as the stories about pods on real nodes use
//! one: the control plane, the scheduler and the controller-manager, and
//! agents in network namespaces of their own. Nodes bring their own pod
//! CIDRs (`--pod-cidr`), so the controller-manager allocates none.

use crate::cluster::ControlPlane;
use crate::kubectl::Kubectl;
use crate::node::Node;
use crate::process::Guarded;

pub struct NetCluster {
    // Nodes first: dropping them deletes their pods through the API.
    pub nodes: Vec<Node>,
    _components: Vec<Guarded>,
    pub k: Kubectl,
    pub cp: ControlPlane,
}

impl NetCluster {
    /// `nodes` nodes on a TLS control plane, every component and node
    /// under its own user.
    pub fn start(nodes: usize) -> Self {
        Self::assemble(ControlPlane::start_networked_tls(&[]).unwrap(), nodes, &[])
    }

    /// `nodes` nodes on a plain HTTP control plane (the agents' metrics
    /// are then plain HTTP too), with extra `agent run` flags on each.
    pub fn start_plain(nodes: usize, agent_args: &[&str]) -> Self {
        let cp = ControlPlane::start_networked(&[]).unwrap();
        Self::assemble(cp, nodes, agent_args)
    }

    fn assemble(cp: ControlPlane, nodes: usize, agent_args: &[&str]) -> Self {
        let k = cp.kubectl();
        let components = vec![
            cp.component("scheduler", &["scheduler"]).unwrap(),
            cp.component(
                "controller-manager",
                &["controller-manager", "--allocate-node-cidrs", "false"],
            )
            .unwrap(),
        ];
        let nodes = (0..nodes)
            .map(|_| Node::start_with(&cp, agent_args))
            .collect();
        Self {
            nodes,
            _components: components,
            k,
            cp,
        }
    }

    /// `kubectl apply` of `yaml`; fails the test with kubectl's stderr.
    pub fn apply(&self, yaml: &str) {
        self.k.apply(yaml);
    }

    /// The last `lines` lines of every agent's log and of the
    /// controller-manager's, for a failure message.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out += &format!("--- agent {}\n{}\n", n.name, tail(&n.log(), lines));
        }
        let cm = self.cp.log("controller-manager");
        out += &format!("--- controller-manager\n{}\n", tail(&cm, lines));
        out
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
