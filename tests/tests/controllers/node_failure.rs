//! A node that stops renewing its Lease, and its pods moving elsewhere.

use crate::common::{get, live_pods, node_of, running, Cluster, RC};

/// A node that stops renewing its Lease turns Unknown within the grace
/// period and is tainted; after the toleration time its pods are evicted
/// and their controller recreates them on healthy nodes.
#[test]
fn failed_node_is_marked_unknown_and_its_pods_move() {
    let mut c = Cluster::start(
        &["--default-unreachable-toleration-seconds", "4"],
        &[
            "--node-monitor-grace-period",
            "4",
            "--node-monitor-period",
            "1",
        ],
        &[("good", 2, &[]), ("doomed", 1, &[])],
    );
    c.k.apply(RC);
    c.wait(30, "3 running replicas, one on the doomed node", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 3 && p.iter().all(running) && p.iter().any(|p| node_of(p) == "doomed-0"))
            .then_some(())
    });
    // The doomed node's agent dies.
    c.groups[1].kill();
    let node = c.wait(20, "doomed-0 Ready=Unknown", || {
        let n = get(&c.k, &["node", "doomed-0"]);
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| t.len() >= 2);
        (ready["status"] == "Unknown" && tainted).then_some(n)
    });
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap_or(""),
                        t["effect"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()),
        "{taints:?}"
    );
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()),
        "{taints:?}"
    );
    let nodes = c.wait(30, "replicas recreated on healthy nodes", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 3 && p.iter().all(|p| running(p) && node_of(p) != "doomed-0"))
            .then(|| p.iter().map(|p| node_of(p).to_string()).collect::<Vec<_>>())
    });
    assert!(nodes.iter().all(|n| n.starts_with("good-")), "{nodes:?}");
    let events = c.k.run(&["get", "events"]).unwrap();
    assert!(events.contains("TaintManagerEviction"), "{events}");
    assert!(events.contains("NodeNotReady"), "{events}");
}
