//! The networked cluster these tests share, the `netprobe` its pods mount,
//! the `web` deployment and client pods, and reading what a node's load
//! balancer holds (`agent bpf lb`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::net::packet_filter_rules;
use harness::networked::NetCluster;
use harness::node::{cgroup2_mount, Node};
use harness::process::wait_for;
use serde_json::Value;

/// A networked cluster and the probe its pods run.
pub(crate) struct Cluster {
    net: NetCluster,
    /// Holds the static `netprobe` binary pods mount at /probe.
    pub(crate) probe: tempfile::TempDir,
}

impl std::ops::Deref for Cluster {
    type Target = NetCluster;
    fn deref(&self) -> &NetCluster {
        &self.net
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut NetCluster {
        &mut self.net
    }
}

impl Cluster {
    pub(crate) fn start(nodes: usize) -> Self {
        let probe = build_netprobe();
        Self {
            net: NetCluster::start(nodes),
            probe,
        }
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = self.net.logs(60);
        for n in &self.nodes {
            out += &format!("--- bpf lb of {}\n{}\n", n.name, lb(n));
        }
        out += &format!(
            "--- pods\n{}\n--- endpointslices\n{}",
            self.k
                .run(&["get", "pods", "-o", "wide"])
                .unwrap_or_default(),
            self.k
                .run(&["get", "endpointslices", "-o", "yaml"])
                .unwrap_or_default()
        );
        out
    }

    pub(crate) fn wait<T>(&self, secs: u64, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_for(Duration::from_secs(secs), check)
            .unwrap_or_else(|| panic!("timed out: {what}\n{}", self.logs()))
    }

    pub(crate) fn exec(&self, pod: &str, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", pod, "-c", "main", "--"];
        args.extend_from_slice(cmd);
        let out = self.k.output(&args).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub(crate) fn cluster_ip(&self, svc: &str) -> String {
        self.k
            .run(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
            .unwrap()
    }

    /// Names and IPs of the running pods labelled app=web.
    pub(crate) fn web_pods(&self) -> BTreeMap<String, String> {
        let list: Value =
            serde_json::from_str(&self.k.run(&["get", "pods", "-o", "json"]).unwrap()).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web")
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["status"]["podIP"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Waits until `node`'s load balancer sends `frontend` to exactly
    /// `want` (pod IPs); returns how long that took.
    pub(crate) fn wait_backends(&self, node: &Node, frontend: &str, want: &[&str]) -> Duration {
        let start = Instant::now();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.wait(30, &format!("{frontend} balanced over {want:?}"), || {
            let mut got: Vec<String> = active_backends(node, frontend)
                .into_iter()
                .map(|b| b.split(':').next().unwrap_or_default().to_string())
                .collect();
            got.sort();
            (got == want).then_some(())
        });
        start.elapsed()
    }
}

/// Compiles tests/fixtures/netprobe.rs into a static binary in a new
/// directory that pods mount.
fn build_netprobe() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kestrel-probe-")
        .tempdir()
        .unwrap();
    let src = harness::workspace_root().join("tests/fixtures/netprobe.rs");
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(dir.path().join("netprobe"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building netprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Pods run as root but the directory must be searchable by anyone.
    Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .status()
        .unwrap();
    dir
}

/// `agent bpf lb` of `node`.
pub(crate) fn lb(node: &Node) -> String {
    let out = node
        .agent(&["bpf", "lb", "--bpffs-dir"])
        .arg(&node.bpffs_dir)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The backends (ip:port) in the slots of `frontend` (`VIP:PORT/PROTO`).
pub(crate) fn active_backends(node: &Node, frontend: &str) -> Vec<String> {
    let text = lb(node);
    let mut lines = text
        .lines()
        .skip_while(|l| l.split_whitespace().next().is_none_or(|f| f != frontend));
    if lines.next().is_none() {
        return Vec::new();
    }
    lines
        .take_while(|l| l.starts_with("    "))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("slot")).then(|| f.nth(2).map(String::from))?
        })
        .collect()
}

/// Pod names from "hello from NAME" lines.
pub(crate) fn tally(output: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in output.lines() {
        if let Some(rest) = l.trim().strip_prefix("hello from ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            *out.entry(name.to_string()).or_default() += 1;
        }
    }
    out
}

/// A shell loop of `n` HTTP requests to `target` (ip port) with busybox nc.
pub(crate) fn http_loop(target: &str, n: usize) -> String {
    format!(
        "for i in $(seq {n}); do printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target}; echo; done"
    )
}

/// The readiness probe of `web`'s HTTP container.
pub(crate) const READINESS: &str =
    "readinessProbe: {exec: {command: [test, -f, /www/ready]}, periodSeconds: 1}";

/// The deployment `web` (3 HTTP backends with a named port and a readiness
/// file, plus a UDP responder) and its ClusterIP service with named
/// target ports.
pub(crate) fn web(probe: &Path, replicas: usize) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 3
      volumes: [{{name: probe, hostPath: {{path: {probe}}}}}]
      containers:
      - name: main
        image: busybox
        ports: [{{name: web-http, containerPort: 8080}}]
        command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && touch /www/ready && exec httpd -f -p 8080 -h /www']
        {readiness}
      - name: udp
        image: busybox
        ports: [{{name: web-udp, containerPort: 5353, protocol: UDP}}]
        volumeMounts: [{{name: probe, mountPath: /probe}}]
        command: [/probe/netprobe, serve-udp, "5353"]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: web-http}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: web-udp}}
"#,
        probe = probe.display(),
        readiness = READINESS,
    )
}

/// A client pod on `node` with netprobe at /probe.
pub(crate) fn client(name: &str, node: &str, probe: &Path) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  volumes: [{{name: probe, hostPath: {{path: {probe}}}}}]
  containers:
  - name: main
    image: busybox
    volumeMounts: [{{name: probe, mountPath: /probe}}]
    command: [sleep, "3600"]
"#,
        probe = probe.display()
    )
}

/// A process of the node itself (in the node's network namespace) run in
/// a cgroup inside the agent's subtree, where the socket programs apply.
pub(crate) fn on_node(node: &Node, cmd: &str) -> Result<String, String> {
    let group = cgroup2_mount()
        .join(node.cgroup_root.trim_start_matches('/'))
        .join("node-probe");
    std::fs::create_dir_all(&group).unwrap();
    // The shell joins the cgroup, then becomes the command inside the
    // node's namespace; its children inherit both.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} sh -c '{cmd}'",
        group.display(),
        node.netns.name()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let _ = std::fs::remove_dir(&group);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) fn assert_no_packet_filter_rules(nodes: &[Node]) {
    for n in nodes {
        let rules = packet_filter_rules(|cmd| n.exec(cmd)).unwrap();
        assert!(rules.is_empty(), "in {}: {rules:?}", n.name);
    }
}
