//! Pods created and deleted in rounds leave nothing behind.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::node::Node;
use harness::process::wait_for;
use serde_json::Value;

/// Pods created and deleted in rounds leave no lease, veth, route or map
/// entry behind.
#[test]
fn pod_churn_leaves_nothing_behind() {
    const ROUNDS: usize = 4;
    const PODS: usize = 25;
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let n = Node::start(&cp);
    let links_before = n.exec(&["ip", "-o", "link"]).unwrap().lines().count();
    let routes_before = n.exec(&["ip", "route"]).unwrap();
    for round in 0..ROUNDS {
        let yaml: String = (0..PODS)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: churn-{i}}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: busybox, command: [sleep, '3600']}}\n---\n",
                    n.name
                )
            })
            .collect();
        k.apply(&yaml);
        let ips = wait_for(Duration::from_secs(120), || {
            let list: Value =
                serde_json::from_str(&k.run(&["get", "pods", "-o", "json"]).ok()?).ok()?;
            let ips: Vec<String> = list["items"]
                .as_array()?
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
                .collect();
            (ips.len() == PODS).then_some(ips)
        })
        .unwrap_or_else(|| panic!("round {round}: pods did not all run\n{}", n.log()));
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), PODS, "duplicate pod IPs: {ips:?}");
        let out = k
            .output(&[
                "delete",
                "pods",
                "--all",
                "--grace-period=0",
                "--timeout=120s",
            ])
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(Duration::from_secs(60), || {
            let status = n.bpf_status();
            (status.contains("pod endpoints (0)")).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: endpoints left\n{}", n.bpf_status()));
    }
    let leftover = wait_for(Duration::from_secs(20), || {
        let links = n.exec(&["ip", "-o", "link"]).unwrap();
        (links.lines().count() == links_before).then_some(())
    });
    assert!(
        leftover.is_some(),
        "veths left: {}",
        n.exec(&["ip", "-o", "link"]).unwrap()
    );
    assert_eq!(n.exec(&["ip", "route"]).unwrap(), routes_before);
    let leases: Vec<_> = walk(&n.state.path().join("cni"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.parse::<std::net::Ipv4Addr>().is_ok())
        })
        .collect();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let links = std::fs::read_dir(n.bpffs_dir.join("links"))
        .unwrap()
        .count();
    assert_eq!(links, 1, "only the uplink's link stays pinned");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
