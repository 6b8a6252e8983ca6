//! The cluster's etcd: one member, or one per control plane.

use std::process::Command;
use std::time::Duration;

use super::component::Component;
use super::netns::netns_command;
use super::state_dir;
use super::topology::Topology;
use crate::util;

/// Starts the members and waits until each answers its health check.
pub fn start(t: &Topology) -> anyhow::Result<()> {
    util::step(&if t.cps == 1 {
        "starting etcd".to_string()
    } else {
        format!("starting a {}-member etcd cluster", t.cps)
    });
    let etcd_urls = t.etcd_urls();
    let peer_url = |i: u32| format!("http://{}:{}", t.reach_host(i), t.etcd_port + 1);
    let initial_cluster = (1..=t.cps)
        .map(|i| format!("{}={}", t.named("kestrel", i), peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    // Members start together: none is healthy before a majority runs.
    for i in 1..=t.cps {
        let url = &etcd_urls[i as usize - 1];
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", t.named("kestrel", i)))
            .arg(format!(
                "--data-dir={}",
                state_dir().join(t.named("etcd", i)).display()
            ))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={}", peer_url(i)))
            .arg(format!("--initial-advertise-peer-urls={}", peer_url(i)))
            .arg(format!("--initial-cluster={initial_cluster}"));
        t.spawn_in(&mut cmd)?;
        Component::named(t.named("etcd", i)).start(&mut cmd)?;
    }
    for i in 1..=t.cps {
        let url = &etcd_urls[i as usize - 1];
        Component::named(t.named("etcd", i)).wait_ready(Duration::from_secs(30), || {
            util::succeeds(
                netns_command(t.cp_ns, "etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", url, "endpoint", "health"]),
            )
        })?;
    }
    Ok(())
}
