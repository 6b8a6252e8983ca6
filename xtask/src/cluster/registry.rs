//! `up --registry`: a cluster-local image registry (Debian's
//! docker-registry) every node pulls from over plain HTTP.

use std::process::Command;
use std::time::Duration;

use super::component::Component;
use super::netns::netns_command;
use super::state_dir;
use super::topology::Topology;
use crate::util;

/// Starts the registry, data in `.cluster/registry`, and returns its
/// address as nodes reach it: this machine's loopback for a single node,
/// the control plane's address on the node network otherwise.
pub fn start(t: &Topology) -> anyhow::Result<String> {
    let addr = format!("{}:{}", t.reach_host(1), t.registry_port);
    util::step(&format!("starting the cluster registry at {addr}"));
    let dir = state_dir().join("registry");
    std::fs::create_dir_all(dir.join("data"))?;
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "# Written by `cargo xtask up --registry`.\nversion: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}:{}\n",
            dir.join("data").display(),
            t.listen_host(1),
            t.registry_port
        ),
    )?;
    let c = Component::named("registry");
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config);
    t.spawn_in(&mut cmd)?;
    c.start(&mut cmd)?;
    let url = format!("http://{addr}/v2/");
    c.wait_ready(Duration::from_secs(30), || {
        util::succeeds(netns_command(t.cp_ns, "curl").args(["-sf", &url]))
    })?;
    Ok(addr)
}
