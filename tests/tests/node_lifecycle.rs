//! User stories of node lifecycle's disruption brake, on hollow nodes
//! (Node objects, Leases and a stand-in kubelet; no containers) spread over
//! two zones, with the real API server, etcd and kubectl.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

/// Seconds pods tolerate an unreachable node before eviction.
const TOLERATION: u64 = 8;

const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

fn get(k: &Kubectl, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = k.run(&a).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn items(v: Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn pods(k: &Kubectl) -> Vec<Value> {
    items(get(k, &["pods", "-l", "app=web"]))
}

fn live(pods: &[Value]) -> Vec<&Value> {
    pods.iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .collect()
}

fn node_of(p: &Value) -> &str {
    p["spec"]["nodeName"].as_str().unwrap_or("")
}

fn uid(p: &Value) -> String {
    p["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

fn ready_status(node: &Value) -> &str {
    node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

fn taints(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap_or(""),
                        t["effect"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Hollow nodes PREFIX-0.. spread over zone-0 and zone-1.
fn hollow(cp: &ControlPlane, prefix: &str, count: usize) -> Guarded {
    let n = count.to_string();
    cp.component(
        &format!("hollow-{prefix}"),
        &[
            "hollow-nodes",
            "--name-prefix",
            prefix,
            "--count",
            &n,
            "--zones",
            "2",
            "--lease-interval-seconds",
            "1",
        ],
    )
    .expect("hollow nodes start")
}

fn logs(cp: &ControlPlane, k: &Kubectl) -> String {
    let cm = cp.log("controller-manager");
    let lines: Vec<&str> = cm.lines().collect();
    format!(
        "--- state\n{}\n--- controller-manager\n{}",
        k.run(&["get", "nodes,pods", "-o", "wide"])
            .unwrap_or_default(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// When every node is cut off from the control plane for longer than its
/// pods tolerate, the likelier fault is the control plane's own, so no pod
/// is evicted; once the others are back, a node still lost alone has its
/// pods moved to the healthy ones.
#[test]
fn every_node_cut_off_evicts_nothing_but_a_node_lost_alone_loses_its_pods() {
    let toleration = TOLERATION.to_string();
    let cp = ControlPlane::start_with_component_identities(&[
        "--default-unreachable-toleration-seconds",
        &toleration,
        "--default-not-ready-toleration-seconds",
        &toleration,
    ])
    .expect("control plane starts");
    let k = cp.kubectl();
    let _scheduler = cp.component("scheduler", &["scheduler"]).unwrap();
    let _cm = cp
        .component(
            "controller-manager",
            &[
                "controller-manager",
                "--node-monitor-grace-period",
                "4",
                "--node-monitor-period",
                "1",
                "--node-eviction-rate",
                "1",
            ],
        )
        .unwrap();
    // a-0 in zone-0, a-1 in zone-1, b-0 in zone-0.
    let mut a = hollow(&cp, "a", 2);
    let mut b = hollow(&cp, "b", 1);
    let ready = wait_for(Duration::from_secs(30), || {
        (items(get(&k, &["nodes"])).len() == 3).then_some(())
    });
    assert!(ready.is_some(), "3 hollow nodes did not register");

    let out = k
        .run_stdin(&["apply", "-f", "-"], RC)
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = wait_for(Duration::from_secs(60), || {
        let p = pods(&k);
        let nodes: BTreeSet<&str> = p.iter().map(node_of).collect();
        (p.len() == 3
            && p.iter().all(|p| p["status"]["phase"] == "Running")
            && nodes.contains("b-0"))
        .then(|| p.iter().map(uid).collect::<BTreeSet<_>>())
    })
    .unwrap_or_else(|| panic!("3 running replicas, one on b-0\n{}", logs(&cp, &k)));

    // Every node is cut off.
    a.kill();
    b.kill();
    wait_for(Duration::from_secs(30), || {
        let nodes = items(get(&k, &["nodes"]));
        nodes
            .iter()
            .all(|n| ready_status(n) == "Unknown")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("every node Ready=Unknown\n{}", logs(&cp, &k)));
    // Well past the pods' toleration, every pod is still there and none is
    // being deleted.
    let until = Instant::now() + Duration::from_secs(TOLERATION + 6);
    while Instant::now() < until {
        let p = pods(&k);
        let now: BTreeSet<String> = p.iter().map(uid).collect();
        assert!(
            now == before && live(&p).len() == 3,
            "a pod was evicted while every node was cut off\n{}",
            logs(&cp, &k)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in items(get(&k, &["nodes"])) {
        let t = taints(&n);
        assert!(
            t.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string())
                && !t.iter().any(|t| t.ends_with(":NoExecute")),
            "{}: {t:?}",
            n["metadata"]["name"]
        );
    }
    let events = k.run(&["get", "events"]).unwrap();
    assert!(!events.contains("TaintManagerEviction"), "{events}");

    // The a nodes come back; b-0 stays lost, alone.
    let _a = hollow(&cp, "a", 2);
    let moved = wait_for(Duration::from_secs(90), || {
        let p = pods(&k);
        let l = live(&p);
        (l.len() == 3
            && l.iter()
                .all(|p| p["status"]["phase"] == "Running" && node_of(p).starts_with("a-")))
        .then(|| l.iter().map(|p| uid(p)).collect::<BTreeSet<_>>())
    })
    .unwrap_or_else(|| panic!("b-0's pod recreated on the a nodes\n{}", logs(&cp, &k)));
    // Only b-0's pod moved: the two on the a nodes are the same pods.
    assert_eq!(
        moved.intersection(&before).count(),
        2,
        "{moved:?} {before:?}"
    );
    let b0 = get(&k, &["node", "b-0"]);
    assert!(
        taints(&b0).contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()),
        "{:?}",
        taints(&b0)
    );
    let events = k.run(&["get", "events"]).unwrap();
    assert!(events.contains("TaintManagerEviction"), "{events}");
}
