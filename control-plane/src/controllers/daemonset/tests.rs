//! The DaemonSet controller's decisions, driven through a fake store of
//! nodes, pods and revisions.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::history;
use super::nodes::{self, HASH_LABEL};
use super::plan::{self, View};

/// A fake cluster: what the controller's caches would hold.
struct Store {
    ds: DaemonSet,
    nodes: Vec<Arc<Node>>,
    pods: Vec<Arc<Pod>>,
}

fn daemonset(extra_spec: Value) -> DaemonSet {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}},
                     "spec": {"containers": [{"name": "a", "image": "busybox"}]}},
    });
    for (k, v) in extra_spec.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 1},
        "spec": spec,
    }))
    .expect("a daemonset")
}

fn node(name: &str, labels: Value, taints: Value) -> Arc<Node> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .expect("a node"),
    )
}

/// A daemon pod bound to `node`, made `age` seconds ago from revision `hash`.
fn pod(name: &str, node: &str, hash: &str, ready: bool, age: i64) -> Arc<Pod> {
    let created = Timestamp::from_second(1_800_000_000 - age).expect("a time");
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "agent", HASH_LABEL: hash},
                         "creationTimestamp": created.to_string()},
            "spec": {"nodeName": node, "containers": [{"name": "a", "image": "busybox"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                       "lastTransitionTime": created.to_string()}]},
        }))
        .expect("a pod"),
    )
}

impl Store {
    fn new(ds: DaemonSet, nodes: Vec<Arc<Node>>) -> Self {
        Store {
            ds,
            nodes,
            pods: Vec::new(),
        }
    }

    fn spec(&self) -> PodSpec {
        nodes::daemon_pod_spec(&self.ds)
    }

    fn view<'a>(&'a self, spec: &'a PodSpec, hash: &'a str) -> View<'a> {
        View {
            spec,
            nodes: &self.nodes,
            pods: &self.pods,
            hash,
            min_ready: 0,
            now: Timestamp::from_second(1_800_000_000).expect("a time"),
        }
    }
}

fn three_nodes() -> Vec<Arc<Node>> {
    ["n0", "n1", "n2"]
        .iter()
        .map(|n| node(n, json!({}), json!([])))
        .collect()
}

#[test]
fn a_pod_goes_to_every_node_and_to_a_node_added_later() {
    let mut s = Store::new(daemonset(json!({})), three_nodes());
    let spec = s.spec();
    assert_eq!(s.view(&spec, "h1").manage(false).create, ["n0", "n1", "n2"]);
    s.pods = vec![
        pod("a0", "n0", "h1", true, 9),
        pod("a1", "n1", "h1", true, 9),
    ];
    s.pods.push(pod("a2", "n2", "h1", true, 9));
    assert!(s.view(&spec, "h1").manage(false).is_empty());
    s.nodes.push(node("n3", json!({}), json!([])));
    assert_eq!(s.view(&spec, "h1").manage(false).create, ["n3"]);
}

#[test]
fn taints_keep_daemons_off_unless_tolerated_and_no_execute_removes_them() {
    let tainted = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
    let mut s = Store::new(
        daemonset(json!({})),
        vec![
            node("n0", json!({}), json!([])),
            node("n1", json!({}), tainted.clone()),
        ],
    );
    let spec = s.spec();
    assert_eq!(s.view(&spec, "h").manage(false).create, ["n0"]);
    // A pod already on a NoSchedule node may stay; a NoExecute one goes.
    s.pods = vec![pod("a0", "n0", "h", true, 1), pod("a1", "n1", "h", true, 1)];
    assert!(s.view(&spec, "h").manage(false).is_empty());
    s.nodes[1] = node(
        "n1",
        json!({}),
        json!([{"key": "dedicated", "effect": "NoExecute"}]),
    );
    assert_eq!(s.view(&spec, "h").manage(false).delete, ["a1"]);

    let tolerant = daemonset(
        json!({"template": {"metadata": {"labels": {"app": "agent"}},
        "spec": {"tolerations": [{"key": "dedicated", "operator": "Exists"}],
                 "containers": [{"name": "a", "image": "busybox"}]}}}),
    );
    let s = Store::new(
        tolerant,
        vec![
            node("n0", json!({}), json!([])),
            node("n1", json!({}), tainted),
        ],
    );
    let spec = s.spec();
    assert_eq!(s.view(&spec, "h").manage(false).create, ["n0", "n1"]);
}

#[test]
fn daemons_tolerate_node_trouble_and_cordons() {
    let trouble = json!([
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/pid-pressure", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
    ]);
    let s = Store::new(daemonset(json!({})), vec![node("n0", json!({}), trouble)]);
    let spec = s.spec();
    assert_eq!(s.view(&spec, "h").manage(false).create, ["n0"]);
    let network =
        json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]);
    let s = Store::new(daemonset(json!({})), vec![node("n0", json!({}), network)]);
    let spec = s.spec();
    assert!(
        s.view(&spec, "h").manage(false).create.is_empty(),
        "only host-network daemons go where the pod network is down"
    );
}

#[test]
fn the_node_selector_picks_the_nodes_and_a_relabelled_node_loses_its_pod() {
    let ds = daemonset(
        json!({"template": {"metadata": {"labels": {"app": "agent"}},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "a", "image": "busybox"}]}}}),
    );
    let mut s = Store::new(
        ds,
        vec![
            node("n0", json!({"disk": "ssd"}), json!([])),
            node("n1", json!({}), json!([])),
        ],
    );
    let spec = s.spec();
    assert_eq!(s.view(&spec, "h").manage(false).create, ["n0"]);
    s.pods = vec![pod("a0", "n0", "h", true, 1)];
    s.nodes[0] = node("n0", json!({"disk": "hdd"}), json!([]));
    let p = s.view(&spec, "h").manage(false);
    assert_eq!(
        (p.create.len(), p.delete.as_slice()),
        (0, &["a0".to_string()][..])
    );
    let c = s.view(&spec, "h").counts();
    assert_eq!((c.desired, c.misscheduled), (0, 1));
}

#[test]
fn the_oldest_pod_of_a_node_stays_and_failed_ones_are_replaced() {
    let mut s = Store::new(daemonset(json!({})), vec![node("n0", json!({}), json!([]))]);
    s.pods = vec![
        pod("young", "n0", "h", true, 1),
        pod("old", "n0", "h", true, 50),
    ];
    let spec = s.spec();
    assert_eq!(s.view(&spec, "h").manage(false).delete, ["young"]);
    let mut failed = (*pod("f", "n0", "h", false, 5)).clone();
    failed.status.as_mut().expect("status").phase = Some("Failed".into());
    s.pods = vec![Arc::new(failed)];
    let p = s.view(&spec, "h").manage(false);
    assert_eq!(p.failed, [("n0".to_string(), "f".to_string())]);
    assert!(
        p.create.is_empty(),
        "a new pod waits until the failed one is gone"
    );
}

#[test]
fn a_rolling_update_replaces_at_most_max_unavailable_pods_at_once() {
    let mut s = Store::new(daemonset(json!({})), three_nodes());
    s.pods = vec![
        pod("a0", "n0", "old", true, 9),
        pod("a1", "n1", "old", true, 9),
        pod("a2", "n2", "old", true, 9),
    ];
    let spec = s.spec();
    let v = s.view(&spec, "new");
    assert!(v.manage(false).is_empty());
    assert_eq!(plan::surge_and_unavailable(&s.ds, 3), (0, 1));
    assert_eq!(v.rolling_update(0, 1).delete, ["a0"]);
    assert_eq!(v.rolling_update(0, 2).delete, ["a0", "a1"]);
    // n0 got its new pod, not ready yet: nothing else may go.
    s.pods[0] = pod("b0", "n0", "new", false, 1);
    let v = s.view(&spec, "new");
    assert!(v.rolling_update(0, 1).is_empty());
    let c = v.counts();
    assert_eq!(
        (c.desired, c.current, c.ready, c.updated, c.available),
        (3, 3, 2, 1, 2)
    );
    // Once it is ready the next node follows; an unready old pod goes at once.
    s.pods[0] = pod("b0", "n0", "new", true, 1);
    s.pods[2] = pod("a2", "n2", "old", false, 9);
    assert_eq!(
        s.view(&spec, "new").rolling_update(0, 1).delete,
        ["a2", "a1"]
    );
}

#[test]
fn a_surging_update_starts_new_pods_beside_old_ones_then_removes_the_old() {
    let ds = daemonset(json!({"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}}}));
    let mut s = Store::new(ds, three_nodes());
    assert_eq!(plan::surge_and_unavailable(&s.ds, 3), (2, 0));
    s.pods = vec![
        pod("a0", "n0", "old", true, 9),
        pod("a1", "n1", "old", true, 9),
        pod("a2", "n2", "old", true, 9),
    ];
    let spec = s.spec();
    assert_eq!(
        s.view(&spec, "new").rolling_update(2, 0).create,
        ["n0", "n1"]
    );
    s.pods.push(pod("b0", "n0", "new", true, 1));
    s.pods.push(pod("b1", "n1", "new", false, 1));
    let v = s.view(&spec, "new");
    assert_eq!(
        v.manage(true).delete,
        ["a0"],
        "a ready replacement retires the old pod, an unready one keeps it"
    );
    let p = v.rolling_update(2, 0);
    assert_eq!(
        p.delete,
        ["a0"],
        "the old pod goes once its replacement is available"
    );
    assert_eq!(p.create, ["n2"]);
    assert_eq!(
        v.manage(false).delete,
        ["b0", "b1"],
        "without surge only the oldest stays"
    );
}

#[test]
fn on_delete_waits_for_the_user() {
    let ds = daemonset(json!({"updateStrategy": {"type": "OnDelete"}}));
    assert!(!plan::rolls_out(&ds));
    assert!(plan::rolls_out(&daemonset(json!({}))));
}

#[test]
fn daemon_pods_name_their_node_for_the_scheduler_and_carry_the_revision() {
    let ds = daemonset(
        json!({"template": {"metadata": {"labels": {"app": "agent"}},
        "spec": {"hostNetwork": true, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "x", "operator": "Exists"}]}]}}},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
            "containers": [{"name": "a", "image": "busybox"}]}}}),
    );
    let p = nodes::pod_for(&ds, "n7", "abc");
    assert_eq!(nodes::target_node(&p).as_deref(), Some("n7"));
    assert_eq!(p.labels()[HASH_LABEL], "abc");
    assert_eq!(p.labels()["app"], "agent");
    assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
    assert_eq!(p.owner_references()[0].uid, "ds-uid");
    let spec = serde_json::to_value(p.spec.expect("spec")).expect("json");
    let tolerations = spec["tolerations"].as_array().expect("tolerations");
    assert_eq!(
        tolerations.len(),
        7,
        "six daemon tolerations and network-unavailable"
    );
    assert!(tolerations
        .iter()
        .all(|t| t.get("tolerationSeconds").is_none()));
    let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms,
        &json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]}])
    );
}

fn revision(ds: &DaemonSet, number: i64) -> Arc<ControllerRevision> {
    let step = history::step(ds, &[], 0);
    let mut rev = step.create.expect("a new revision");
    rev.revision = number;
    Arc::new(rev)
}

#[test]
fn each_template_gets_a_revision_and_an_undo_renumbers_the_old_one() {
    let v1 = daemonset(json!({}));
    let step = history::step(&v1, &[], 0);
    let first = step.create.expect("the first revision");
    assert_eq!(first.revision, 1);
    assert!(first.name_any().starts_with("agent-"));
    assert_eq!(history::template_of(&first), Some(history::template(&v1)));
    let data = &first.data.as_ref().expect("data").0;
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    let r1 = Arc::new(first);
    assert_eq!(
        history::step(&v1, std::slice::from_ref(&r1), 0).current,
        Some(r1.name_any())
    );

    let v2 = daemonset(
        json!({"template": {"metadata": {"labels": {"app": "agent"}},
        "spec": {"containers": [{"name": "a", "image": "busybox:2"}]}}}),
    );
    let r2 = history::step(&v2, std::slice::from_ref(&r1), 0)
        .create
        .expect("a second revision");
    assert_eq!(r2.revision, 2);
    assert_ne!(history::hash_of(&r2), history::hash_of(&r1));
    let r2 = Arc::new(r2);
    // Undo puts v1's template back: its revision becomes number 3.
    let back = history::step(&v1, &[r1.clone(), r2.clone()], 0);
    assert_eq!(
        (back.current, back.renumber),
        (Some(r1.name_any()), Some(3))
    );
    assert!(back.create.is_none());
}

#[test]
fn old_revisions_beyond_the_limit_go_unless_a_pod_runs_them() {
    let revs: Vec<Arc<ControllerRevision>> = (1..=4)
        .map(|i| {
            let ds = daemonset(
                json!({"template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "a", "image": format!("busybox:{i}")}]}}}),
            );
            revision(&ds, i)
        })
        .collect();
    let current = revs[3].name_any();
    let none = BTreeSet::new();
    assert_eq!(
        history::stale(&revs, &current, &none, 1),
        [revs[0].name_any(), revs[1].name_any()]
    );
    let in_use: BTreeSet<String> = [history::hash_of(&revs[0])].into();
    assert_eq!(
        history::stale(&revs, &current, &in_use, 1),
        [revs[1].name_any()]
    );
    assert!(history::stale(&revs, &current, &none, 10).is_empty());
}

#[test]
fn percentages_of_the_desired_nodes_round_up() {
    let ds = daemonset(json!({"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}}}));
    assert_eq!(plan::surge_and_unavailable(&ds, 15), (0, 2));
    let ds = daemonset(json!({"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}));
    assert_eq!(plan::surge_and_unavailable(&ds, 5), (0, 1));
}
