//! `cargo xtask image`: images for the local cluster's nodes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::component::Component;
use super::netns::{in_netns, CP_NETNS};
use super::state_dir;
use crate::util;

#[derive(clap::Subcommand)]
pub enum ImageTask {
    /// Make a `docker save` or OCI image archive available on every node of
    /// the local cluster (each node imports it into its own store).
    Load {
        /// The archive.
        file: PathBuf,
    },
    /// Push the image in a `docker save` or OCI archive to the cluster
    /// registry (`up --registry`) as TARGET, e.g. 10.99.0.1:5000/app:1.
    Push {
        /// The archive.
        file: PathBuf,
        /// REGISTRY/NAME:TAG, the registry as `up` printed it.
        target: String,
    },
}

/// The state directories of the local cluster's nodes.
fn node_state_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state_dir().join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let single = state_dir().join("agent");
    if single.exists() {
        dirs.insert(0, single);
    }
    dirs
}

pub fn image(task: ImageTask) -> anyhow::Result<()> {
    let (ImageTask::Push { file, .. } | ImageTask::Load { file }) = &task;
    let file = file
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let agent = ["release", "debug"]
        .iter()
        .map(|p| util::root().join("target").join(p).join("agent"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no agent binary: run `cargo xtask up` first"))?;
    match task {
        ImageTask::Push { target, .. } => {
            anyhow::ensure!(
                Component::named("registry").pid().is_some(),
                "no cluster registry runs: start the cluster with `cargo xtask up --registry`"
            );
            let registry = target.split('/').next().unwrap_or_default().to_string();
            let mut cmd = Command::new(&agent);
            cmd.args(["image", "push"])
                .arg(&file)
                .arg(&target)
                .arg(format!("--insecure-registry={registry}"));
            // With nodes in namespaces the registry lives on the node
            // network, reached from the control plane's namespace.
            if Path::new("/run/netns").join(CP_NETNS).exists() {
                in_netns(&mut cmd, CP_NETNS)?;
            }
            util::run(&mut cmd)
        }
        ImageTask::Load { .. } => {
            let dirs = node_state_dirs();
            anyhow::ensure!(
                !dirs.is_empty(),
                "no local cluster: run `cargo xtask up` first"
            );
            for dir in dirs {
                util::step(&format!("loading into {}", dir.display()));
                // The store writes by rename, so a running agent sees the
                // image complete or not at all.
                util::run(
                    Command::new(&agent)
                        .args(["image", "import"])
                        .arg(&file)
                        .arg("--state-dir")
                        .arg(&dir),
                )?;
            }
            Ok(())
        }
    }
}
