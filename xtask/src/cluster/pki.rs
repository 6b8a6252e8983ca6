//! Credentials the cluster's CA (in `.cluster/pki/`, made by the first API
//! server) issues.

use std::path::Path;
use std::process::Command;

use super::state_dir;
use super::topology::Topology;
use crate::util;

/// Writes a kubeconfig for node `node` at `out`: a client certificate for
/// `system:node:<node>` in `system:nodes`, for the API server at `server`.
pub fn node_kubeconfig(t: &Topology, node: &str, server: &str, out: &Path) -> anyhow::Result<()> {
    util::run(
        Command::new(t.control_plane_bin())
            .arg("kubeconfig")
            .arg(format!("--cert-dir={}", state_dir().join("pki").display()))
            .arg(format!("--user=system:node:{node}"))
            .arg("--group=system:nodes")
            .arg(format!("--server={server}"))
            .arg("--out")
            .arg(out),
    )
}
