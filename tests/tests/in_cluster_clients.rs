//! User story: a program inside a pod talks to the API server as the
//! pod's ServiceAccount, with nothing but what the pod was given (the
//! mounted token, CA and namespace, and `KUBERNETES_SERVICE_HOST`/`PORT`).
//! The real agent fills the volume; the python `kubernetes` client's
//! `load_incluster_config()` runs in the pod's network namespace and reads
//! the files and variables through the container's own view of them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::cluster::{ControlPlane, API_ADDRESS, TLS_PORT};
use harness::node::{cgroup2_mount, Node};
use harness::process::wait_for;

const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Loads the in-cluster configuration from the container's root
/// (argv[1]) and environment (argv[2], NUL-separated), lists the pods of
/// the namespace the pod was given, and prints the HTTP status and names.
const SCRIPT: &str = r#"
import json, os, sys
from kubernetes import client, config
from kubernetes.config import incluster_config

root = sys.argv[1]
incluster_config.SERVICE_TOKEN_FILENAME = root + "/var/run/secrets/kubernetes.io/serviceaccount/token"
incluster_config.SERVICE_CERT_FILENAME = root + "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
with open(sys.argv[2], "rb") as f:
    for kv in f.read().split(b"\0"):
        if b"=" in kv:
            k, v = kv.decode().split("=", 1)
            os.environ[k] = v
with open(root + "/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
    ns = f.read()
config.load_incluster_config()
v1 = client.CoreV1Api()
try:
    pods = v1.list_namespaced_pod(ns)
    print(json.dumps({"status": 200, "host": v1.api_client.configuration.host,
                      "pods": [p.metadata.name for p in pods.items]}))
except client.exceptions.ApiException as e:
    print(json.dumps({"status": e.status, "host": v1.api_client.configuration.host}))
"#;

fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/kestrel/python/bin/python")
}

/// The host pid of the container process whose environment holds `marker`.
fn container_pid(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        env.split(|b| *b == 0)
            .any(|kv| kv == marker.as_bytes())
            .then_some(pid)
    })
}

/// Removes a cgroup directory when the test ends, however it ends.
struct Cgroup(PathBuf);
impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs the in-cluster client as a process of the pod: in its network
/// namespace and in the agent's cgroup subtree (where ClusterIPs are
/// balanced). Returns its JSON line.
fn in_cluster_list(node: &Node, pid: u32, dir: &Path) -> serde_json::Value {
    let script = dir.join("client.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let group = Cgroup(
        cgroup2_mount()
            .join(node.cgroup_root.trim_start_matches('/'))
            .join("in-cluster-client"),
    );
    std::fs::create_dir_all(&group.0).unwrap();
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(group.0.join("cgroup.procs"))
        .unwrap();
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let mut cmd = Command::new(venv_python());
    cmd.arg(&script)
        .arg(format!("/proc/{pid}/root"))
        .arg(format!("/proc/{pid}/environ"))
        .stdin(Stdio::null());
    use std::os::fd::AsRawFd;
    let (procs_fd, ns_fd) = (procs.as_raw_fd(), netns.as_raw_fd());
    // SAFETY: write(2) and setns(2) are async-signal-safe; both files stay
    // open in this function until the child has run.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1
                || libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    drop((procs, netns));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "no JSON from the in-cluster client ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Status code of a request to the API server with `token`, sent from the
/// node with `scheme` as the Authorization scheme.
fn status_with_token(node: &Node, ca: &Path, scheme: &str, token: &str, path: &str) -> String {
    node.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        &format!("Authorization: {scheme} {token}"),
        &format!("https://{API_ADDRESS}:{TLS_PORT}{path}"),
    ])
    .unwrap_or_default()
}

/// A pod's own ServiceAccount is refused a list of pods until a
/// RoleBinding grants `view`, then lists them with the python client's
/// in-cluster configuration; `kubectl auth can-i --as` agrees each time;
/// the pod reaches the API server as `kubernetes.default.svc`; and once the
/// pod is deleted its token is refused.
#[test]
fn a_pods_service_account_lists_pods_once_bound_to_view() {
    harness::require_root("the agent runs containers");
    let python = venv_python();
    assert!(
        Command::new(&python)
            .args(["-c", "import kubernetes"])
            .status()
            .is_ok_and(|s| s.success()),
        "{} cannot import the python `kubernetes` client: run `cargo xtask setup`",
        python.display()
    );
    let cp = ControlPlane::start_networked_tls(&[]).unwrap();
    let ca = cp.pki().join("ca.crt");
    let _cm = cp
        .component(
            "controller-manager",
            &[
                "controller-manager",
                "--leader-elect=false",
                "--allocate-node-cidrs=false",
                "--root-ca-file",
                ca.to_str().unwrap(),
            ],
        )
        .unwrap();
    let node = Node::start(&cp);
    let k = cp.kubectl();
    k.run(&["create", "namespace", "app"]).unwrap();
    let ready = wait_for(Duration::from_secs(30), || {
        (k.run(&["get", "sa", "default", "-n", "app"]).is_ok()
            && k.run(&["get", "cm", "kube-root-ca.crt", "-n", "app"])
                .is_ok())
        .then_some(())
    });
    assert!(ready.is_some(), "{}", cp.log("controller-manager"));

    let marker = format!("IN_CLUSTER_TEST={}", harness::names::unique("m"));
    let (mk, mv) = marker.split_once('=').unwrap();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: app}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, \"3600\"]\n    env: [{{name: {mk}, value: {mv}}}]\n",
        node.name
    );
    let out = k.run_stdin(&["create", "-f", "-"], &pod).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let running = wait_for(Duration::from_secs(90), || {
        let phase = k
            .run(&[
                "get",
                "pod",
                "client",
                "-n",
                "app",
                "-o",
                "jsonpath={.status.phase}",
            ])
            .ok()?;
        (phase == "Running").then_some(())
    });
    assert!(running.is_some(), "pod not running:\n{}", node.log());

    // What the container sees.
    let exec = |cmd: &[&str]| {
        let mut a = vec!["exec", "client", "-n", "app", "--"];
        a.extend_from_slice(cmd);
        k.run(&a).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    };
    assert_eq!(exec(&["cat", &format!("{MOUNT}/namespace")]), "app");
    assert_eq!(
        exec(&["cat", &format!("{MOUNT}/ca.crt")]),
        std::fs::read_to_string(&ca).unwrap()
    );
    let token = exec(&["cat", &format!("{MOUNT}/token")]);
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    let env = exec(&["env"]);
    assert!(
        env.lines()
            .any(|l| l == "KUBERNETES_SERVICE_HOST=10.96.0.1"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "KUBERNETES_SERVICE_PORT=443"),
        "{env}"
    );
    // The name resolves, in the pod, to the API server's ClusterIP, and a
    // TLS server answers there. busybox's TLS offers no cipher suite the
    // API server accepts, so the handshake alert is what it gets back; the
    // python client below makes whole requests through the same address.
    let reach = exec(&[
        "sh",
        "-c",
        "wget -q -O - --no-check-certificate https://kubernetes.default.svc/version 2>&1; true",
    ]);
    assert!(
        reach.contains("gitVersion") || reach.contains("TLS error from peer"),
        "kubernetes.default.svc did not lead to a TLS server: {reach}"
    );
    let lookup = exec(&["nslookup", "kubernetes.default.svc.cluster.local"]);
    assert!(lookup.contains("10.96.0.1"), "{lookup}");

    let pid = wait_for(Duration::from_secs(10), || container_pid(&marker))
        .expect("the container's process");
    let dir = tempfile::tempdir().unwrap();
    let as_sa = "--as=system:serviceaccount:app:default";
    let can_i = || {
        k.output(&["auth", "can-i", "list", "pods", "-n", "app", as_sa])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };

    assert_eq!(can_i(), "no");
    let before = in_cluster_list(&node, pid, dir.path());
    assert_eq!(before["host"], "https://10.96.0.1:443", "{before}");
    assert_eq!(before["status"], 403, "listed without a binding: {before}");

    k.run(&[
        "create",
        "rolebinding",
        "client-view",
        "-n",
        "app",
        "--clusterrole=view",
        "--serviceaccount=app:default",
    ])
    .unwrap();
    assert_eq!(can_i(), "yes");
    // The authorizer's cache follows the binding through a watch.
    let after = wait_for(Duration::from_secs(20), || {
        let got = in_cluster_list(&node, pid, dir.path());
        (got["status"] == 200).then_some(got)
    })
    .expect("the bound account could not list pods");
    assert_eq!(after["pods"], serde_json::json!(["client"]), "{after}");

    let pods = "/api/v1/namespaces/app/pods";
    assert_eq!(status_with_token(&node, &ca, "bearer", &token, pods), "200");
    k.run(&["delete", "pod", "client", "-n", "app", "--wait=true"])
        .unwrap();
    let refused = wait_for(Duration::from_secs(30), || {
        (status_with_token(&node, &ca, "Bearer", &token, pods) == "401").then_some(())
    });
    assert!(refused.is_some(), "a deleted pod's token still works");
}
