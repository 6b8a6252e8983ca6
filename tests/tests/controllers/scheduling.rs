//! The scheduler: why a pod stays Pending, taints and anti-affinity, and a
//! standby scheduler taking over from its leader.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{get, live_pods, node_of, Cluster};

/// A pod nothing can hold stays Pending, and the user reads why in
/// kube-scheduler's words; it is placed as soon as a node fits.
#[test]
fn unschedulable_pod_says_why_and_is_placed_when_a_node_fits() {
    let c = Cluster::start(
        &[],
        &[],
        &[
            ("hdd", 2, &["--label", "disk=hdd"]),
            ("ssd", 1, &["--label", "disk=ssd", "--cpu", "1"]),
        ],
    );
    c.k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: big}
spec:
  nodeSelector: {disk: ssd}
  containers:
  - name: c
    image: registry.local/big:1
    resources: {requests: {cpu: "2"}}
"#,
    );
    let message = c.wait(30, "a FailedScheduling event", || {
        let ev = get(
            &c.k,
            &[
                "events",
                "--field-selector",
                "involvedObject.name=big,reason=FailedScheduling",
            ],
        );
        ev["items"][0]["message"].as_str().map(str::to_string)
    });
    assert_eq!(
        message,
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
    );
    let pod = get(&c.k, &["pod", "big"]);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(pod["spec"].get("nodeName").is_none());
    let cond = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .expect("a PodScheduled condition");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "Unschedulable");
    let describe = c.k.run(&["describe", "pod", "big"]).unwrap();
    assert!(describe.contains("FailedScheduling"), "{describe}");

    // A bigger ssd node arrives: the scheduler retries and places the pod.
    let _big =
        c.cp.component(
            "hollow-bigssd",
            &[
                "hollow-nodes",
                "--name-prefix",
                "bigssd",
                "--count",
                "1",
                "--label",
                "disk=ssd",
                "--cpu",
                "8",
            ],
        )
        .unwrap();
    let node = c.wait(60, "the pod to be placed on the new node", || {
        let p = get(&c.k, &["pod", "big"]);
        p["spec"]["nodeName"].as_str().map(str::to_string)
    });
    assert_eq!(node, "bigssd-0");
}

/// Taints keep pods away unless tolerated, and required anti-affinity puts
/// at most one replica per node; the one that cannot fit says so.
#[test]
fn taints_and_anti_affinity_are_respected() {
    let c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.run(&["taint", "nodes", "node-2", "dedicated=db:NoSchedule"])
        .unwrap();
    c.k.apply(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: spread}
spec:
  replicas: 3
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: spread}}
            topologyKey: kubernetes.io/hostname
      containers: [{name: c, image: registry.local/spread:1}]
"#,
    );
    let pending = c.wait(30, "two placed replicas and one pending", || {
        let p = live_pods(&c.k, "app=spread");
        let placed: Vec<&Value> = p.iter().filter(|p| !node_of(p).is_empty()).collect();
        let unplaced: Vec<&Value> = p.iter().filter(|p| node_of(p).is_empty()).collect();
        (p.len() == 3 && placed.len() == 2 && unplaced.len() == 1).then(|| {
            let nodes: BTreeSet<&str> = placed.iter().map(|p| node_of(p)).collect();
            assert_eq!(
                nodes,
                BTreeSet::from(["node-0", "node-1"]),
                "tainted node used or replicas share a node"
            );
            unplaced[0]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
    });
    let message = c.wait(30, "FailedScheduling for the third replica", || {
        let sel = format!("involvedObject.name={pending},reason=FailedScheduling");
        let ev = get(&c.k, &["events", "--field-selector", &sel]);
        ev["items"][0]["message"].as_str().map(str::to_string)
    });
    assert_eq!(
        message,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, 2 node(s) didn't match pod anti-affinity rules."
    );
    // Tolerating the taint lets a pod onto that node.
    c.k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: tolerant, labels: {app: db}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]
  containers: [{name: c, image: registry.local/db:1}]
"#,
    );
    c.wait(30, "the tolerant pod on node-2", || {
        (node_of(&get(&c.k, &["pod", "tolerant"])) == "node-2").then_some(())
    });
}

/// Two schedulers: one leads, the other stands by and takes over when the
/// leader dies, and `kubectl get cs` reports the scheduler healthy.
#[test]
fn standby_scheduler_takes_over() {
    let mut c = Cluster::start(&[], &[], &[("node", 2, &[])]);
    let _standby = c.cp.component("scheduler-2", &["scheduler"]).unwrap();
    c.k.apply("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"one\"},\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"registry.local/x:1\"}]}}");
    c.wait(30, "pod one scheduled", || {
        (!node_of(&get(&c.k, &["pod", "one"])).is_empty()).then_some(())
    });
    let cs = c.k.run(&["get", "cs"]).unwrap();
    assert!(
        cs.lines()
            .any(|l| l.starts_with("scheduler") && l.contains("Healthy")),
        "{cs}"
    );
    c.scheduler.kill();
    c.k.apply("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"two\"},\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"registry.local/x:1\"}]}}");
    c.wait(30, "pod two scheduled by the standby", || {
        (!node_of(&get(&c.k, &["pod", "two"])).is_empty()).then_some(())
    });
    assert!(
        c.cp.log("scheduler-2").contains("acquired lease"),
        "{}",
        c.cp.log("scheduler-2")
    );
}
