//! A node whose agent dies: it turns Unknown and is tainted, its replica
//! moves to the nodes still standing and the Service follows; when the
//! agent returns the node is Ready again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::{
    client, condition, endpoints, name, node_of, pod_ip, running_and_ready, slice_ready,
    three_spread_replicas, Cluster, WEB,
};

/// A node whose agent dies: it turns Unknown after the grace period and is
/// tainted unreachable; its replica is evicted and replaced on the nodes
/// still standing; the Service's ready endpoints, and the connections to
/// its ClusterIP, go to the live replicas only.
/// When the agent comes back the node is Ready again and the evicted pod's
/// deletion completes.
#[test]
fn replicas_leave_a_dead_node() {
    // Node health checked every second, a node without a heartbeat for 6 s
    // (three lease renewals: the harness's agents renew every 2 s) is
    // Unknown, and pods tolerate the unreachable taint for 2 s: the whole
    // story in seconds instead of Kubernetes' minutes.
    let mut c = Cluster::start(
        &["--default-unreachable-toleration-seconds", "2"],
        &[
            "--node-monitor-grace-period",
            "6",
            "--node-monitor-period",
            "1",
        ],
    );
    c.apply(WEB);
    let pods = three_spread_replicas(&c);
    let ips: BTreeSet<String> = pods.iter().map(pod_ip).collect();
    c.wait(30, "3 ready endpoints", || {
        (endpoints(&c, "web").0 == ips).then_some(())
    });
    // The node running the first replica is the one to die; a client on
    // another node keeps using the Service.
    let doomed = node_of(&pods[0]);
    let doomed_pod = name(&pods[0]);
    let doomed_ip = pod_ip(&pods[0]);
    let survivor = c.nodes.iter().find(|n| n.name != doomed).unwrap();
    c.apply(&client("client", &survivor.name));
    c.wait(60, "the client running", || {
        running_and_ready(&c.get(&["pod", "client"])).then_some(())
    });
    let vip = c.get(&["service", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.balanced_over("client", &vip, &pods.iter().map(name).collect());
    c.step("RC web: 3 replicas ready on 3 nodes, all reached through the Service");

    // The agent dies. The node's containers keep running (by design), but
    // nothing reports for them any more.
    let killed = Instant::now();
    let i = c.nodes.iter().position(|n| n.name == doomed).unwrap();
    // Taken out, so that a failure from here on does not make the node's
    // clean-up wait for pod deletions no agent will finish.
    c.nodes[i].proc.take().expect("the agent runs").kill();

    let node = c.wait(30, "the dead node Unknown and tainted", || {
        let n = c.get(&["node", &doomed]);
        let keys: Vec<String> = n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some(format!("{}:{}", t["key"].as_str()?, t["effect"].as_str()?)))
            .collect();
        (condition(&n, "Ready") == "Unknown"
            && keys.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
            && keys.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()))
        .then_some(n)
    });
    // Not before the grace period: the last renewal was at most one lease
    // interval (2 s) before the kill, and a second is left for rounding.
    let noticed = killed.elapsed();
    assert!(
        noticed >= Duration::from_secs(3),
        "Unknown after {noticed:?}, before the 6 s grace period: {node}"
    );
    let table = c.k.run(&["get", "nodes"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&doomed) && l.split_whitespace().nth(1) == Some("NotReady")),
        "{table}"
    );
    c.step(&format!(
        "dead node Unknown and tainted unreachable {:.1}s after its agent died",
        noticed.as_secs_f64()
    ));

    let moved = c.wait(60, "the replica replaced on a live node", || {
        let p = c.live_pods("app=web");
        (p.len() == 3 && p.iter().all(running_and_ready) && p.iter().all(|p| node_of(p) != doomed))
            .then_some(p)
    });
    c.step(&format!(
        "replica replaced on a live node {:.1}s after the agent died",
        killed.elapsed().as_secs_f64()
    ));
    let live: BTreeSet<String> = moved.iter().map(node_of).collect();
    assert_eq!(live.len(), 2, "{live:?}");
    let old = c.get(&["pod", &doomed_pod]);
    assert!(
        old["metadata"]["deletionTimestamp"].is_string(),
        "the dead node's replica was not evicted: {old}"
    );
    let table = c.k.run(&["get", "pods", "-l", "app=web"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&doomed_pod) && l.contains("Terminating")),
        "{table}"
    );
    let events = c.k.run(&["get", "events"]).unwrap();
    assert!(events.contains("NodeNotReady"), "{events}");
    assert!(events.contains("TaintManagerEviction"), "{events}");
    let rc = c.k.run(&["get", "rc", "web"]).unwrap();
    let row: Vec<&str> = rc.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(..4), Some(&["web", "3", "3", "3"][..]), "{rc}");
    let live_ips: BTreeSet<String> = moved.iter().map(pod_ip).collect();
    c.wait(
        30,
        "the Service's ready endpoints are the live replicas",
        || {
            let (ready, _) = endpoints(&c, "web");
            (ready == live_ips && slice_ready(&c, "web") == live_ips).then_some(())
        },
    );
    assert!(!live_ips.contains(&doomed_ip));
    // The evicted replica still runs on the dead node, but the Service
    // sends nothing to it.
    c.balanced_over("client", &vip, &moved.iter().map(name).collect());
    c.step("the Service reaches only the live replicas");

    // The agent returns: the node is Ready and untainted, and the agent
    // finishes the eviction by stopping the old replica.
    c.nodes[i].launch();
    c.wait(30, "the node Ready again without taints", || {
        let n = c.get(&["node", &doomed]);
        let tainted = n["spec"]["taints"]
            .as_array()
            .is_some_and(|t| !t.is_empty());
        (condition(&n, "Ready") == "True" && !tainted).then_some(())
    });
    c.wait(30, "the evicted replica gone", || {
        let out = c.k.output(&["get", "pod", &doomed_pod]).ok()?;
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });
    assert_eq!(c.live_pods("app=web").len(), 3);
    c.step("agent back: node Ready, evicted replica deleted");
}
