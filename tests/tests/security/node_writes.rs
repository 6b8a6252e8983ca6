//! What a node may write: only its own Node, Lease and pods' status, never
//! the labels, taints or addresses that steer workloads; and what nobody
//! moves once set, a pod's node and a Node's pod range.

use harness::secured::Secured;
use serde_json::{json, Value};

use crate::common::{pod, status_reason, PODS};

/// A node writes only its own Node and Lease, the status of its own pods,
/// deletes only its own pods, creates no pods and reports events only
/// about itself and its pods.
#[test]
fn a_node_cannot_write_other_nodes_objects() {
    let s = Secured::start(&[]);
    s.admin_create("/api/v1/nodes", json!({"metadata": {"name": "n2"}}));
    s.admin_create(PODS, pod("mine", "n1", json!({})));
    s.admin_create(PODS, pod("theirs", "n2", json!({})));
    let n1 = s.node("n1");
    let json_ct = "application/json";
    let merge = "application/merge-patch+json";
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let event = |name: &str, kind: &str, obj: &str| {
        json!({"metadata": {"name": name}, "involvedObject": {"kind": kind, "namespace": "default", "name": obj},
               "reason": "Test", "message": "m", "type": "Normal"})
        .to_string()
    };
    // What its agent does.
    for (method, path, ct, body, want) in [
        (
            "POST",
            "/api/v1/nodes".to_string(),
            json_ct,
            json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}})
                .to_string(),
            201,
        ),
        (
            "PATCH",
            "/api/v1/nodes/n1/status".to_string(),
            merge,
            json!({"status": {"phase": "Running"}}).to_string(),
            200,
        ),
        (
            "POST",
            leases.to_string(),
            json_ct,
            json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}}).to_string(),
            201,
        ),
        (
            "PATCH",
            format!("{PODS}/mine/status"),
            merge,
            json!({"status": {"phase": "Running"}}).to_string(),
            200,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/events".to_string(),
            json_ct,
            event("e1", "Pod", "mine"),
            201,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/events".to_string(),
            json_ct,
            event("e2", "Node", "n1"),
            201,
        ),
    ] {
        let (code, out) = s.curl(&n1, method, &path, Some((ct, &body)));
        assert_eq!(code, want, "{method} {path}: {out}");
    }
    // What it must not.
    for (method, path, ct, body) in [
        (
            "POST",
            "/api/v1/nodes".to_string(),
            json_ct,
            json!({"metadata": {"name": "n3"}}).to_string(),
        ),
        (
            "PATCH",
            "/api/v1/nodes/n2".to_string(),
            merge,
            json!({"metadata": {"labels": {"x": "y"}}}).to_string(),
        ),
        (
            "PATCH",
            "/api/v1/nodes/n2/status".to_string(),
            merge,
            json!({"status": {"phase": "Running"}}).to_string(),
        ),
        (
            "DELETE",
            "/api/v1/nodes/n2".to_string(),
            json_ct,
            "{}".to_string(),
        ),
        (
            "POST",
            leases.to_string(),
            json_ct,
            json!({"metadata": {"name": "n2"}}).to_string(),
        ),
        (
            "PATCH",
            format!("{PODS}/theirs/status"),
            merge,
            json!({"status": {"phase": "Failed"}}).to_string(),
        ),
        (
            "PATCH",
            format!("{PODS}/mine"),
            merge,
            json!({"metadata": {"labels": {"x": "y"}}}).to_string(),
        ),
        (
            "DELETE",
            format!("{PODS}/theirs"),
            json_ct,
            "{}".to_string(),
        ),
        (
            "POST",
            PODS.to_string(),
            json_ct,
            pod("mirror", "n1", json!({})).to_string(),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/events".to_string(),
            json_ct,
            event("e3", "Pod", "theirs"),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/events".to_string(),
            json_ct,
            event("e4", "Node", "n2"),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps".to_string(),
            json_ct,
            json!({"metadata": {"name": "c"}}).to_string(),
        ),
        (
            "POST",
            "/api/v1/namespaces".to_string(),
            json_ct,
            json!({"metadata": {"name": "mine"}}).to_string(),
        ),
    ] {
        let (code, out) = s.curl(&n1, method, &path, Some((ct, &body)));
        assert_eq!(code, 403, "{method} {path}: {out}");
        assert_eq!(status_reason(&out), "Forbidden", "{out}");
    }
    // Its own pod it may delete.
    let (code, out) = s.curl(&n1, "DELETE", &format!("{PODS}/mine"), None);
    assert_eq!(code, 200, "{out}");
}

/// A node cannot take the labels or taints that keep workloads on or off
/// it into its own hands, nor move its pod range; it keeps the machine's
/// labels and node.kubernetes.io ones.
#[test]
fn a_node_cannot_relabel_retaint_or_readdress_itself() {
    let s = Secured::start(&[]);
    let n1 = s.node("n1");
    let merge = "application/merge-patch+json";
    let (code, out) = s.curl(
        &n1,
        "POST",
        "/api/v1/nodes",
        Some((
            "application/json",
            &json!({
        "metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/pci": "yes"}}})
            .to_string(),
        )),
    );
    assert_eq!(code, 403, "registered with a restricted label: {out}");
    let (code, out) = s.curl(&n1, "POST", "/api/v1/nodes", Some(("application/json", &json!({
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "kubernetes.io/arch": "amd64"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}}).to_string())));
    assert_eq!(code, 201, "{out}");
    for patch in [
        json!({"metadata": {"labels": {"node-restriction.kubernetes.io/pci": "yes"}}}),
        json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
        json!({"metadata": {"labels": {"k8s.io/owner": "me"}}}),
        json!({"spec": {"taints": [{"key": "dedicated", "value": "me", "effect": "NoSchedule"}]}}),
        json!({"spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}}),
    ] {
        let (code, out) = s.curl(
            &n1,
            "PATCH",
            "/api/v1/nodes/n1",
            Some((merge, &patch.to_string())),
        );
        assert_eq!(code, 403, "{patch}: {out}");
    }
    let ok = json!({"metadata": {"labels": {"node.kubernetes.io/instance-type": "big", "topology.kubernetes.io/zone": "z1", "rack": "r7"}}});
    let (code, out) = s.curl(
        &n1,
        "PATCH",
        "/api/v1/nodes/n1",
        Some((merge, &ok.to_string())),
    );
    assert_eq!(code, 200, "{out}");
    // An administrator taints and labels it; the node's own status write
    // leaves both alone.
    let admin = json!({"metadata": {"labels": {"node-restriction.kubernetes.io/pci": "yes"}}, "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}});
    assert_eq!(
        s.curl(
            &s.admin(),
            "PATCH",
            "/api/v1/nodes/n1",
            Some((merge, &admin.to_string()))
        )
        .0,
        200
    );
    let (code, out) = s.curl(
        &n1,
        "PATCH",
        "/api/v1/nodes/n1/status",
        Some((merge, &json!({"status": {"phase": "Running"}}).to_string())),
    );
    assert_eq!(code, 200, "{out}");
    let node: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        node["metadata"]["labels"]["node-restriction.kubernetes.io/pci"],
        "yes"
    );
    assert_eq!(node["spec"]["taints"][0]["key"], "k");
    let drop_label = json!({"metadata": {"labels": {"node-restriction.kubernetes.io/pci": null}}});
    let (code, out) = s.curl(
        &n1,
        "PATCH",
        "/api/v1/nodes/n1",
        Some((merge, &drop_label.to_string())),
    );
    assert_eq!(code, 403, "{out}");
}

/// Once a pod runs on a node it stays bound there, and a Node's pod range
/// stays what it was: not even an administrator moves them by update.
#[test]
fn a_pods_node_and_a_nodes_pod_range_cannot_be_moved() {
    let s = Secured::start(&[]);
    s.admin_create(PODS, pod("web", "n1", json!({})));
    s.admin_create(
        "/api/v1/nodes",
        json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}),
    );
    let merge = "application/merge-patch+json";
    let (code, out) = s.curl(
        &s.admin(),
        "PATCH",
        &format!("{PODS}/web"),
        Some((merge, r#"{"spec":{"nodeName":"n2"}}"#)),
    );
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("spec.nodeName"), "{out}");
    let (code, out) = s.curl(
        &s.admin(),
        "PATCH",
        "/api/v1/nodes/n1",
        Some((merge, r#"{"spec":{"podCIDR":"10.244.9.0/24"}}"#)),
    );
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("spec.podCIDR"), "{out}");
    // Binding an already bound pod is refused too.
    let (code, out) = s.curl(&s.admin(), "POST", &format!("{PODS}/web/binding"), Some(("application/json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web"},"target":{"kind":"Node","name":"n2"}}"#)));
    assert_eq!(code, 409, "{out}");
    let k = s.admin_kubectl();
    assert_eq!(
        k.run(&["get", "pod", "web", "-o", "jsonpath={.spec.nodeName}"])
            .unwrap(),
        "n1"
    );
}
