//! What a user does most with kubectl: namespaces and labelled pods from
//! YAML, apply after an edit, scale, watch, delete, describe, and a node
//! written by a client.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::wait_for;

use crate::common::json;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: front
  namespace: shop
  labels: {app: front, tier: web}
spec:
  containers:
  - name: nginx
    image: registry.local/nginx:1.25
    ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: shop
  labels: {app: db, tier: data}
spec:
  containers:
  - name: pg
    image: registry.local/postgres:16
"#;

/// A user creates a namespace and labelled pods from YAML, selects them by
/// label, relabels and annotates them, and reads them in every output form.
#[test]
fn namespaces_and_labelled_pods_from_yaml() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let ns = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        )
        .unwrap();
    assert!(
        ns.status.success(),
        "{}",
        String::from_utf8_lossy(&ns.stderr)
    );
    let out = k.run_stdin(&["apply", "-f", "-"], PODS).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/front created"));

    let web = k
        .run(&["get", "pods", "-n", "shop", "-l", "tier=web", "-o", "name"])
        .unwrap();
    assert_eq!(web.trim(), "pod/front");
    let set = k
        .run(&[
            "get",
            "pods",
            "-n",
            "shop",
            "-l",
            "app in (db,cache)",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(set.trim(), "pod/db");

    let table = k
        .run(&["get", "pods", "-n", "shop", "--show-labels"])
        .unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "LABELS"]
    );
    assert!(table.contains("app=front,tier=web"), "{table}");
    let wide = k.run(&["get", "pods", "-n", "shop", "-o", "wide"]).unwrap();
    assert!(wide.lines().next().unwrap().contains("NODE"), "{wide}");
    assert!(wide.contains("Pending"), "{wide}");

    k.run(&["label", "pod", "front", "-n", "shop", "release=canary"])
        .unwrap();
    k.run(&["annotate", "pod", "front", "-n", "shop", "owner=team-a"])
        .unwrap();
    let pod = json(
        &k.run(&["get", "pod", "front", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(pod["metadata"]["labels"]["release"], "canary");
    assert_eq!(pod["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["spec"]["restartPolicy"], "Always", "defaults applied");
    let yaml = k
        .run(&["get", "pod", "db", "-n", "shop", "-o", "yaml"])
        .unwrap();
    assert!(yaml.contains("image: registry.local/postgres:16"), "{yaml}");

    // Another namespace does not see them; -A sees them all.
    let none = k.output(&["get", "pods"]).unwrap();
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found in default namespace")
    );
    let all = k.run(&["get", "pods", "-A", "-o", "name"]).unwrap();
    assert_eq!(all.lines().count(), 2);
}

/// Re-applying an edited manifest changes what was edited and keeps what
/// the server set (uid, status, defaults); `edit` goes through too.
#[test]
fn apply_edit_and_scale_keep_server_fields() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {app: web}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: web, image: busybox:1.36, env: [{name: A, value: '1'}, {name: B, value: '2'}]}\n";
    k.run_stdin(&["apply", "-f", "-"], rc).unwrap();
    let before = json(&k.run(&["get", "rc", "web", "-o", "json"]).unwrap());
    let edited = rc
        .replace("busybox:1.36", "busybox:1.37")
        .replace(", {name: B, value: '2'}", "");
    let out = k.run_stdin(&["apply", "-f", "-"], &edited).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = json(&k.run(&["get", "rc", "web", "-o", "json"]).unwrap());
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["metadata"]["creationTimestamp"],
        before["metadata"]["creationTimestamp"]
    );
    let c = &after["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox:1.37");
    assert_eq!(c["env"].as_array().unwrap().len(), 1, "env B removed: {c}");
    assert_eq!(
        c["terminationMessagePath"], "/dev/termination-log",
        "defaults kept"
    );
    assert_eq!(after["metadata"]["generation"], 2);

    // `kubectl edit` with a scripted editor.
    let editor = "sed -i 's/busybox:1.37/busybox:1.38/'";
    let out = k
        .command(&["edit", "rc", "web"])
        .env("KUBE_EDITOR", editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = k
        .run(&[
            "get",
            "rc",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .unwrap();
    assert_eq!(img, "busybox:1.38");

    k.run(&["scale", "rc", "web", "--replicas=5"]).unwrap();
    assert_eq!(
        k.run(&["get", "rc", "web", "-o", "jsonpath={.spec.replicas}"])
            .unwrap(),
        "5"
    );
    // --current-replicas is a PUT of the Scale with a precondition.
    let stale = k
        .output(&["scale", "rc", "web", "--current-replicas=2", "--replicas=1"])
        .unwrap();
    assert!(!stale.status.success());

    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  selector: {matchLabels: {app: api}}\n  template:\n    metadata: {labels: {app: api}}\n    spec: {containers: [{name: api, image: busybox}]}\n";
    k.run_stdin(&["create", "-f", "-"], deploy).unwrap();
    k.run(&["scale", "deployment", "api", "--replicas=4"])
        .unwrap();
    let d = json(&k.run(&["get", "deploy", "api", "-o", "json"]).unwrap());
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let header = k.run(&["get", "deploy"]).unwrap();
    assert!(header.starts_with("NAME"), "{header}");
    assert!(header.contains("UP-TO-DATE"), "{header}");
}

/// `kubectl get -w` shows changes as they happen; `delete --wait` returns
/// once the object is gone; `describe` and `get cs` answer.
#[test]
fn watch_delete_describe_and_component_status() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let mut watch = k
        .command(&["get", "pods", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    k.run(&["run", "w1", "--image=busybox"]).unwrap();
    k.run(&["label", "pod", "w1", "seen=yes"]).unwrap();
    k.run(&["delete", "pod", "w1", "--wait=true"]).unwrap();
    let mut lines = Vec::new();
    let got = wait_for(Duration::from_secs(10), || {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        (lines.len() >= 3).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(got.is_some(), "watch lines: {lines:?}");
    // Added, labelled, deleted: three events for the pod, nothing else.
    assert!(lines.iter().all(|l| l.ends_with("pod/w1")), "{lines:?}");
    let gone = k.output(&["get", "pod", "w1"]).unwrap();
    assert!(String::from_utf8_lossy(&gone.stderr)
        .contains("Error from server (NotFound): pods \"w1\" not found"));

    k.run(&["run", "d1", "--image=busybox", "--labels=app=d"])
        .unwrap();
    let describe = k.run(&["describe", "pod", "d1"]).unwrap();
    assert!(
        describe.contains("Name:") && describe.contains("d1"),
        "{describe}"
    );
    assert!(describe.contains("app=d"), "{describe}");

    let cs = k.run(&["get", "cs"]).unwrap();
    assert!(
        cs.lines()
            .any(|l| l.starts_with("etcd-0") && l.contains("Healthy")),
        "{cs}"
    );
    assert!(cs.contains("scheduler"), "{cs}");
}

/// A node written by a client (as a hollow node would be) reads back with
/// its capacity and conditions.
#[test]
fn node_written_by_a_client_reads_back() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1","labels":{"kubernetes.io/hostname":"n1"}},
      "status":{"capacity":{"cpu":"4","memory":"8Gi","pods":"110"},"allocatable":{"cpu":"4","memory":"8Gi","pods":"110"},
      "conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready"}],
      "nodeInfo":{"kubeletVersion":"v1.32.0","osImage":"Debian","kernelVersion":"6.18","containerRuntimeVersion":"libcontainer://0.7","architecture":"amd64","operatingSystem":"linux","machineID":"","systemUUID":"","bootID":"","kubeProxyVersion":""}}}"#;
    k.run_stdin(&["create", "-f", "-"], node).unwrap();
    let got = json(&k.run(&["get", "nodes", "-o", "json"]).unwrap());
    let n = &got["items"][0];
    assert_eq!(n["status"]["capacity"]["cpu"], "4");
    assert_eq!(n["status"]["conditions"][0]["type"], "Ready");
    let table = k.run(&["get", "nodes"]).unwrap();
    assert!(table.lines().nth(1).unwrap().contains("Ready"), "{table}");
}
