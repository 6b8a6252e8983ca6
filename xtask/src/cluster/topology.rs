//! Where each process of a cluster runs and how the others reach it, from
//! `up`'s arguments.

use std::path::PathBuf;
use std::process::Command;

use super::netns::{cp_address, in_netns, CP_NETNS};
use super::UpArgs;

pub struct Topology {
    /// Control planes (etcd members, API servers, schedulers,
    /// controller-managers): 1, 3, 5 or 7.
    pub cps: u32,
    /// Nodes in namespaces, or None for one node on this machine.
    pub nodes: Option<u32>,
    /// The control plane's namespace, with nodes in namespaces.
    pub cp_ns: Option<&'static str>,
    pub etcd_port: u16,
    pub apiserver_port: u16,
    pub registry_port: u16,
    /// The directory of the binaries `up` built.
    pub bin_dir: PathBuf,
}

impl Topology {
    pub fn new(args: &UpArgs, bin_dir: PathBuf) -> anyhow::Result<Self> {
        let cps = args.control_planes;
        anyhow::ensure!(
            matches!(cps, 1 | 3 | 5 | 7),
            "--control-planes takes 1, 3, 5 or 7: etcd needs a majority of its members"
        );
        // A highly available control plane lives on the node network, so it
        // comes with nodes in namespaces.
        let nodes = match (args.nodes, cps) {
            (Some(n), _) => Some(n),
            (None, 1) => None,
            (None, n) => Some(n),
        };
        if let Some(n) = nodes {
            anyhow::ensure!((1..=50).contains(&n), "--nodes takes 1 to 50");
        }
        Ok(Self {
            cps,
            nodes,
            cp_ns: nodes.map(|_| CP_NETNS),
            etcd_port: args.etcd_port,
            apiserver_port: args.apiserver_port,
            registry_port: args.registry_port,
            bin_dir,
        })
    }

    pub fn control_plane_bin(&self) -> PathBuf {
        self.bin_dir.join("control-plane")
    }

    pub fn agent_bin(&self) -> PathBuf {
        self.bin_dir.join("agent")
    }

    /// Makes `cmd` run where the control plane runs.
    pub fn spawn_in(&self, cmd: &mut Command) -> anyhow::Result<()> {
        if let Some(ns) = self.cp_ns {
            in_netns(cmd, ns)?;
        }
        Ok(())
    }

    /// Component names: `etcd`, or `etcd-1` .. `etcd-N` for several.
    pub fn named(&self, base: &str, i: u32) -> String {
        if self.cps == 1 {
            base.to_string()
        } else {
            format!("{base}-{i}")
        }
    }

    /// Where control plane i listens: loopback for a single node on this
    /// machine; the bridge (all of its addresses) for one control plane
    /// with nodes; its own address for several.
    pub fn listen_host(&self, i: u32) -> String {
        match (self.cp_ns, self.cps) {
            (None, _) => "127.0.0.1".into(),
            (Some(_), 1) => "0.0.0.0".into(),
            (Some(_), _) => cp_address(i),
        }
    }

    /// How the others reach control plane i.
    pub fn reach_host(&self, i: u32) -> String {
        match self.cp_ns {
            None => "127.0.0.1".into(),
            Some(_) => cp_address(i),
        }
    }

    pub fn etcd_urls(&self) -> Vec<String> {
        (1..=self.cps)
            .map(|i| format!("http://{}:{}", self.reach_host(i), self.etcd_port))
            .collect()
    }

    pub fn api_urls(&self) -> Vec<String> {
        (1..=self.cps)
            .map(|i| format!("https://{}:{}", self.reach_host(i), self.apiserver_port))
            .collect()
    }
}
