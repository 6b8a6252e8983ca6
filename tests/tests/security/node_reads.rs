//! What a node may read: Secrets, ConfigMaps and PersistentVolumes only
//! while its own pods name them, and of other nodes' pods nothing beyond
//! the list and watch it is given.

use std::time::Duration;

use harness::process::wait_for;
use harness::secured::Secured;
use serde_json::{json, Value};

use crate::common::{pod, CONFIGMAPS, PODS, SECRETS};

/// A node reads a Secret or ConfigMap only while one of its own pods names
/// it: not one nobody names, not one another node's pod names, not the
/// list of them all, and no longer once its pod is gone.
#[test]
fn a_node_cannot_read_secrets_its_pods_do_not_name() {
    let s = Secured::start(&[]);
    for name in ["mine", "theirs", "nobodys"] {
        s.admin_create(
            SECRETS,
            json!({"metadata": {"name": name}, "data": {"k": "c2VjcmV0"}}),
        );
    }
    s.admin_create(
        CONFIGMAPS,
        json!({"metadata": {"name": "env"}, "data": {"a": "b"}}),
    );
    s.admin_create(
        PODS,
        pod(
            "web",
            "n1",
            json!({"volumes": [{"name": "s", "secret": {"secretName": "mine"}}],
                   "containers": [{"name": "c", "image": "registry.local/app:1",
                                   "envFrom": [{"configMapRef": {"name": "env"}}]}]}),
        ),
    );
    s.admin_create(
        PODS,
        pod(
            "other",
            "n2",
            json!({"volumes": [{"name": "s", "secret": {"secretName": "theirs"}}]}),
        ),
    );
    let n1 = s.node("n1");
    let get = |path: &str| s.curl(&n1, "GET", path, None);
    let (code, body) = get(&format!("{SECRETS}/mine"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&format!("{CONFIGMAPS}/env")).0, 200);
    for path in [
        format!("{SECRETS}/theirs"),
        format!("{SECRETS}/nobodys"),
        format!("{SECRETS}/missing"),
        SECRETS.to_string(),
        "/api/v1/secrets".to_string(),
        format!("{SECRETS}?watch=true&timeoutSeconds=1"),
        CONFIGMAPS.to_string(),
    ] {
        let (code, body) = get(&path);
        assert_eq!(code, 403, "GET {path}: {body}");
    }
    // The pod→node relation is read when asked: the pod gone, the Secret closes.
    let (code, body) = s.curl(
        &s.admin(),
        "DELETE",
        &format!("{PODS}/web?gracePeriodSeconds=0"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let closed = wait_for(Duration::from_secs(10), || {
        (get(&format!("{SECRETS}/mine")).0 == 403).then_some(())
    });
    assert!(
        closed.is_some(),
        "the Secret stayed readable after its pod went"
    );
}

/// A node reads a PersistentVolume only while a claim of one of its own
/// pods is bound to it, and only the claims its pods name.
#[test]
fn a_node_cannot_read_volumes_its_pods_do_not_claim() {
    let s = Secured::start(&[]);
    for (claim, volume) in [("mine", "pv-mine"), ("theirs", "pv-theirs")] {
        s.admin_create(
            "/api/v1/persistentvolumes",
            json!({"metadata": {"name": volume},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "hostPath": {"path": format!("/srv/{volume}")}}}),
        );
        s.admin_create(
            "/api/v1/namespaces/default/persistentvolumeclaims",
            json!({"metadata": {"name": claim},
                   "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": volume,
                            "storageClassName": "",
                            "resources": {"requests": {"storage": "1Gi"}}}}),
        );
    }
    for (name, node, claim) in [("web", "n1", "mine"), ("other", "n2", "theirs")] {
        s.admin_create(
            PODS,
            pod(
                name,
                node,
                json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}),
            ),
        );
    }
    let n1 = s.node("n1");
    let get = |path: &str| s.curl(&n1, "GET", path, None);
    let (code, body) = get("/api/v1/persistentvolumes/pv-mine");
    assert_eq!(code, 200, "{body}");
    let (code, body) = get("/api/v1/namespaces/default/persistentvolumeclaims/mine");
    assert_eq!(code, 200, "{body}");
    for path in [
        "/api/v1/persistentvolumes/pv-theirs",
        "/api/v1/persistentvolumes",
        "/api/v1/namespaces/default/persistentvolumeclaims/theirs",
    ] {
        let (code, body) = get(path);
        assert_eq!(code, 403, "GET {path}: {body}");
    }
}

/// A node gets nothing of pods it does not run beyond the list and watch
/// NetworkPolicy needs: no other node's pod by name, and no exec, logs or
/// attach into any pod, its own included.
#[test]
fn a_node_cannot_read_or_enter_other_nodes_pods() {
    let s = Secured::start(&[]);
    s.admin_create(PODS, pod("mine", "n1", json!({})));
    s.admin_create(PODS, pod("theirs", "n2", json!({})));
    let n1 = s.node("n1");
    let (code, body) = s.curl(
        &n1,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["mine"]);
    assert_eq!(s.curl(&n1, "GET", &format!("{PODS}/mine"), None).0, 200);
    // Every agent enforces NetworkPolicy against peers on all nodes, so a
    // node lists and watches every pod (as a policy-enforcing CNI's agent
    // does); it still gets no other node's pod by name, nor logs or exec.
    assert_eq!(s.curl(&n1, "GET", "/api/v1/pods", None).0, 200);
    for (method, path) in [
        ("GET", format!("{PODS}/theirs")),
        ("GET", format!("{PODS}/mine/log")),
        ("GET", format!("{PODS}/theirs/log")),
        ("POST", format!("{PODS}/mine/exec?command=id&stdout=true")),
        ("GET", format!("{PODS}/mine/exec?command=id&stdout=true")),
        ("POST", format!("{PODS}/mine/attach?stdout=true")),
        ("POST", format!("{PODS}/mine/portforward?ports=80")),
    ] {
        let (code, body) = s.curl(&n1, method, &path, None);
        assert!(code == 403 || code == 404, "{method} {path}: {code} {body}");
        assert!(
            code != 404
                || !path.contains("/log")
                    && !path.contains("/exec")
                    && !path.contains("/portforward"),
            "{method} {path}: {body}"
        );
    }
    // kubectl with the node's kubeconfig says the same.
    let k = harness::kubectl::Kubectl::new(&s.node_kubeconfig("n1")).unwrap();
    let out = k.output(&["exec", "mine", "--", "id"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Forbidden")
            || String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{out:?}"
    );
}
