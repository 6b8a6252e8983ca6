//! Services without kube-proxy: ClusterIPs balanced by the agents' cgroup
//! socket programs over maps synced from Services and EndpointSlices, on
//! nodes built as network namespaces, driven with the real kubectl.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::kubectl::Kubectl;
use harness::net::packet_filter_rules;
use harness::networked::NetCluster;
use harness::node::{cgroup2_mount, Node};
use harness::process::wait_for;
use serde_json::Value;

/// A networked cluster and the probe its pods run.
struct Cluster {
    net: NetCluster,
    /// Holds the static `netprobe` binary pods mount at /probe.
    probe: tempfile::TempDir,
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
    fn start(nodes: usize) -> Self {
        let probe = build_netprobe();
        Self {
            net: NetCluster::start(nodes),
            probe,
        }
    }

    fn logs(&self) -> String {
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

    fn wait<T>(&self, secs: u64, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_for(Duration::from_secs(secs), check)
            .unwrap_or_else(|| panic!("timed out: {what}\n{}", self.logs()))
    }

    fn exec(&self, pod: &str, cmd: &[&str]) -> Result<String, String> {
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

    fn cluster_ip(&self, svc: &str) -> String {
        self.k
            .run(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
            .unwrap()
    }

    /// Names and IPs of the running pods labelled app=web.
    fn web_pods(&self) -> BTreeMap<String, String> {
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
    fn wait_backends(&self, node: &Node, frontend: &str, want: &[&str]) -> Duration {
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
fn lb(node: &Node) -> String {
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
fn active_backends(node: &Node, frontend: &str) -> Vec<String> {
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
fn tally(output: &str) -> BTreeMap<String, usize> {
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
fn http_loop(target: &str, n: usize) -> String {
    format!(
        "for i in $(seq {n}); do printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target}; echo; done"
    )
}

/// The readiness probe of `web`'s HTTP container.
const READINESS: &str =
    "readinessProbe: {exec: {command: [test, -f, /www/ready]}, periodSeconds: 1}";

/// The deployment `web` (3 HTTP backends with a named port and a readiness
/// file, plus a UDP responder) and its ClusterIP service with named
/// target ports.
fn web(probe: &Path, replicas: usize) -> String {
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
fn client(name: &str, node: &str, probe: &Path) -> String {
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
fn on_node(node: &Node, cmd: &str) -> Result<String, String> {
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

fn assert_no_packet_filter_rules(nodes: &[Node]) {
    for n in nodes {
        let rules = packet_filter_rules(|cmd| n.exec(cmd)).unwrap();
        assert!(rules.is_empty(), "in {}: {rules:?}", n.name);
    }
}

/// 3 backends on 2 nodes behind a ClusterIP with named target ports: 300
/// connections from a pod reach every backend roughly evenly; UDP works
/// connected and unconnected, and the client sees the ClusterIP as its
/// peer; a process of the node reaches the ClusterIP too; no packet filter
/// rule is written anywhere.
#[test]
fn pods_and_the_node_reach_every_ready_backend_of_a_cluster_ip() {
    let c = Cluster::start(2);
    c.apply(&web(c.probe.path(), 3));
    c.apply(&client("client", &c.nodes[0].name, c.probe.path()));
    let vip = c.cluster_ip("web");
    let addr: std::net::Ipv4Addr = vip.parse().unwrap();
    assert_eq!(
        u32::from(addr) >> 20,
        u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >> 20,
        "ClusterIP {vip} outside 10.96.0.0/12"
    );
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    let n1 = &c.nodes[0];
    let took = c.wait_backends(n1, &format!("{vip}:80/TCP"), &ips);
    c.wait_backends(n1, &format!("{vip}:53/UDP"), &ips);
    eprintln!("backends programmed {took:?} after the pods had IPs");
    c.wait(60, "the client pod runs", || {
        c.exec("client", &["true"]).ok()
    });

    // 300 TCP connections: every backend, roughly a third each.
    let out = c
        .exec(
            "client",
            &["sh", "-c", &http_loop(&format!("{vip} 80"), 300)],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let counts = tally(&out);
    eprintln!("300 connections to {vip}:80: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 300, "{out}");
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        pods.keys().collect::<Vec<_>>(),
        "every backend answers"
    );
    // Expected 100 each; the standard deviation of a fair pick is ~8.
    assert!(counts.values().all(|n| *n >= 60), "uneven: {counts:?}");

    // The client's view: getpeername says the ClusterIP, not the backend.
    let peer = c
        .exec(
            "client",
            &["/probe/netprobe", "tcp-peer", &format!("{vip}:80")],
        )
        .unwrap();
    assert!(peer.contains(&format!("peer {vip}:80")), "{peer}");
    assert!(peer.contains("hello from web-"), "{peer}");

    // UDP, connected and unconnected, new socket per request.
    for mode in ["connected", "unconnected"] {
        let out = c
            .exec(
                "client",
                &[
                    "/probe/netprobe",
                    "ask-udp",
                    &format!("{vip}:53"),
                    "60",
                    mode,
                ],
            )
            .unwrap();
        let counts = tally(&out);
        assert_eq!(counts.values().sum::<usize>(), 60, "{mode}: {out}");
        assert_eq!(counts.len(), 3, "{mode}: every backend answers: {counts:?}");
        assert!(
            out.lines().all(|l| l.ends_with(&format!("via {vip}:53"))),
            "{mode}: replies must come from the ClusterIP: {out}"
        );
    }

    // The node itself, from a process in the agent's cgroup subtree, over
    // TCP (curl) and UDP.
    let mut node_counts = BTreeMap::new();
    for _ in 0..30 {
        let page =
            on_node(n1, &format!("curl -sS -m 3 http://{vip}/index.html")).unwrap_or_else(|e| {
                panic!(
                    "the node cannot reach {vip}: {e}\n{:?}\n{}",
                    on_node(
                        n1,
                        &format!("cat /proc/self/cgroup; curl -v -m 3 http://{vip}/index.html")
                    ),
                    c.logs()
                )
            });
        for (k, v) in tally(&page) {
            *node_counts.entry(k).or_insert(0) += v;
        }
    }
    assert_eq!(node_counts.values().sum::<usize>(), 30, "{node_counts:?}");
    assert!(node_counts.len() >= 2, "one backend only: {node_counts:?}");
    let probe = c.probe.path().join("netprobe");
    let out = on_node(
        n1,
        &format!("{} ask-udp {vip}:53 20 unconnected", probe.display()),
    )
    .unwrap();
    assert_eq!(tally(&out).values().sum::<usize>(), 20, "{out}");

    // Everything above went through the socket programs.
    let status = lb(n1);
    assert!(status.contains(&format!("{vip}:80/TCP")), "{status}");
    assert!(status.contains("lb_connect4"), "{status}");
    assert_no_packet_filter_rules(&c.nodes);
}

/// Backends leaving the service: one turns not ready, the deployment is
/// scaled down, one pod is deleted. Each time, once the EndpointSlice says
/// so, the agent's maps drop it and no new connection reaches it; a ready
/// backend comes back when it is ready again.
#[test]
fn backends_that_turn_unready_or_go_away_get_no_new_connections() {
    let c = Cluster::start(1);
    c.apply(&web(c.probe.path(), 3));
    let n = &c.nodes[0];
    c.apply(&client("client", &n.name, c.probe.path()));
    let vip = c.cluster_ip("web");
    let fe = format!("{vip}:80/TCP");
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    c.wait_backends(n, &fe, &ips);
    c.wait(60, "the client pod runs", || {
        c.exec("client", &["true"]).ok()
    });
    let names: Vec<&String> = pods.keys().collect();
    let connect = |count: usize| -> BTreeMap<String, usize> {
        let out = c
            .exec(
                "client",
                &["sh", "-c", &http_loop(&format!("{vip} 80"), count)],
            )
            .unwrap();
        let t = tally(&out);
        assert_eq!(t.values().sum::<usize>(), count, "{out}");
        t
    };

    // Not ready: the readiness file goes, the probe fails.
    let unready = names[0].clone();
    c.k.run(&["exec", &unready, "-c", "main", "--", "rm", "/www/ready"])
        .unwrap();
    let rest: Vec<&str> = pods
        .iter()
        .filter(|(n, _)| **n != unready)
        .map(|(_, ip)| ip.as_str())
        .collect();
    let took = c.wait_backends(n, &fe, &rest);
    eprintln!("not-ready backend left the maps after {took:?}");
    let t = connect(100);
    assert!(!t.contains_key(&unready), "{unready} is not ready: {t:?}");
    // Ready again: it is back.
    c.k.run(&["exec", &unready, "-c", "main", "--", "touch", "/www/ready"])
        .unwrap();
    c.wait_backends(n, &fe, &ips);
    assert!(connect(60).contains_key(&unready));

    // Deleted: from the moment the slice says it is terminating, nothing new.
    let deleted = names[1].clone();
    c.k.run(&["delete", "pod", &deleted, "--wait=false"])
        .unwrap();
    let deleted_ip = pods[&deleted].clone();
    c.wait(30, "the deleted pod's endpoint not ready", || {
        slice_endpoint_not_ready(&c.k, &deleted_ip).then_some(())
    });
    let since_slice = Instant::now();
    c.wait(15, "the deleted backend out of the slots", || {
        (!active_backends(n, &fe)
            .iter()
            .any(|b| b.starts_with(&format!("{deleted_ip}:"))))
        .then_some(())
    });
    // How fast is for `bench services` to say; this only reports it.
    eprintln!(
        "deleted backend left the slots {:?} after the slice said so",
        since_slice.elapsed()
    );
    let t = connect(60);
    assert!(!t.contains_key(&deleted), "{deleted} is terminating: {t:?}");

    // Scaled down: the deployment's replacement pod may be running by now;
    // whichever pods remain after scaling to 1 are the only backends.
    c.k.run(&["scale", "deploy", "web", "--replicas=1"])
        .unwrap();
    let left = c.wait(60, "one web pod left", || {
        let p = c.web_pods();
        (p.len() == 1).then_some(p)
    });
    let left_ip: Vec<&str> = left.values().map(String::as_str).collect();
    c.wait_backends(n, &fe, &left_ip);
    let t = connect(30);
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        left.keys().collect::<Vec<_>>(),
        "only the remaining pod answers"
    );

    // None left: a connection is refused at once rather than left to time
    // out, as kube-proxy's reject rule does.
    c.k.run(&["scale", "deploy", "web", "--replicas=0"])
        .unwrap();
    c.wait_backends(n, &fe, &[]);
    let started = Instant::now();
    let refused = c
        .exec("client", &["nc", "-w", "3", &vip, "80"])
        .unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(lb(n).contains(&format!("{fe}  id")) && lb(n).contains("no backend (refused)"));
}

/// Whether an EndpointSlice lists `ip` as not ready.
fn slice_endpoint_not_ready(k: &Kubectl, ip: &str) -> bool {
    let Ok(out) = k.run(&["get", "endpointslices", "-o", "json"]) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&out) else {
        return false;
    };
    let mut seen = false;
    for s in v["items"].as_array().into_iter().flatten() {
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["addresses"][0] == ip {
                seen = true;
                if e["conditions"]["ready"] == true {
                    return false;
                }
            }
        }
    }
    // Gone from every slice counts as not ready too.
    seen || !out.contains(ip)
}

/// The `id N` of `frontend` in `agent bpf lb`.
fn frontend_id(node: &Node, frontend: &str) -> Option<String> {
    lb(node).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(frontend) && f.next() == Some("id"))
            .then(|| f.next().map(String::from))?
    })
}

/// Killing the agent leaves the load balancer pinned: a client pod keeps
/// connecting to a ClusterIP while no agent runs. Services created and
/// deleted meanwhile are converged by the restarted agent, which adopts
/// the maps (unchanged frontends keep their ids) and replaces its programs
/// in place (one per hook).
#[test]
fn service_traffic_flows_while_the_agent_restarts_and_the_maps_converge() {
    let mut c = Cluster::start(1);
    // No readiness probe: a restarted agent probes again from scratch,
    // and this test is about the load balancer, not readiness.
    c.apply(&web(c.probe.path(), 3).replace(READINESS, ""));
    let extra = |name: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: {port}, targetPort: web-http}}]\n"
        )
    };
    c.apply(&extra("old", 81));
    let vip = c.cluster_ip("web");
    let old_vip = c.cluster_ip("old");
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    let fe = format!("{vip}:80/TCP");
    c.wait_backends(&c.nodes[0], &fe, &ips);
    c.wait_backends(&c.nodes[0], &format!("{old_vip}:81/TCP"), &ips);
    let id_before = frontend_id(&c.nodes[0], &fe).unwrap();

    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("log");
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  volumes: [{{name: out, hostPath: {{path: {dir}}}}}]
  containers:
  - name: main
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'while true; do r=$(printf "GET /index.html HTTP/1.0\r\n\r\n" | nc -w 2 {vip} 80 2>&1); case "$r" in *hello*) echo ok;; *) echo "fail $(date +%T) $r" | head -1;; esac >> /out/log; sleep 0.1; done']
"#,
        node = c.nodes[0].name,
        dir = out.path().display()
    ));
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    c.wait(60, "the client connects", || {
        (lines().len() >= 5).then_some(())
    });

    c.nodes[0].proc.as_mut().unwrap().kill();
    let from = lines().len();
    // Changes the stopped agent has to catch up with.
    c.k.run(&["delete", "svc", "old"]).unwrap();
    c.apply(&extra("fresh", 82));
    let fresh_vip = c.cluster_ip("fresh");
    c.wait(60, "20 tries while the agent is down", || {
        (lines().len() >= from + 20).then_some(())
    });
    let during = lines()[from..from + 20].to_vec();
    assert!(
        during.iter().all(|l| l == "ok"),
        "tries failed while the agent was down: {during:?}"
    );

    c.nodes[0].launch();
    let n = &c.nodes[0];
    c.wait_backends(n, &format!("{fresh_vip}:82/TCP"), &ips);
    c.wait(30, "the deleted service's frontend removed", || {
        (!lb(n).contains(&format!("{old_vip}:81/TCP"))).then_some(())
    });
    assert_eq!(
        frontend_id(n, &fe).as_deref(),
        Some(id_before.as_str()),
        "an unchanged frontend is adopted, not rewritten"
    );
    let status = lb(n);
    assert!(
        status.contains(&format!(
            "/{} (programs per hook: lb_connect4=1 lb_sendmsg4=1 lb_recvmsg4=1 lb_getpeername4=1)",
            n.cgroup_root.trim_start_matches('/')
        )),
        "one program per hook at the node's cgroup after the restart:\n{status}"
    );
    let until = lines().len();
    c.wait(30, "20 tries after the restart", || {
        (lines().len() >= until + 20).then_some(())
    });
    let failed: Vec<String> = lines()[from..]
        .iter()
        .filter(|l| *l != "ok")
        .cloned()
        .collect();
    if !failed.is_empty() {
        eprintln!("{}", n.log());
    }
    assert!(
        failed.is_empty(),
        "tries failed across the restart: {failed:?}"
    );
    assert!(!n.log().contains("panicked"), "{}", n.log());
}

/// sessionAffinity ClientIP: every connection of one client (a pod, or a
/// process of the node) goes to the same backend while it keeps coming
/// back within the timeout; after an idle timeout it is balanced afresh;
/// with affinity turned off connections spread again.
#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_until_it_times_out() {
    let c = Cluster::start(1);
    c.apply(&web(c.probe.path(), 3));
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n  ports: [{port: 80, targetPort: web-http}]\n",
    );
    let n = &c.nodes[0];
    c.apply(&client("client", &n.name, c.probe.path()));
    let vip = c.cluster_ip("sticky");
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    c.wait_backends(n, &format!("{vip}:80/TCP"), &ips);
    c.wait(60, "the client pod runs", || {
        c.exec("client", &["true"]).ok()
    });
    let status = lb(n);
    assert!(status.contains("affinity ClientIP 1s"), "{status}");

    // Back-to-back connections: one backend.
    let out = c
        .exec(
            "client",
            &["sh", "-c", &http_loop(&format!("{vip} 80"), 30)],
        )
        .unwrap();
    let t = tally(&out);
    assert_eq!(t.values().sum::<usize>(), 30, "{out}");
    assert_eq!(t.len(), 1, "one client, one backend: {t:?}");
    let mut node_t = BTreeMap::new();
    for _ in 0..10 {
        let page = on_node(n, &format!("curl -sS -m 3 http://{vip}/index.html")).unwrap();
        for (k, v) in tally(&page) {
            *node_t.entry(k).or_insert(0) += v;
        }
    }
    assert_eq!(node_t.len(), 1, "the node is one client too: {node_t:?}");
    assert!(
        lb(n).contains("client affinity (2)"),
        "a pod and the node:\n{}",
        lb(n)
    );

    // Idle longer than the timeout before each connection: chosen afresh
    // each time (all 8 on one backend by chance: (1/3)^7).
    let idle = format!(
        "for i in $(seq 8); do sleep 1.5; printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {vip} 80; echo; done"
    );
    let t = tally(&c.exec("client", &["sh", "-c", &idle]).unwrap());
    assert_eq!(t.values().sum::<usize>(), 8);
    assert!(t.len() >= 2, "affinity outlived its timeout: {t:?}");

    // Affinity off: spread again.
    c.k.run(&[
        "patch",
        "svc",
        "sticky",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ])
    .unwrap();
    c.wait(30, "affinity off in the maps", || {
        (!lb(n).contains("affinity ClientIP")).then_some(())
    });
    let t = tally(
        &c.exec(
            "client",
            &["sh", "-c", &http_loop(&format!("{vip} 80"), 30)],
        )
        .unwrap(),
    );
    assert_eq!(t.len(), 3, "{t:?}");
}

/// Cluster DNS served by the agent: a pod's resolv.conf points at the
/// cluster DNS address with its namespace's search path; Services resolve
/// by short and full names (A and SRV), a headless Service to its pods,
/// and connecting by name reaches every backend; the node resolves them
/// too.
#[test]
fn pods_and_the_node_resolve_services_by_name() {
    let c = Cluster::start(1);
    c.apply(&web(c.probe.path(), 3));
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-headless}\nspec:\n  clusterIP: None\n  selector: {app: web}\n  ports: [{name: http, port: 8080}]\n",
    );
    let n = &c.nodes[0];
    c.apply(&client("client", &n.name, c.probe.path()));
    let vip = c.cluster_ip("web");
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    c.wait_backends(n, &format!("{vip}:80/TCP"), &ips);
    c.wait(60, "the client pod runs", || {
        c.exec("client", &["true"]).ok()
    });

    let resolv = c.exec("client", &["cat", "/etc/resolv.conf"]).unwrap();
    assert!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("ndots:5"),
        "{resolv}"
    );
    // The address is held by a Service, so no other Service gets it.
    let dns_ip =
        c.k.run(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap_or_default();
    assert_eq!(dns_ip, "10.96.0.10");

    let lookup = |args: &[&str]| -> String {
        let mut cmd = vec!["nslookup"];
        cmd.extend_from_slice(args);
        c.wait(20, &format!("nslookup {args:?}"), || {
            c.exec("client", &cmd).ok()
        })
    };
    let a = lookup(&["web.default.svc.cluster.local"]);
    assert!(a.contains(&format!("Address: {vip}")), "{a}");
    let srv = lookup(&["-type=srv", "_http._tcp.web.default.svc.cluster.local"]);
    assert!(srv.contains("80 web.default.svc.cluster.local"), "{srv}");
    let headless = c.wait(20, "the headless service lists every pod", || {
        let out = c
            .exec(
                "client",
                &["nslookup", "web-headless.default.svc.cluster.local"],
            )
            .ok()?;
        ips.iter().all(|ip| out.contains(ip)).then_some(out)
    });
    assert!(!headless.contains(&vip), "{headless}");
    let missing = c.exec("client", &["nslookup", "nope.default.svc.cluster.local"]);
    assert!(
        missing.as_ref().is_err_and(|e| e.contains("NXDOMAIN")),
        "{missing:?}"
    );

    // By name, through the search path, as `curl http://web` would.
    let out = c
        .exec("client", &["sh", "-c", &http_loop("web 80", 90)])
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let t = tally(&out);
    assert_eq!(t.values().sum::<usize>(), 90, "{out}");
    assert_eq!(t.len(), 3, "every backend by name: {t:?}");
    let out = c
        .exec("client", &["sh", "-c", &http_loop("web.default 80", 3)])
        .unwrap();
    assert_eq!(tally(&out).values().sum::<usize>(), 3, "{out}");
    // UDP by name too.
    let out = c
        .exec(
            "client",
            &["/probe/netprobe", "ask-udp", "web:53", "3", "connected"],
        )
        .unwrap();
    assert_eq!(tally(&out).values().sum::<usize>(), 3, "{out}");
    assert!(out.contains(&format!("via {vip}:53")), "{out}");

    // The node, from its cgroup subtree, asks the same address.
    let out = on_node(
        n,
        "busybox nslookup web.default.svc.cluster.local 10.96.0.10",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(out.contains(&format!("Address: {vip}")), "{out}");
}

/// 5,000 ClusterIP Services with 3 endpoints each are all programmed on a
/// node, and then a change to one of them reaches its maps.
#[test]
fn five_thousand_services_are_programmed_and_a_change_reaches_the_maps() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kestrel_agent::services::bpf::lookup;
    use kestrel_agent::services::model::{Frontend, Proto, Target};
    use kube::api::{Api, PostParams};

    const SERVICES: usize = 5000;
    let c = Cluster::start(1);
    let node = &c.nodes[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The client's buffer task needs the runtime it will run on.
    let _entered = rt.enter();
    let client = kube::Client::try_from(kube::Config::new(c.cp.url().parse().unwrap())).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    // Endpoint addresses need not exist: only the maps are looked at.
    let endpoint = |i: usize, j: usize| format!("10.250.{}.{}", i / 64, (i % 64) * 3 + j + 1);
    let slice = |i: usize, ips: &[String]| -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("s{i}-x"), "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let started = Instant::now();
    let vips: Vec<String> = rt.block_on(async {
        futures::stream::iter(0..SERVICES)
            .map(|i| {
                let (services, slices) = (services.clone(), slices.clone());
                let ips: Vec<String> = (0..3).map(|j| endpoint(i, j)).collect();
                let s = slice(i, &ips);
                async move {
                    let svc: Service = serde_json::from_value(serde_json::json!({
                        "metadata": {"name": format!("s{i}")},
                        "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
                    }))
                    .unwrap();
                    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
                    slices.create(&PostParams::default(), &s).await.unwrap();
                    svc.spec.unwrap().cluster_ip.unwrap()
                }
            })
            .buffered(32)
            .collect()
            .await
    });
    let created = started.elapsed();
    let frontend = |vip: &str| Frontend {
        vip: vip.parse().unwrap(),
        port: 80,
        proto: Proto::Tcp,
    };
    c.wait(120, "every service programmed", || {
        vips.iter()
            .enumerate()
            .rev()
            .all(|(i, vip)| {
                lookup(&node.bpffs_dir, &frontend(vip))
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.len() == 3 && b[0].ip.to_string() == endpoint(i, 0))
            })
            .then_some(())
    });
    eprintln!(
        "{SERVICES} services: created in {created:?}, all programmed {:?} after the first create",
        started.elapsed()
    );
    // Plus the cluster DNS address (UDP and TCP) the agent serves itself
    // and Service default/kubernetes (no endpoint: the harness's API
    // server has no routable address).
    let status = lb(node);
    assert!(
        status.contains(&format!("frontends ({})", SERVICES + 3)),
        "{}",
        &status[..500]
    );

    // One backend of one service changes.
    let i = SERVICES / 2;
    let moved = "10.251.0.9".to_string();
    let mut ips: Vec<String> = (0..2).map(|j| endpoint(i, j)).collect();
    ips.push(moved.clone());
    let mut s = slice(i, &ips);
    let current = rt.block_on(slices.get(&format!("s{i}-x"))).unwrap();
    s.metadata.resource_version = current.metadata.resource_version;
    rt.block_on(slices.replace(&format!("s{i}-x"), &PostParams::default(), &s))
        .unwrap();
    let written = Instant::now();
    let want = Target {
        ip: moved.parse().unwrap(),
        port: 8080,
    };
    c.wait(30, "the change in the maps", || {
        lookup(&node.bpffs_dir, &frontend(&vips[i]))
            .ok()
            .flatten()
            .is_some_and(|b| b.contains(&want) && b.len() == 3)
            .then_some(())
    });
    // The lag is measured by `bench services`; here it is only shown.
    eprintln!(
        "one endpoint changed: in the maps {:?} after the API write",
        written.elapsed()
    );
}

/// `echo`: one pod per node answering TCP and UDP with who it sees as the
/// client, behind a NodePort service with `policy` as its
/// externalTrafficPolicy.
fn echo(probe: &Path, policy: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - {{labelSelector: {{matchLabels: {{app: echo}}}}, topologyKey: kubernetes.io/hostname}}
      volumes: [{{name: probe, hostPath: {{path: {probe}}}}}]
      containers:
      - name: tcp
        image: busybox
        volumeMounts: [{{name: probe, mountPath: /probe}}]
        command: [/probe/netprobe, serve-tcp, "8080"]
      - name: udp
        image: busybox
        volumeMounts: [{{name: probe, mountPath: /probe}}]
        command: [/probe/netprobe, serve-udp, "5353"]
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  type: NodePort
  externalTrafficPolicy: {policy}
  selector: {{app: echo}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080}}
  - {{name: udp, port: 53, protocol: UDP, targetPort: 5353}}
"#,
        probe = probe.display(),
    )
}

/// "hello from POD to PEER" lines: pod name to the peers it saw.
fn seen_by(output: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in output.lines() {
        let Some(rest) = l.trim().strip_prefix("hello from ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        if let (Some(pod), Some("to"), Some(peer)) = (w.next(), w.next(), w.next()) {
            let ip = peer.split(':').next().unwrap_or_default();
            out.entry(pod.to_string()).or_default().push(ip.to_string());
        }
    }
    out
}

/// A NodePort from outside the node: a process in another node's network
/// namespace (outside every agent's cgroup subtree, so only packets reach
/// the node) connects to node 1's address and node port. TCP and UDP reach
/// the backends on both nodes; the client sees node 1's address and node
/// port as its peer; the backend on node 1 sees the client's own address
/// and the one on node 2 sees node 1's (the reply must come back through
/// it). With externalTrafficPolicy Local only node 1's backend answers,
/// and it sees the client. A process of node 1 reaches the node port too.
#[test]
fn node_ports_answer_from_another_node_with_the_clients_view_right() {
    let c = Cluster::start(2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    c.apply(&echo(c.probe.path(), "Cluster"));
    let port = |name: &str| -> u16 {
        let path = format!("jsonpath={{.spec.ports[?(@.name==\"{name}\")].nodePort}}");
        let out = c.k.run(&["get", "svc", "echo", "-o", &path]).unwrap();
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("nodePort of {name}: {out:?}"))
    };
    let (tcp, udp) = (port("tcp"), port("udp"));
    assert!((30000..=32767).contains(&tcp), "{tcp}");
    // Pod name to its node.
    let pods: BTreeMap<String, String> = c.wait(120, "an echo pod on each node", || {
        let list: Value = serde_json::from_str(
            &c.k.run(&["get", "pods", "-l", "app=echo", "-o", "json"])
                .ok()?,
        )
        .ok()?;
        let running: BTreeMap<String, String> = list["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && !p["status"]["podIP"].is_null())
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["spec"]["nodeName"].as_str()?.to_string(),
                ))
            })
            .collect();
        (running.len() == 2 && running.values().collect::<BTreeSet<_>>().len() == 2)
            .then_some(running)
    });
    let on = |node: &Node| -> String {
        pods.iter()
            .find(|(_, n)| **n == node.name)
            .map(|(p, _)| p.clone())
            .unwrap()
    };
    let (pod1, pod2) = (on(n1), on(n2));
    let frontend = format!("{}:{tcp}/TCP", n1.ip);
    let udp_frontend = format!("{}:{udp}/UDP", n1.ip);
    c.wait(60, "node 1 balances its node ports over both pods", || {
        (active_backends(n1, &frontend).len() == 2 && active_backends(n1, &udp_frontend).len() == 2)
            .then_some(())
    });

    let probe = c.probe.path().join("netprobe");
    let from_node2 = |what: &str, n: usize| -> String {
        let script = format!("for i in $(seq {n}); do {} {what}; done", probe.display());
        n2.exec(&["sh", "-c", &script])
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()))
    };
    let target = format!("{}:{tcp}", n1.ip);
    let out = from_node2(&format!("tcp-peer {target}"), 40);
    let seen = seen_by(&out);
    eprintln!("40 connections to {target} from node 2: {seen:?}");
    assert_eq!(
        out.lines()
            .filter(|l| *l == format!("peer {target}"))
            .count(),
        40,
        "the client's peer is the node port:\n{out}\n{}",
        c.logs()
    );
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 40, "{out}");
    assert!(
        seen.get(&pod1).is_some_and(|p| p.len() >= 8)
            && seen.get(&pod2).is_some_and(|p| p.len() >= 8),
        "both backends answer: {seen:?}"
    );
    assert!(
        seen[&pod1].iter().all(|ip| *ip == n2.ip),
        "the backend on node 1 sees the client: {seen:?}"
    );
    assert!(
        seen[&pod2].iter().all(|ip| *ip == n1.ip),
        "the backend on node 2 sees node 1: {seen:?}"
    );

    // UDP, a new socket each time, answered from the node port.
    let out = from_node2(&format!("ask-udp {}:{udp} 1 unconnected", n1.ip), 20);
    let seen = seen_by(&out);
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 20, "{out}");
    assert!(
        out.lines()
            .all(|l| l.ends_with(&format!("via {}:{udp}", n1.ip))),
        "{out}"
    );
    assert_eq!(seen.len(), 2, "both backends answer UDP: {seen:?}");

    // A port nothing listens on behind a node port: the client learns it
    // is closed, from the node port, whichever node its backend is on.
    // One service per backend, chosen by a label set on the running pod.
    for (pod, side) in [(&pod1, "local"), (&pod2, "remote")] {
        c.k.run(&["label", "pod", pod, &format!("side={side}")])
            .unwrap();
        c.apply(&format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: closed-{side}}}
spec:
  type: NodePort
  selector: {{app: echo, side: {side}}}
  ports: [{{port: 54, protocol: UDP, targetPort: 5354}}]
"#
        ));
    }
    for side in ["local", "remote"] {
        let np =
            c.k.run(&[
                "get",
                "svc",
                &format!("closed-{side}"),
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ])
            .unwrap();
        let frontend = format!("{}:{}/UDP", n1.ip, np.trim());
        c.wait(60, &format!("node 1 programs {frontend}"), || {
            (active_backends(n1, &frontend).len() == 1).then_some(())
        });
        // Few enough that the backend's kernel does not rate-limit its
        // ICMP errors (a burst of 6 per destination).
        let out = from_node2(&format!("ask-udp {}:{} 1 connected", n1.ip, np.trim()), 3);
        assert_eq!(
            out.lines().filter(|l| *l == "refused").count(),
            3,
            "the {side} backend's port unreachable reaches the client:\n{out}\n{}",
            n1.bpf_status()
        );
    }
    assert!(
        counter(&n1.bpf_status(), "node_port_icmp_errors_forwarded") >= 6,
        "{}",
        n1.bpf_status()
    );

    let status = lb(n1);
    assert!(status.contains("node port flows ("), "{status}");
    let counters = n1.bpf_status();
    for name in [
        "node_port_to_local_pod",
        "node_port_to_remote_pod",
        "node_port_replies",
    ] {
        assert!(
            counter(&counters, name) > 0,
            "{name} never counted:\n{counters}"
        );
    }

    // A process of node 1 itself, in the agent's cgroup subtree.
    let out = on_node(n1, &format!("{} tcp-peer {target}", probe.display()))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(out.contains("hello from echo-"), "{out}");

    // externalTrafficPolicy Local: node 1's own backend only, which sees
    // the client.
    c.k.run(&[
        "patch",
        "svc",
        "echo",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ])
    .unwrap();
    c.wait(30, "node 1's node port keeps its own backend only", || {
        (active_backends(n1, &frontend).len() == 1).then_some(())
    });
    let out = from_node2(&format!("tcp-peer {target}"), 20);
    let seen = seen_by(&out);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&pod1],
        "Local sends to node 1's pod only:\n{out}"
    );
    assert_eq!(seen[&pod1].len(), 20, "{out}");
    assert!(seen[&pod1].iter().all(|ip| *ip == n2.ip), "{seen:?}");
    assert_no_packet_filter_rules(&c.nodes);
}

/// A counter's value in `agent bpf status` output.
fn counter(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or(0)
}
