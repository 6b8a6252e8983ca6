//! User stories of the API server driven by the real kubectl 1.32.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::wait_for;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

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

/// The imperative `kubectl create` commands, which send protobuf bodies,
/// make the same objects a manifest would.
#[test]
fn kubectl_create_commands_send_protobuf_and_work() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    k.run(&["create", "namespace", "shop"]).unwrap();
    k.run(&[
        "create",
        "deployment",
        "web",
        "--image=registry.local/web:1",
        "--replicas=3",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=color=blue",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&[
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cret",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&[
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&["create", "serviceaccount", "bot", "-n", "shop"])
        .unwrap();

    let ns = json(&k.run(&["get", "namespace", "shop", "-o", "json"]).unwrap());
    assert_eq!(ns["status"]["phase"], "Active");
    let d = json(
        &k.run(&["get", "deployment", "web", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/web:1"
    );
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let cm = json(
        &k.run(&["get", "configmap", "cfg", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(cm["data"]["color"], "blue");
    let secret = json(
        &k.run(&["get", "secret", "pw", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(secret["data"]["password"], "czNjcmV0", "base64 of s3cret");
    let svc = json(
        &k.run(&["get", "service", "web", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .is_some_and(|ip| ip.starts_with("10.")));
    k.run(&["get", "serviceaccount", "bot", "-n", "shop"])
        .unwrap();
}

/// Bad input gets a Status naming the problem, and nothing is stored.
#[test]
fn bad_input_is_rejected_with_a_status_and_nothing_is_stored() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let unknown = "apiVersion: v1\nkind: Pod\nmetadata: {name: typo}\nspec:\n  containers: [{name: c, imagee: busybox}]\n";
    let out = k.run_stdin(&["create", "-f", "-"], unknown).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Error from server (BadRequest)")
            && err.contains("unknown field \"spec.containers[0].imagee\""),
        "{err}"
    );

    let wrong_type = "apiVersion: v1\nkind: Pod\nmetadata: {name: typed}\nspec:\n  containers: [{name: c, image: busybox, ports: [{containerPort: eighty}]}]\n";
    let out = k.run_stdin(&["create", "-f", "-"], wrong_type).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BadRequest") && err.contains("containerPort"),
        "{err}"
    );

    let out = k.output(&["run", "Bad_Name", "--image=busybox"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is invalid") && err.contains("metadata.name"),
        "{err}"
    );

    let no_containers =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: empty}\nspec: {containers: []}\n";
    let out = k.run_stdin(&["create", "-f", "-"], no_containers).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Invalid") || err.contains("invalid"), "{err}");
    assert!(err.contains("spec.containers: Required value"), "{err}");

    let out = k.output(&["get", "pods", "-l", "a in (b"]).unwrap();
    assert!(!out.status.success());

    let out = k.output(&["get", "widgets"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("the server doesn't have a resource type \"widgets\""));

    let all = k.run(&["get", "pods", "-A", "-o", "name"]).unwrap();
    assert_eq!(all.trim(), "", "nothing stored");
}

/// Stopping etcd turns requests into 5xx Statuses; when it returns, the
/// API server serves again and every acknowledged write is there.
#[test]
fn etcd_outage_gives_5xx_then_recovers_without_losing_writes() {
    let mut cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    for i in 0..5 {
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{k: '{i}'}}\n"
        );
        let out = k.run_stdin(&["create", "-f", "-"], &cm).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cp.etcd.kill();
    let out = k
        .output(&["get", "configmaps", "--request-timeout=30s"])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ServiceUnavailable") || err.contains("503") || err.contains("etcd"),
        "{err}"
    );
    cp.etcd.restart().unwrap();
    let names = wait_for(Duration::from_secs(30), || {
        k.run(&["get", "configmaps", "-o", "name"])
            .ok()
            .filter(|s| s.lines().count() == 5)
    });
    assert!(names.is_some(), "configmaps after recovery");
    let out = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after}\n",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarting the API server: a client that re-watches from the version
/// it last saw misses nothing written in between.
#[test]
fn apiserver_restart_loses_no_watch_events() {
    let mut cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let out = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before}\n",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rv = json(&k.run(&["get", "configmaps", "-o", "json"]).unwrap())["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    cp.kill_apiserver();
    // Written straight to etcd while no API server runs.
    let obj = r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"during","namespace":"default","uid":"u-1","creationTimestamp":"2026-01-01T00:00:00Z"},"data":{"k":"v"}}"#;
    cp.etcd
        .etcdctl(&["put", "/registry/configmaps/default/during", obj])
        .unwrap();
    cp.start_apiserver().unwrap();
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2",
        cp.url()
    );
    let out = std::process::Command::new("curl")
        .args(["-sN", &url])
        .output();
    let body = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(_) => {
            // No curl: use kubectl's raw mode.
            k.run(&["get", "--raw", &url[cp.url().len()..]]).unwrap()
        }
    };
    let events: Vec<Value> = body.lines().map(json).collect();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "during"),
        "events after restart: {events:?}"
    );
}

/// An HTTPS API server over `etcd` with its CA in DIR/pki, its admin
/// kubeconfig at DIR/NAME.kubeconfig and its log at DIR/NAME.log.
fn tls_apiserver(
    etcd: &harness::etcd::Etcd,
    dir: &std::path::Path,
    name: &str,
    args: &[String],
) -> harness::process::Guarded {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    harness::process::Guarded::spawn(
        "apiserver",
        std::process::Command::new(harness::cluster::binary("control-plane"))
            .args(["apiserver", "--etcd-servers", &etcd.client_url()])
            .arg(format!("--cert-dir={}", dir.join("pki").display()))
            .arg(format!(
                "--admin-kubeconfig={}",
                dir.join(format!("{name}.kubeconfig")).display()
            ))
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap()
}

/// The API server serves HTTPS with certificates it makes on first start:
/// the admin kubeconfig it writes works, anonymous requests get 401, and a
/// token user without rights gets 403.
#[test]
fn https_with_client_certificates_and_tokens() {
    let etcd = harness::etcd::Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = harness::ports::free_port();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret,alice,1001\n").unwrap();
    let kubeconfig = dir.path().join("apiserver.kubeconfig");
    let _apiserver = tls_apiserver(
        &etcd,
        dir.path(),
        "apiserver",
        &[
            format!("--bind-address=127.0.0.1:{port}"),
            format!("--token-auth-file={}", tokens.display()),
        ],
    );
    let k = harness::kubectl::Kubectl::new(&kubeconfig).unwrap();
    let ready = wait_for(Duration::from_secs(30), || {
        kubeconfig
            .exists()
            .then(|| k.run(&["get", "ns", "-o", "name"]).ok())
            .flatten()
    });
    let log = || std::fs::read_to_string(dir.path().join("apiserver.log")).unwrap_or_default();
    assert!(
        ready.unwrap_or_default().contains("namespace/default"),
        "{}",
        log()
    );

    let ca = dir.path().join("pki/ca.crt");
    let url = format!("https://127.0.0.1:{port}/api/v1/namespaces");
    let anon = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anon.stdout), "401");
    let alice = std::process::Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Authorization: Bearer s3cret",
            "--cacert",
        ])
        .arg(&ca)
        .arg(&url)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&alice.stdout);
    assert!(out.ends_with("403"), "{out}");
    assert!(
        out.contains("User \\\"alice\\\" cannot list resource \\\"namespaces\\\""),
        "{out}"
    );
}

/// An operator scrapes the API server: `/metrics` counts requests by verb,
/// resource and code, has their latency by verb and resource, and shows the
/// watches open now.
#[test]
fn metrics_count_requests_by_verb_resource_and_code() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    k.run(&["create", "configmap", "m1", "--from-literal=a=b"])
        .unwrap();
    k.run(&["get", "configmap", "m1"]).unwrap();
    k.run(&["get", "configmaps"]).unwrap();
    assert!(k.run(&["get", "configmap", "missing"]).is_err());
    // A watch held open while the metrics are read.
    let mut watch = std::process::Command::new(harness::kubectl::binary())
        .args(["--kubeconfig"])
        .arg(cp.kubeconfig())
        .args(["get", "configmaps", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let open = "apiserver_longrunning_requests{verb=\"WATCH\",resource=\"configmaps\"} 1";
    let text = wait_for(Duration::from_secs(10), || {
        let t = k.run(&["get", "--raw", "/metrics"]).ok()?;
        t.contains(open).then_some(t)
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let text = text.unwrap_or_else(|| panic!("no open watch counted"));
    for want in [
        "apiserver_request_total{verb=\"POST\",resource=\"configmaps\",code=\"201\"} 1",
        "apiserver_request_total{verb=\"GET\",resource=\"configmaps\",code=\"200\"}",
        "apiserver_request_total{verb=\"GET\",resource=\"configmaps\",code=\"404\"} 1",
        "apiserver_request_total{verb=\"LIST\",resource=\"configmaps\",code=\"200\"}",
        "apiserver_request_duration_seconds_count{verb=\"POST\",resource=\"configmaps\"} 1",
        "apiserver_request_duration_seconds_bucket{verb=\"GET\",resource=\"configmaps\",le=\"+Inf\"}",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // The watch went when kubectl did (noticed, at the latest, when the
    // next event finds the connection closed).
    k.run(&["create", "configmap", "m2"]).unwrap();
    let closed = "apiserver_longrunning_requests{verb=\"WATCH\",resource=\"configmaps\"} 0";
    assert!(
        wait_for(Duration::from_secs(10), || {
            k.run(&["get", "--raw", "/metrics"])
                .ok()?
                .contains(closed)
                .then_some(())
        })
        .is_some(),
        "the closed watch still counts"
    );
}

/// A new cluster has Service default/kubernetes at the range's first
/// address and kube-system/kube-dns at its tenth, as every cluster does.
/// The endpoints of `kubernetes` are the API servers that are alive: two
/// servers announce their addresses, the one that dies drops out, and
/// nothing is rewritten while nothing changes. A deleted `kubernetes` comes
/// back.
#[test]
fn the_kubernetes_service_leads_to_the_live_api_servers() {
    let etcd = harness::etcd::Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = harness::ports::free_port();
    // Two servers on one port, as a cluster's API servers are, on two
    // loopback addresses; the addresses they announce are documentation
    // ones that nothing connects to.
    let start = |i: u8| {
        let name = format!("apiserver-{i}");
        let kubeconfig = dir.path().join(format!("{name}.kubeconfig"));
        let guard = tls_apiserver(
            &etcd,
            dir.path(),
            &name,
            &[
                format!("--bind-address=127.0.0.{i}:{port}"),
                format!("--tls-san=127.0.0.{i}"),
                format!("--advertise-url=https://127.0.0.{i}:{port}"),
                format!("--advertise-address=192.0.2.1{i}"),
            ],
        );
        let k = harness::kubectl::Kubectl::new(&kubeconfig).unwrap();
        let up = wait_for(Duration::from_secs(30), || {
            kubeconfig
                .exists()
                .then(|| k.run(&["get", "ns", "-o", "name"]).ok())
                .flatten()
        });
        assert!(up.is_some(), "API server {i} did not start");
        (guard, k)
    };
    let (_first, k) = start(2);
    let (second, _) = start(3);

    let services = wait_for(Duration::from_secs(30), || {
        let v = json(&k.run(&["get", "svc", "-A", "-o", "json"]).ok()?);
        let find = |ns: &str, name: &str| {
            v["items"]
                .as_array()?
                .iter()
                .find(|s| s["metadata"]["namespace"] == ns && s["metadata"]["name"] == name)
                .cloned()
        };
        Some((
            find("default", "kubernetes")?,
            find("kube-system", "kube-dns")?,
        ))
    });
    let (api, dns) = services.expect("Services kubernetes and kube-dns");
    assert_eq!(api["spec"]["clusterIP"], "10.96.0.1", "{api}");
    assert_eq!(api["spec"]["ports"][0]["port"], 443, "{api}");
    assert_eq!(api["spec"]["ports"][0]["targetPort"], port, "{api}");
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10", "{dns}");
    let dns_ports: Vec<String> = dns["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(dns_ports, ["53/UDP", "53/TCP"], "{dns}");

    let endpoints = || {
        k.run(&[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={range .subsets[*]}{.addresses[*].ip}:{.ports[0].port}{end}",
        ])
        .unwrap_or_default()
    };
    let slice = || {
        k.run(&[
            "get",
            "endpointslice",
            "kubernetes",
            "-o",
            "jsonpath={.endpoints[*].addresses[0]}:{.ports[0].port} {.metadata.labels.kubernetes\\.io/service-name} {.metadata.resourceVersion}",
        ])
        .unwrap_or_default()
    };
    let both = format!("192.0.2.12 192.0.2.13:{port}");
    let announced = wait_for(Duration::from_secs(30), || {
        (endpoints() == both && slice().starts_with(&format!("{both} kubernetes "))).then_some(())
    });
    assert!(announced.is_some(), "{} / {}", endpoints(), slice());
    // Two rounds of announcing (10 s apart) with nothing to change.
    let steady = slice();
    std::thread::sleep(Duration::from_secs(21));
    assert_eq!(
        slice(),
        steady,
        "the slice is rewritten with nothing changed"
    );

    drop(second);
    let one = format!("192.0.2.12:{port}");
    let dropped = wait_for(Duration::from_secs(60), || {
        (endpoints() == one && slice().starts_with(&format!("{one} "))).then_some(())
    });
    assert!(dropped.is_some(), "{} / {}", endpoints(), slice());

    k.run(&["delete", "svc", "kubernetes"]).unwrap();
    let back = wait_for(Duration::from_secs(30), || {
        k.run(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .ok()
        .filter(|ip| ip == "10.96.0.1")
    });
    assert!(back.is_some(), "Service kubernetes did not come back");
}
