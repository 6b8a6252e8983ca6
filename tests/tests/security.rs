//! Trust boundaries of the API server, each test named after the crossing
//! it refuses: a node's client certificate reaches only what the node's
//! pods need, a node cannot steer workloads through its own Node, and no
//! client can make the server build or hold more than a request's worth.
//! The real API server over etcd with TLS, driven by curl and kubectl.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::process::wait_for;
use harness::secured::{Identity, Secured};
use serde_json::{json, Value};

fn status_reason(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn pod(name: &str, node: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node);
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "registry.local/app:1"}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

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

/// A JSON patch of a few hundred bytes that copies a value onto itself
/// again and again is refused with 413 before it builds a huge object, and
/// so is one that adds a value past the limit.
#[test]
fn a_json_patch_cannot_grow_an_object_past_the_request_limit() {
    let s = Secured::start(&[]);
    s.admin_create(
        CONFIGMAPS,
        json!({"metadata": {"name": "seed"}, "data": {"a": "x".repeat(4096)}}),
    );
    let mut ops = vec![json!({"op": "add", "path": "/data/b", "value": ""})];
    for i in 0..30 {
        ops.push(json!({"op": "copy", "from": "/data", "path": format!("/metadata/annotations")}));
        ops.push(json!({"op": "add", "path": format!("/data/c{i}"), "value": ""}));
        ops.push(
            json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/data/c{i}")}),
        );
    }
    let patch = Value::Array(ops).to_string();
    assert!(patch.len() < 8192);
    let started = Instant::now();
    let (code, out) = s.curl(
        &s.admin(),
        "PATCH",
        &format!("{CONFIGMAPS}/seed"),
        Some(("application/json-patch+json", &patch)),
    );
    assert_eq!(code, 413, "{out}");
    assert_eq!(status_reason(&out), "RequestEntityTooLarge", "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // A value too large for the limit on its own, through merge patch.
    let big = json!({"data": {"big": "y".repeat(3 * 1024 * 1024)}}).to_string();
    let (code, out) = s.curl(
        &s.admin(),
        "PATCH",
        &format!("{CONFIGMAPS}/seed"),
        Some(("application/merge-patch+json", &big)),
    );
    assert_eq!(code, 413, "{out}");
    // The object is as it was, and the server well.
    let (code, out) = s.curl(&s.admin(), "GET", &format!("{CONFIGMAPS}/seed"), None);
    assert_eq!(code, 200, "{out}");
    let cm: Value = serde_json::from_str(&out).unwrap();
    assert!(
        cm["data"].get("b").is_none() && cm["metadata"].get("annotations").is_none(),
        "{cm}"
    );
}

fn continue_token(start: &str) -> String {
    use std::io::Write as _;
    let raw = json!({"rv": 0, "start": start}).to_string();
    let mut child = Command::new("base64")
        .args(["-w", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A forged `continue` token naming a key of another namespace or another
/// resource cannot start a list there: 400, and nothing of it is shown.
#[test]
fn a_continue_token_cannot_start_a_list_outside_its_prefix() {
    let s = Secured::start(&[]);
    s.admin_create("/api/v1/namespaces", json!({"metadata": {"name": "a"}}));
    s.admin_create("/api/v1/namespaces", json!({"metadata": {"name": "b"}}));
    s.admin_create(
        "/api/v1/namespaces/a/configmaps",
        json!({"metadata": {"name": "hidden"}}),
    );
    s.admin_create(
        "/api/v1/namespaces/a/secrets",
        json!({"metadata": {"name": "key"}}),
    );
    for start in [
        "/registry/configmaps/a/",
        "/registry/configmaps/",
        "/registry/secrets/a/",
        "/",
    ] {
        let path = format!(
            "/api/v1/namespaces/b/configmaps?limit=5&continue={}",
            urlencode(&continue_token(start))
        );
        let (code, out) = s.curl(&s.admin(), "GET", &path, None);
        assert_eq!(code, 400, "start {start}: {out}");
        assert!(!out.contains("hidden") && !out.contains("\"key\""), "{out}");
    }
    // A real token still pages.
    s.admin_create(
        "/api/v1/namespaces/b/configmaps",
        json!({"metadata": {"name": "one"}}),
    );
    s.admin_create(
        "/api/v1/namespaces/b/configmaps",
        json!({"metadata": {"name": "two"}}),
    );
    let (code, out) = s.curl(
        &s.admin(),
        "GET",
        "/api/v1/namespaces/b/configmaps?limit=1",
        None,
    );
    assert_eq!(code, 200, "{out}");
    let token = serde_json::from_str::<Value>(&out).unwrap()["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out) = s.curl(
        &s.admin(),
        "GET",
        &format!(
            "/api/v1/namespaces/b/configmaps?limit=1&continue={}",
            urlencode(&token)
        ),
        None,
    );
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("\"two\""), "{out}");
}

/// Absurd `timeoutSeconds` and `limitBytes` values get a 400/422 or a
/// bounded watch; none takes the server down.
#[test]
fn absurd_query_numbers_cannot_break_the_server() {
    let s = Secured::start(&[]);
    s.admin_create(PODS, pod("web", "n1", json!({})));
    let admin = s.admin();
    for (path, want) in [
        (
            "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=99999999999999999999",
            400,
        ),
        (
            "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=abc",
            400,
        ),
        ("/api/v1/namespaces/default/pods/web/log?limitBytes=-1", 422),
        (
            "/api/v1/namespaces/default/pods/web/log?limitBytes=99999999999999999999",
            400,
        ),
        ("/api/v1/namespaces/default/pods/web/log?tailLines=-5", 422),
        ("/api/v1/namespaces/default/configmaps?limit=-1", 200),
    ] {
        let (code, out) = s.curl(&admin, "GET", path, None);
        assert_eq!(code, want, "{path}: {out}");
    }
    // The largest i64 and a negative number: the watch opens (and curl
    // gives up on it), the server stays up.
    for t in ["9223372036854775807", "-9223372036854775808"] {
        let out = Command::new("curl")
            .args(["-sS", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(s.pki().join("ca.crt"))
            .arg("--cert").arg(&admin.cert).arg("--key").arg(&admin.key)
            .arg(format!("https://127.0.0.1:{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds={t}", s.port))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "timeoutSeconds={t}"
        );
    }
    assert_eq!(
        s.curl(&admin, "GET", "/api/v1/namespaces/default", None).0,
        200
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Connections that never finish their handshake or their headers, or
/// sit idle, are closed after the header timeout; past the connection
/// limit new ones are closed at once; and once they are gone the server
/// answers again.
#[test]
fn slow_clients_cannot_hold_the_server() {
    let s = Secured::start(&["--request-header-timeout=2", "--max-connections=4"]);
    let addr = format!("127.0.0.1:{}", s.port);
    // A TLS client that sends half a request and stops.
    let mut slow = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr, "-CAfile"])
        .arg(s.pki().join("ca.crt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = slow.stdin.take().unwrap();
    stdin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let exited = wait_for(Duration::from_secs(15), || slow.try_wait().unwrap());
    assert!(
        exited.is_some(),
        "a client dribbling its headers kept its connection"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    drop(stdin);

    // Silent TCP connections fill the limit; the next is closed at once.
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 1];
    let closed_at_once = matches!(extra.read(&mut buf), Ok(0))
        || matches!(extra.read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed_at_once, "a connection past the limit was kept");
    // The silent ones are closed by the timeout, and service resumes.
    for mut c in held {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = c.read(&mut buf);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }
    let back = wait_for(Duration::from_secs(10), || {
        (s.curl(&s.admin(), "GET", "/healthz", None).0 == 200).then_some(())
    });
    assert!(back.is_some());
}

/// A node's client certificate is valid for a year, not for decades; the
/// admin's keeps its long life.
#[test]
fn a_stolen_node_certificate_expires_within_a_year() {
    let s = Secured::start(&[]);
    let end = |cert: &Path| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-checkend"])
            .arg((366 * 24 * 3600).to_string())
            .arg("-in")
            .arg(cert)
            .output()
            .unwrap();
        // Exit 0: still valid after that many seconds.
        out.status.success()
    };
    let valid_now = |cert: &Path| {
        Command::new("openssl")
            .args(["x509", "-noout", "-checkend", "0", "-in"])
            .arg(cert)
            .status()
            .unwrap()
            .success()
    };
    let node = s.node("n1");
    assert!(valid_now(&node.cert));
    assert!(!end(&node.cert), "a node certificate outlives a year");
    assert!(end(&s.admin().cert));
    // And it works today.
    assert_eq!(s.curl(&node, "GET", "/api/v1/nodes", None).0, 200);
}

/// The agent keeps working under its own node identity: it registers and
/// heartbeats with its real code, and every other call it makes (its pods'
/// watch, the Services, EndpointSlices and Nodes it programs, the Secret
/// and ConfigMap of a pod's volumes, pod status, events, the final delete)
/// passes, while the same calls for another node's pod do not.
#[test]
fn the_agent_is_refused_nothing_it_needs_under_its_node_identity() {
    use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    let s = Secured::start(&[]);
    s.admin_create(
        SECRETS,
        json!({"metadata": {"name": "pull"}, "data": {"k": "eA=="}}),
    );
    s.admin_create(
        CONFIGMAPS,
        json!({"metadata": {"name": "conf"}, "data": {"a": "b"}}),
    );
    s.admin_create(
        PODS,
        pod(
            "web",
            "n1",
            json!({"imagePullSecrets": [{"name": "pull"}],
                   "volumes": [{"name": "c", "configMap": {"name": "conf"}}]}),
        ),
    );
    s.admin_create(PODS, pod("other", "n2", json!({})));
    let kubeconfig = s.node_kubeconfig("n1");
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let cfg = kestrel_agent::node::NodeConfig {
            name: "n1".into(),
            state_dir: state.path().to_path_buf(),
            max_pods: 110,
            reserved_cpu_millis: 0,
            reserved_memory: 0,
            eviction_memory: 0,
            eviction_disk_percent: 0,
            node_ip: Some("127.0.0.1".into()),
            labels: vec![("rack".into(), "r1".into())],
            lease_interval: Duration::from_millis(200),
            status_interval: Duration::from_secs(1),
            runtime_version: "test".into(),
            api_port: 10250,
            pod_cidr: Some("10.244.1.0/24".into()),
        };
        kestrel_agent::node::register(&client, &cfg).await.unwrap();
        // Registering again (the Node exists) refreshes the labels.
        kestrel_agent::node::register(&client, &cfg).await.unwrap();
        let beat = kestrel_agent::node::heartbeat(client.clone(), cfg.clone(), || true);
        let _ = tokio::time::timeout(Duration::from_secs(2), beat).await;
        let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), "kube-node-lease");
        let l = lease.get("n1").await.unwrap();
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("n1"));

        let lp = ListParams::default();
        Api::<Node>::all(client.clone()).list(&lp).await.unwrap();
        Api::<Service>::all(client.clone()).list(&lp).await.unwrap();
        Api::<EndpointSlice>::all(client.clone()).list(&lp).await.unwrap();
        Api::<Service>::namespaced(client.clone(), "kube-system")
            .get_opt("kube-dns")
            .await
            .unwrap();
        let pods: Api<Pod> = Api::all(client.clone());
        let mine = pods
            .list(&ListParams::default().fields("spec.nodeName=n1"))
            .await
            .unwrap();
        assert_eq!(mine.items.len(), 1);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        secrets.get("pull").await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        cms.get("conf").await.unwrap();
        let in_ns: Api<Pod> = Api::namespaced(client.clone(), "default");
        let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
        in_ns
            .patch_status("web", &PatchParams::default(), &status)
            .await
            .unwrap();
        let forbidden = |r: Result<Pod, kube::Error>| {
            matches!(r, Err(kube::Error::Api(ref e)) if e.code == 403)
        };
        assert!(forbidden(
            in_ns
                .patch_status("other", &PatchParams::default(), &status)
                .await
        ));
        let event = |name: &str, pod: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": pod},
                "reason": "Pulling", "message": "m", "type": "Normal"}))
            .unwrap()
        };
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        events
            .create(&PostParams::default(), &event("e1", "web"))
            .await
            .unwrap();
        assert!(events
            .create(&PostParams::default(), &event("e2", "other"))
            .await
            .is_err());
        let gone = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        assert!(in_ns.delete("other", &gone).await.is_err());
        in_ns.delete("web", &gone).await.unwrap();
    });
    let node: Value =
        serde_json::from_str(&s.curl(&s.admin(), "GET", "/api/v1/nodes/n1", None).1).unwrap();
    assert_eq!(node["metadata"]["labels"]["rack"], "r1");
    assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
}

/// A node renews its certificate by sending a request for a new key: it
/// gets a certificate for itself whatever the request names, one that
/// works at once, while nobody but a node gets one this way.
#[test]
fn a_node_cannot_renew_into_another_identity() {
    let s = Secured::start(&[]);
    let dir = s.dir.path();
    let key = dir.join("renewed.key");
    let csr = dir.join("renewed.csr");
    let ok = Command::new("openssl")
        .args([
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    // It asks to be the admin.
    let ok = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-subj",
            "/CN=kubernetes-admin/O=system:masters",
            "-key",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .status()
        .unwrap();
    assert!(ok.success());
    let request = std::fs::read_to_string(&csr).unwrap();
    let path = "/kestrel/v1/node-client-certificate";
    let (code, out) = s.curl(
        &s.admin(),
        "POST",
        path,
        Some(("application/pkcs10", &request)),
    );
    assert_eq!(code, 403, "{out}");
    let n1 = s.node("n1");
    let (code, out) = s.curl(
        &n1,
        "POST",
        path,
        Some(("application/pkcs10", "not a request")),
    );
    assert_eq!(code, 400, "{out}");
    let (code, pem) = s.curl(&n1, "POST", path, Some(("application/pkcs10", &request)));
    assert_eq!(code, 201, "{pem}");
    let cert = dir.join("renewed.crt");
    std::fs::write(&cert, &pem).unwrap();
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("CN=system:node:n1") && subject.contains("O=system:nodes"),
        "{subject}"
    );
    assert!(!subject.contains("masters"), "{subject}");
    let renewed = Identity { cert, key };
    assert_eq!(s.curl(&renewed, "GET", "/api/v1/nodes", None).0, 200);
    assert_eq!(
        s.curl(&renewed, "GET", "/api/v1/namespaces/default/secrets", None)
            .0,
        403
    );
}
