//! The seed chapter end to end, checked the way a user checks it: with the
//! real kubectl 1.32 against a three-node cluster. Every node is a network
//! namespace on the control plane's segment with a real agent running real
//! pods; the scheduler and the controller-manager run as they would for a
//! user. Each assertion is about something a user looks at: `get cs`,
//! `get nodes`, label selectors, a ReplicationController's replicas and
//! where they run, probes, a Service's endpoints, and why a pod stays
//! Pending.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::node::Node;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

/// A control plane, its scheduler and controller-manager, and three nodes.
struct Cluster {
    // Fields drop in order. The controller-managers and the schedulers go
    // first so that, when each node deletes its pods on drop, no
    // ReplicationController recreates them on the nodes still standing;
    // the control plane goes last because the nodes' clean-up talks to it.
    /// A second controller-manager and scheduler standing by (HA only).
    standby: Vec<Guarded>,
    cm: Guarded,
    scheduler: Guarded,
    nodes: Vec<Node>,
    k: Kubectl,
    cp: ControlPlane,
    t0: Instant,
}

impl Cluster {
    fn start(apiserver: &[&str], cm_args: &[&str]) -> Self {
        let cp = ControlPlane::start_networked_tls(apiserver).expect("the control plane starts");
        Self::start_on(cp, cm_args, false)
    }

    /// A highly available control plane: three API servers over a
    /// three-member etcd, two schedulers and two controller-managers, one
    /// of each leading; every component and agent is given every API
    /// server and fails over between them.
    fn start_ha() -> Self {
        let cp = ControlPlane::start_ha_tls(3, &[]).expect("the HA control plane starts");
        Self::start_on(cp, &[], true)
    }

    fn start_on(cp: ControlPlane, cm_args: &[&str], standby: bool) -> Self {
        let t0 = Instant::now();
        let k = cp.kubectl();
        let scheduler = cp.component("scheduler", &["scheduler"]).unwrap();
        // The harness hands every node its pod CIDR (`agent run
        // --pod-cidr`), so the controller-manager must not assign others:
        // with both, an agent that sees the controller's CIDR land on its
        // Node first refuses to start.
        let mut args = vec!["controller-manager", "--allocate-node-cidrs=false"];
        args.extend_from_slice(cm_args);
        let cm = cp.component("controller-manager", &args).unwrap();
        let standby = if standby {
            vec![
                cp.component("controller-manager-2", &args).unwrap(),
                cp.component("scheduler-2", &["scheduler"]).unwrap(),
            ]
        } else {
            Vec::new()
        };
        // Each node builds and imports its own busybox image before its
        // agent starts; doing the three at once saves seconds.
        let nodes: Vec<Node> = std::thread::scope(|s| {
            let started: Vec<_> = (0..3).map(|_| s.spawn(|| Node::start(&cp))).collect();
            started
                .into_iter()
                .map(|h| h.join().expect("a node starts"))
                .collect()
        });
        let mut c = Cluster {
            standby,
            cm,
            scheduler,
            nodes,
            k,
            cp,
            t0,
        };
        // Ready and untainted: the node lifecycle controller lifts the
        // not-ready taint a moment after Ready turns True, and a replica
        // scheduled in between cannot go to that node.
        c.wait(60, "three Ready, untainted nodes", || {
            let nodes = c.get(&["nodes"]);
            let items = nodes["items"].as_array()?;
            (items.len() == 3
                && items.iter().all(|n| {
                    condition(n, "Ready") == "True"
                        && n["spec"]["taints"].as_array().is_none_or(|t| t.is_empty())
                }))
            .then_some(())
        });
        // A Node is Ready as soon as its agent registers it; the agent
        // could still fail to set up the pod network and exit after that.
        for n in &mut c.nodes {
            let up = n.proc.as_mut().is_some_and(|p| p.is_running());
            assert!(
                up,
                "the agent of {} exited:\n{}",
                n.name,
                tail(&n.log(), 30)
            );
        }
        c.step("cluster up: control plane, scheduler, controller-manager, 3 Ready nodes");
        c
    }

    /// Prints how long the test has run, so slow steps show in the output.
    fn step(&self, what: &str) {
        // The two tests run at once; the thread's name is the test's.
        let test = std::thread::current().name().unwrap_or("").to_string();
        eprintln!("[{test} {:6.1}s] {what}", self.t0.elapsed().as_secs_f64());
    }

    /// `kubectl get ARGS -o json`, parsed.
    fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.k.run(&a).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    fn apply(&self, yaml: &str) {
        let out = self.k.run_stdin(&["apply", "-f", "-"], yaml).unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pods matching `selector` that are not being deleted.
    fn live_pods(&self, selector: &str) -> Vec<Value> {
        self.get(&["pods", "-l", selector])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .collect()
    }

    /// Enough of every component's log to tell why a wait timed out.
    fn logs(&self) -> String {
        let mut out = format!(
            "--- scheduler\n{}\n--- controller-manager\n{}",
            tail(&self.cp.log("scheduler"), 30),
            tail(&self.cp.log("controller-manager"), 30)
        );
        for n in &self.nodes {
            out += &format!("\n--- agent {}\n{}", n.name, tail(&n.log(), 30));
        }
        out + "\n--- kubectl get all,ep -o wide\n"
            + &self
                .k
                .run(&["get", "pods,rc,svc,ep", "-o", "wide"])
                .unwrap_or_default()
    }

    /// Waits up to `secs` for `check`, failing with the components' logs.
    fn wait<T>(&self, secs: u64, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_for(Duration::from_secs(secs), check)
            .unwrap_or_else(|| panic!("timed out: {what}\n{}", self.logs()))
    }

    /// `kubectl exec POD -- CMD`: stdout, or stdout and stderr as the error.
    fn exec(&self, pod: &str, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", pod, "--"];
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

    /// The page `from` gets at `http://addr:port/index.html`, fetched with
    /// busybox `nc` (Debian's static busybox `wget` crashes); `None` until
    /// a 200 comes back within `secs`.
    fn fetch(&self, from: &str, addr: &str, port: u16, secs: u64) -> Option<String> {
        let script =
            format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} {port}");
        wait_for(Duration::from_secs(secs), || {
            let response = self.exec(from, &["sh", "-c", &script]).ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200")
                .then(|| body.trim().to_string())
        })
    }

    /// Sends `n` HTTP requests from pod `from` to `vip:80`, each on a new
    /// connection, and counts the answers by the name of the pod that gave
    /// them.
    fn through_service(&self, from: &str, vip: &str, n: usize) -> BTreeMap<String, usize> {
        let script = format!(
            "for i in $(seq {n}); do printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {vip} 80; echo; done"
        );
        let out = self.exec(from, &["sh", "-c", &script]).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for l in out.lines() {
            if let Some(pod) = l.trim().strip_prefix("hello from ") {
                *counts.entry(pod.to_string()).or_default() += 1;
            }
        }
        counts
    }

    /// Waits until 30 connections from `from` to the Service at `vip` are
    /// all answered, by exactly the pods named in `want`. The agents follow
    /// the EndpointSlices a moment after they change, hence a wait; 30
    /// connections over three backends miss one with odds of 1 in 60,000.
    fn balanced_over(&self, from: &str, vip: &str, want: &BTreeSet<String>) {
        let mut last = BTreeMap::new();
        let ok = wait_for(Duration::from_secs(20), || {
            last = self.through_service(from, vip, 30);
            let names: BTreeSet<String> = last.keys().cloned().collect();
            (last.values().sum::<usize>() == 30 && names == *want).then_some(())
        });
        assert!(
            ok.is_some(),
            "{from} -> {vip}:80 should reach exactly {want:?}, last got {last:?}\n{}",
            self.logs()
        );
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The status of condition `kind` of a node or pod ("" when absent).
fn condition<'a>(obj: &'a Value, kind: &str) -> &'a str {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

fn name(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn node_of(pod: &Value) -> String {
    pod["spec"]["nodeName"].as_str().unwrap_or("").to_string()
}

fn pod_ip(pod: &Value) -> String {
    pod["status"]["podIP"].as_str().unwrap_or("").to_string()
}

fn running_and_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && condition(pod, "Ready") == "True"
}

/// CPU quantity in millicores ("2", "1900m", "0.5").
fn millicores(q: &str) -> i64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0).round() as i64,
    }
}

/// Memory quantity in bytes ("8049172Ki", "512Mi", "1G", "1048576").
fn bytes(q: &str) -> i64 {
    const UNITS: [(&str, i64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<i64>().unwrap() * factor;
        }
    }
    q.parse().unwrap()
}

/// Ready addresses of Service `svc`'s Endpoints, and its not-ready ones.
fn endpoints(c: &Cluster, svc: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let ep = c.get(&["endpoints", svc]);
    let mut ready = BTreeSet::new();
    let mut not_ready = BTreeSet::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        for (key, set) in [
            ("addresses", &mut ready),
            ("notReadyAddresses", &mut not_ready),
        ] {
            for a in subset[key].as_array().into_iter().flatten() {
                set.insert(a["ip"].as_str().unwrap_or("").to_string());
            }
        }
    }
    (ready, not_ready)
}

/// Addresses the EndpointSlices of Service `svc` mark ready.
fn slice_ready(c: &Cluster, svc: &str) -> BTreeSet<String> {
    let sel = format!("kubernetes.io/service-name={svc}");
    let slices = c.get(&["endpointslices", "-l", &sel]);
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// Three web servers, each answering with its pod's name, ready while
/// /tmp/ready exists. The spread constraint is ScheduleAnyway, as a user
/// writes it for replicas that must move when a node dies: under
/// DoNotSchedule the dead node still counts as a domain (Kubernetes'
/// nodeTaintsPolicy defaults to Ignore), so a replacement that would skew
/// the spread stays Pending.
const WEB: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  selector: {app: web}
  template:
    metadata: {labels: {app: web, tier: frontend}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: ScheduleAnyway
        labelSelector: {matchLabels: {app: web}}
      containers:
      - name: web
        image: busybox
        command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www']
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 50m, memory: 16Mi}}
        readinessProbe:
          exec: {command: [test, -f, /tmp/ready]}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// A pod that sleeps on the node named `node`, to run clients from.
fn client(name: &str, node: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: busybox, command: [sleep, "3600"]}}]
"#
    )
}

/// Waits for the RC's three replicas to run and be ready on three
/// different nodes, and returns them.
fn three_spread_replicas(c: &Cluster) -> Vec<Value> {
    let pods = c.wait(90, "3 running, ready replicas of web", || {
        let p = c.live_pods("app=web");
        (p.len() == 3 && p.iter().all(running_and_ready)).then_some(p)
    });
    let nodes: BTreeSet<String> = pods.iter().map(node_of).collect();
    assert_eq!(
        nodes.len(),
        3,
        "replicas share a node: {:?}\n{}",
        pods.iter()
            .map(|p| (name(p), node_of(p)))
            .collect::<Vec<_>>(),
        c.logs()
    );
    pods
}

/// What a user checks first on a fresh cluster, and the workloads of the
/// seed chapter: component health, nodes with their capacity, label
/// selection, a ReplicationController spread over the nodes that heals a
/// deleted replica, a Service whose ClusterIP balances over the replicas
/// and whose endpoints follow readiness, pods reachable across nodes, a
/// liveness probe that restarts a container, and a pod too big for any
/// node.
#[test]
fn seed_chapter_on_three_nodes() {
    let c = Cluster::start(&[], &[]);
    let k = &c.k;

    // 1. `kubectl get cs`: the scheduler and the controller-manager hold
    // fresh leader leases, and etcd answers.
    let cs = c.wait(30, "get cs: every component Healthy", || {
        let table = k.run(&["get", "cs"]).ok()?;
        ["scheduler", "controller-manager", "etcd-0"]
            .iter()
            .all(|n| {
                table.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(n) && f.get(1) == Some(&"Healthy")
                })
            })
            .then_some(table)
    });
    assert!(cs.starts_with("NAME"), "{cs}");
    let json = c.get(&["cs"]);
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{json}");
    // ComponentStatus keeps its conditions at the top level, not in status.
    assert!(
        items
            .iter()
            .all(|i| i["conditions"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c["type"] == "Healthy" && c["status"] == "True"))),
        "{json}"
    );
    c.step("get cs: scheduler, controller-manager and etcd-0 Healthy");

    // 2. `kubectl get nodes`: three Ready nodes, each with its capacity and
    // what is left for pods once the agent's reservations are taken off.
    let table = k.run(&["get", "nodes"]).unwrap();
    for n in &c.nodes {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&n.name) && l.split_whitespace().nth(1) == Some("Ready")),
            "{} is not Ready in:\n{table}",
            n.name
        );
    }
    let nodes = c.get(&["nodes"]);
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let mut max_cpu = 0;
    for n in nodes {
        let cap = &n["status"]["capacity"];
        let alloc = &n["status"]["allocatable"];
        for r in ["cpu", "memory", "pods"] {
            assert!(cap[r].is_string(), "no capacity {r}: {n}");
            assert!(alloc[r].is_string(), "no allocatable {r}: {n}");
        }
        let cpu = millicores(cap["cpu"].as_str().unwrap());
        max_cpu = max_cpu.max(cpu);
        assert!(cpu >= 1000, "{cap}");
        // The agent's defaults: --system-reserved cpu=100m,memory=100Mi and
        // --eviction-hard memory.available<100Mi, as kubelet subtracts them.
        assert_eq!(
            millicores(alloc["cpu"].as_str().unwrap()),
            cpu - 100,
            "{alloc} vs {cap}"
        );
        assert_eq!(
            bytes(alloc["memory"].as_str().unwrap()),
            bytes(cap["memory"].as_str().unwrap()) - (200 << 20),
            "{alloc} vs {cap}"
        );
        assert_eq!(cap["pods"], "110");
        assert_eq!(alloc["pods"], "110");
        let this = c.node(&name(n));
        let addresses = n["status"]["addresses"].as_array().unwrap();
        assert!(
            addresses
                .iter()
                .any(|a| a["type"] == "InternalIP" && a["address"] == this.ip.as_str()),
            "{addresses:?}"
        );
        assert_eq!(n["spec"]["podCIDR"], this.pod_cidr.as_str());
    }
    c.step("get nodes: 3 Ready with capacity and allocatable");

    // Everything the rest of the test looks at, in one apply: the web RC
    // and its Service, a client pod on each of two nodes, a pod whose
    // liveness probe always fails, and a pod no node can hold.
    let hungry_cpu = format!("{}", max_cpu / 1000 + 1);
    let yaml = format!(
        r#"{WEB}{c0}{c1}
---
apiVersion: v1
kind: Pod
metadata: {{name: flaky, labels: {{app: flaky}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    livenessProbe:
      tcpSocket: {{port: 9999}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: hungry, labels: {{app: hungry}}}}
spec:
  containers:
  - name: c
    image: busybox
    command: [sleep, "3600"]
    resources: {{requests: {{cpu: "{hungry_cpu}"}}}}
"#,
        c0 = client("client-0", &c.nodes[0].name),
        c1 = client("client-1", &c.nodes[1].name),
    );
    c.apply(&yaml);

    // 4. The RC's three replicas run on three different nodes.
    let pods = three_spread_replicas(&c);
    let rc = k.run(&["get", "rc", "web"]).unwrap();
    let row: Vec<&str> = rc.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(..4), Some(&["web", "3", "3", "3"][..]), "{rc}");
    c.step("RC web: 3 replicas ready on 3 nodes");

    // 3. Label selection picks exactly the labelled pods.
    let selected = |sel: &str| -> BTreeSet<String> {
        k.run(&["get", "pods", "-l", sel, "-o", "name"])
            .unwrap()
            .lines()
            .map(|l| l.trim_start_matches("pod/").to_string())
            .collect()
    };
    let web: BTreeSet<String> = pods.iter().map(name).collect();
    let clients: BTreeSet<String> = ["client-0".to_string(), "client-1".to_string()].into();
    assert_eq!(selected("app=web"), web);
    assert_eq!(selected("app=web,tier=frontend"), web);
    assert_eq!(selected("app=client"), clients);
    assert_eq!(
        selected("app in (web,client)"),
        web.union(&clients).cloned().collect()
    );
    let others = selected("app notin (web,client)");
    assert_eq!(
        others,
        BTreeSet::from(["flaky".to_string(), "hungry".to_string()])
    );
    let none = k
        .output(&["get", "pods", "-l", "app=web,tier=backend"])
        .unwrap();
    assert!(none.status.success() && none.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    c.step("label selectors: =, in, notin, and a selector matching nothing");

    // 6. The pod no node can hold stays Pending, and says why.
    let message = c.wait(30, "a FailedScheduling event for hungry", || {
        let ev = c.get(&[
            "events",
            "--field-selector",
            "involvedObject.name=hungry,reason=FailedScheduling",
        ]);
        ev["items"][0]["message"].as_str().map(str::to_string)
    });
    assert_eq!(message, "0/3 nodes are available: 3 Insufficient cpu.");
    let hungry = c.get(&["pod", "hungry"]);
    assert_eq!(hungry["status"]["phase"], "Pending");
    assert_eq!(node_of(&hungry), "");
    let scheduled = hungry["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
        .unwrap_or_else(|| panic!("no PodScheduled condition: {hungry}"));
    assert_eq!(scheduled["status"], "False");
    assert_eq!(scheduled["reason"], "Unschedulable");
    assert!(
        scheduled["message"]
            .as_str()
            .unwrap_or("")
            .contains("Insufficient cpu"),
        "{scheduled}"
    );
    let described = k.run(&["describe", "pod", "hungry"]).unwrap();
    assert!(
        described.contains("FailedScheduling") && described.contains("3 Insufficient cpu"),
        "{described}"
    );
    let table = k.run(&["get", "pod", "hungry"]).unwrap();
    assert!(table.contains("Pending"), "{table}");
    c.step("hungry: Pending, PodScheduled=False Unschedulable, 3 Insufficient cpu");

    // 7. The Service: a ClusterIP from the service range, and endpoints
    // (Endpoints and EndpointSlice, named target port resolved) that are
    // the three replicas, each reachable from a client on another node.
    let svc = c.get(&["service", "web"]);
    let vip = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    let vip_addr: std::net::Ipv4Addr = vip
        .parse()
        .unwrap_or_else(|_| panic!("no ClusterIP: {svc}"));
    assert_eq!(
        u32::from(vip_addr) >> 20,
        u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >> 20,
        "{vip} is outside 10.96.0.0/12"
    );
    let ips: BTreeSet<String> = pods.iter().map(pod_ip).collect();
    c.wait(
        30,
        "Endpoints and EndpointSlice list the 3 replicas",
        || (endpoints(&c, "web").0 == ips && slice_ready(&c, "web") == ips).then_some(()),
    );
    let ep = c.get(&["endpoints", "web"]);
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080, "{ep}");
    let sel = "kubernetes.io/service-name=web";
    let slices = c.get(&["endpointslices", "-l", sel]);
    assert_eq!(slices["items"][0]["ports"][0]["port"], 8080, "{slices}");
    assert_eq!(slices["items"][0]["ports"][0]["name"], "http", "{slices}");
    let client_nodes: Vec<(String, String)> = ["client-0", "client-1"]
        .iter()
        .map(|n| (n.to_string(), node_of(&c.get(&["pod", n]))))
        .collect();
    for p in &pods {
        let (from, _) = client_nodes
            .iter()
            .find(|(_, node)| *node != node_of(p))
            .expect("a client on another node");
        let page = c.fetch(from, &pod_ip(p), 8080, 20);
        assert_eq!(
            page,
            Some(format!("hello from {}", name(p))),
            "{from} -> {} ({})\n{}",
            name(p),
            pod_ip(p),
            c.logs()
        );
    }
    c.step("service web: ClusterIP, 3 ready endpoints, each reachable from another node");

    // 7. The Service balances new connections to its ClusterIP over the
    // three replicas (the agents' socket-level load balancing).
    c.balanced_over("client-0", &vip, &web);
    c.step("service web: connections to the ClusterIP reach all 3 replicas");

    // 5a. A replica whose readiness probe fails leaves the Service's ready
    // endpoints (and shows 0/1 READY), and comes back once it passes.
    let sick = &pods[0];
    let sick_name = name(sick);
    let sick_ip = pod_ip(sick);
    c.exec(&sick_name, &["rm", "/tmp/ready"]).unwrap();
    c.wait(30, "the unready replica out of the ready endpoints", || {
        let (ready, not_ready) = endpoints(&c, "web");
        let slice = slice_ready(&c, "web");
        (ready.len() == 2
            && !ready.contains(&sick_ip)
            && not_ready.contains(&sick_ip)
            && slice == ready)
            .then_some(())
    });
    let table = k.run(&["get", "pod", &sick_name]).unwrap();
    assert!(
        table.lines().nth(1).unwrap_or("").contains(" 0/1 "),
        "{table}"
    );
    let rc = c.get(&["rc", "web"]);
    assert_eq!(rc["status"]["readyReplicas"], 2, "{}", rc["status"]);
    let healthy: BTreeSet<String> = web.iter().filter(|n| **n != sick_name).cloned().collect();
    c.balanced_over("client-1", &vip, &healthy);
    c.exec(&sick_name, &["touch", "/tmp/ready"]).unwrap();
    c.wait(30, "the replica back in the ready endpoints", || {
        (endpoints(&c, "web").0 == ips && slice_ready(&c, "web") == ips).then_some(())
    });
    c.balanced_over("client-1", &vip, &web);
    c.step("readiness: an unready replica leaves Endpoints, EndpointSlice and the ClusterIP, and returns");

    // 4b. A deleted replica is replaced and the Service follows. Where the
    // replacement lands is not checked: kube-scheduler would pick the
    // freed node, because it leaves terminating pods out of the spread
    // counts, but this scheduler still counts the replica being deleted,
    // so all three nodes tie and the pick is random.
    let victim = name(&pods[1]);
    k.run(&["delete", "pod", &victim]).unwrap();
    let healed = c.wait(60, "a replacement replica, running and ready", || {
        let p = c.live_pods("app=web");
        (p.len() == 3 && p.iter().all(running_and_ready) && !p.iter().any(|p| name(p) == victim))
            .then_some(p)
    });
    c.wait(30, "the deleted replica gone", || {
        let out = k.output(&["get", "pod", &victim]).ok()?;
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });
    let rc = k.run(&["get", "rc", "web"]).unwrap();
    let row: Vec<&str> = rc.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(..4), Some(&["web", "3", "3", "3"][..]), "{rc}");
    let healed_ips: BTreeSet<String> = healed.iter().map(pod_ip).collect();
    c.wait(30, "the Service's endpoints follow the replacement", || {
        (endpoints(&c, "web").0 == healed_ips && slice_ready(&c, "web") == healed_ips).then_some(())
    });
    c.balanced_over("client-0", &vip, &healed.iter().map(name).collect());
    c.step("RC web: a deleted replica replaced, the Service follows");

    // 5b. The liveness probe restarts its container again and again: the
    // restart count passes 1 and the reason is in the pod's events. The
    // second restart waits out the first 10 s of back-off, as in kubelet;
    // waiting for a count above the first one seen could wait out the
    // next, 20 s one.
    let restarts = |p: &Value| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
    };
    let again = c.wait(60, "flaky restarted twice by its liveness probe", || {
        let p = c.get(&["pod", "flaky"]);
        (restarts(&p) >= 2).then_some(p)
    });
    let last = &again["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "killed, not exited: {again}");
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=flaky",
        ])
        .unwrap();
    assert!(events.contains("Liveness probe failed"), "{events}");
    let table = k.run(&["get", "pod", "flaky"]).unwrap();
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let shown: i64 = row.get(3).and_then(|r| r.parse().ok()).unwrap_or(-1);
    assert!(shown >= 2, "RESTARTS column: {table}");
    c.step("liveness: flaky restarted by its probe, restart count growing");
}

/// A node whose agent dies: it turns Unknown after the grace period and is
/// tainted unreachable; its replica is evicted and replaced on the nodes
/// still standing; the Service's ready endpoints, and the connections to
/// its ClusterIP, go to the live replicas only.
/// When the agent comes back the node is Ready again and the evicted pod's
/// deletion completes.
#[test]
fn replicas_leave_a_dead_node() {
    // Node health checked every second, a node without a heartbeat for 6 s
    // (three lease renewals: the harness's agents renew every 2 s) is
    // Unknown, and pods tolerate the unreachable taint for 2 s: the whole
    // story in seconds instead of Kubernetes' minutes.
    let mut c = Cluster::start(
        &["--default-unreachable-toleration-seconds", "2"],
        &[
            "--node-monitor-grace-period",
            "6",
            "--node-monitor-period",
            "1",
        ],
    );
    c.apply(WEB);
    let pods = three_spread_replicas(&c);
    let ips: BTreeSet<String> = pods.iter().map(pod_ip).collect();
    c.wait(30, "3 ready endpoints", || {
        (endpoints(&c, "web").0 == ips).then_some(())
    });
    // The node running the first replica is the one to die; a client on
    // another node keeps using the Service.
    let doomed = node_of(&pods[0]);
    let doomed_pod = name(&pods[0]);
    let doomed_ip = pod_ip(&pods[0]);
    let survivor = c.nodes.iter().find(|n| n.name != doomed).unwrap();
    c.apply(&client("client", &survivor.name));
    c.wait(60, "the client running", || {
        running_and_ready(&c.get(&["pod", "client"])).then_some(())
    });
    let vip = c.get(&["service", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.balanced_over("client", &vip, &pods.iter().map(name).collect());
    c.step("RC web: 3 replicas ready on 3 nodes, all reached through the Service");

    // The agent dies. The node's containers keep running (by design), but
    // nothing reports for them any more.
    let killed = Instant::now();
    let i = c.nodes.iter().position(|n| n.name == doomed).unwrap();
    // Taken out, so that a failure from here on does not make the node's
    // clean-up wait for pod deletions no agent will finish.
    c.nodes[i].proc.take().expect("the agent runs").kill();

    let node = c.wait(30, "the dead node Unknown and tainted", || {
        let n = c.get(&["node", &doomed]);
        let keys: Vec<String> = n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some(format!("{}:{}", t["key"].as_str()?, t["effect"].as_str()?)))
            .collect();
        (condition(&n, "Ready") == "Unknown"
            && keys.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
            && keys.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()))
        .then_some(n)
    });
    // Not before the grace period: the last renewal was at most one lease
    // interval (2 s) before the kill, and a second is left for rounding.
    let noticed = killed.elapsed();
    assert!(
        noticed >= Duration::from_secs(3),
        "Unknown after {noticed:?}, before the 6 s grace period: {node}"
    );
    let table = c.k.run(&["get", "nodes"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&doomed) && l.split_whitespace().nth(1) == Some("NotReady")),
        "{table}"
    );
    c.step(&format!(
        "dead node Unknown and tainted unreachable {:.1}s after its agent died",
        noticed.as_secs_f64()
    ));

    let moved = c.wait(60, "the replica replaced on a live node", || {
        let p = c.live_pods("app=web");
        (p.len() == 3 && p.iter().all(running_and_ready) && p.iter().all(|p| node_of(p) != doomed))
            .then_some(p)
    });
    c.step(&format!(
        "replica replaced on a live node {:.1}s after the agent died",
        killed.elapsed().as_secs_f64()
    ));
    let live: BTreeSet<String> = moved.iter().map(node_of).collect();
    assert_eq!(live.len(), 2, "{live:?}");
    let old = c.get(&["pod", &doomed_pod]);
    assert!(
        old["metadata"]["deletionTimestamp"].is_string(),
        "the dead node's replica was not evicted: {old}"
    );
    let table = c.k.run(&["get", "pods", "-l", "app=web"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&doomed_pod) && l.contains("Terminating")),
        "{table}"
    );
    let events = c.k.run(&["get", "events"]).unwrap();
    assert!(events.contains("NodeNotReady"), "{events}");
    assert!(events.contains("TaintManagerEviction"), "{events}");
    let rc = c.k.run(&["get", "rc", "web"]).unwrap();
    let row: Vec<&str> = rc.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(..4), Some(&["web", "3", "3", "3"][..]), "{rc}");
    let live_ips: BTreeSet<String> = moved.iter().map(pod_ip).collect();
    c.wait(
        30,
        "the Service's ready endpoints are the live replicas",
        || {
            let (ready, _) = endpoints(&c, "web");
            (ready == live_ips && slice_ready(&c, "web") == live_ips).then_some(())
        },
    );
    assert!(!live_ips.contains(&doomed_ip));
    // The evicted replica still runs on the dead node, but the Service
    // sends nothing to it.
    c.balanced_over("client", &vip, &moved.iter().map(name).collect());
    c.step("the Service reaches only the live replicas");

    // The agent returns: the node is Ready and untainted, and the agent
    // finishes the eviction by stopping the old replica.
    c.nodes[i].launch();
    c.wait(30, "the node Ready again without taints", || {
        let n = c.get(&["node", &doomed]);
        let tainted = n["spec"]["taints"]
            .as_array()
            .is_some_and(|t| !t.is_empty());
        (condition(&n, "Ready") == "True" && !tainted).then_some(())
    });
    c.wait(30, "the evicted replica gone", || {
        let out = c.k.output(&["get", "pod", &doomed_pod]).ok()?;
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });
    assert_eq!(c.live_pods("app=web").len(), 3);
    c.step("agent back: node Ready, evicted replica deleted");
}

/// The acknowledged ConfigMaps the cluster no longer has.
fn lost_configmaps(c: &Cluster, acknowledged: &[String]) -> Vec<String> {
    let stored: BTreeSet<String> = c.get(&["configmaps"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(name)
        .collect();
    acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .cloned()
        .collect()
}

/// Sets its flag when dropped, so a writer thread stops also when a step
/// of the test panics (the scope would otherwise wait for it forever).
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a pod is, for telling a kept pod from a replacement or a restart:
/// (uid, container id, restart count) by pod name.
fn identities(pods: &[Value]) -> BTreeMap<String, (String, String, u64)> {
    pods.iter()
        .map(|p| {
            let cs = &p["status"]["containerStatuses"][0];
            (
                name(p),
                (
                    p["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    cs["containerID"].as_str().unwrap_or_default().to_string(),
                    cs["restartCount"].as_u64().unwrap_or(u64::MAX),
                ),
            )
        })
        .collect()
}

/// Upgrade safety: etcd, the API server, the scheduler, the
/// controller-manager and one agent are each killed (SIGKILL) and started
/// again in turn, while a ReplicationController runs behind a Service and a
/// client keeps creating ConfigMaps. No acknowledged write is lost, no
/// replica is replaced or restarted, the Service keeps balancing over the
/// same replicas, and afterwards the cluster still acts (a scale-up runs).
#[test]
fn restarting_any_one_component_loses_no_object_and_no_running_pod() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let mut c = Cluster::start(&[], &[]);
    c.apply(&(WEB.to_string() + &client("probe", &c.nodes[0].name)));
    let pods = three_spread_replicas(&c);
    let before = identities(&pods);
    let names: BTreeSet<String> = before.keys().cloned().collect();
    let vip = c.get(&["svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.balanced_over("probe", &vip, &names);
    c.step("3 replicas behind the Service");

    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    let refused = Mutex::new(0usize);
    let writer_k = c.cp.kubectl();
    std::thread::scope(|s| {
        // The writer: one ConfigMap after another; a create that kubectl
        // reports as done must survive whatever restarts next.
        let (stop, acknowledged, refused) = (&stop, &acknowledged, &refused);
        let writer = s.spawn(move || {
            let k = writer_k;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{i}");
                i += 1;
                let out = k.output(&["create", "configmap", &name, "--from-literal=k=v"]);
                match out {
                    Ok(o) if o.status.success() => acknowledged.lock().unwrap().push(name),
                    _ => *refused.lock().unwrap() += 1,
                }
            }
        });
        let _stop_writer = StopOnDrop(stop);
        for component in [
            "etcd",
            "apiserver",
            "scheduler",
            "controller-manager",
            "agent",
        ] {
            std::thread::sleep(Duration::from_secs(2));
            match component {
                "etcd" => c.cp.etcd.restart().expect("etcd restarts"),
                "apiserver" => {
                    c.cp.kill_apiserver();
                    c.cp.start_apiserver().expect("the API server restarts");
                }
                "scheduler" => {
                    c.scheduler.kill();
                    c.scheduler = c.cp.component("scheduler", &["scheduler"]).unwrap();
                }
                "controller-manager" => {
                    c.cm.kill();
                    c.cm =
                        c.cp.component(
                            "controller-manager",
                            &["controller-manager", "--allocate-node-cidrs=false"],
                        )
                        .unwrap();
                }
                _ => {
                    let n = &mut c.nodes[1];
                    if let Some(p) = n.proc.as_mut() {
                        p.kill();
                    }
                    n.launch();
                }
            }
            c.step(&format!("{component} restarted"));
            // Back to work: the replicas are the same ones, running, not
            // restarted, and the Service still reaches all three.
            c.wait(
                60,
                &format!("the same 3 replicas after {component}"),
                || {
                    let now = c.live_pods("app=web");
                    (now.iter().all(running_and_ready) && identities(&now) == before).then_some(())
                },
            );
            c.balanced_over("probe", &vip, &names);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });

    let acknowledged = acknowledged.into_inner().unwrap();
    let lost = lost_configmaps(&c, &acknowledged);
    c.step(&format!(
        "{} ConfigMaps acknowledged, {} refused while a component was down, {} lost",
        acknowledged.len(),
        refused.into_inner().unwrap(),
        lost.len()
    ));
    assert!(
        acknowledged.len() > 20,
        "the writer hardly wrote: {acknowledged:?}"
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");

    // Still a working cluster: the restarted scheduler and
    // controller-manager scale the RC up.
    c.k.run(&["scale", "rc", "web", "--replicas=4"]).unwrap();
    let now = c.wait(90, "a 4th replica running", || {
        let p = c.live_pods("app=web");
        (p.len() == 4 && p.iter().all(running_and_ready)).then_some(p)
    });
    let kept: BTreeMap<_, _> = identities(&now)
        .into_iter()
        .filter(|(n, _)| before.contains_key(n))
        .collect();
    assert_eq!(kept, before, "the first 3 replicas were left alone");
}

/// The pid in the identity holding the Lease `name` in kube-system
/// (identities are `host_pid`), once one holds it.
fn lease_holder_pid(c: &Cluster, name: &str) -> Option<u32> {
    let lease = c.get(&["lease", "-n", "kube-system", name]);
    lease["spec"]["holderIdentity"]
        .as_str()?
        .rsplit_once('_')?
        .1
        .parse()
        .ok()
}

/// When each node's Lease was last renewed, by node name.
fn node_lease_renewals(c: &Cluster) -> BTreeMap<String, String> {
    c.get(&["leases", "-n", "kube-node-lease"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|l| {
            (
                name(l),
                l["spec"]["renewTime"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// High availability: three API servers over a three-member etcd, two
/// schedulers and two controller-managers. While a client keeps creating
/// ConfigMaps, trying the next API server whenever one fails it, the
/// leading controller-manager, the API server every component and agent
/// prefers, and an etcd member are killed in turn and left dead. After
/// each loss the cluster still does its work (a deleted replica is
/// replaced, nodes keep renewing their leases, a scale-up runs and the
/// Service balances over the new replica), and no acknowledged write is
/// lost.
#[test]
fn ha_control_plane_keeps_serving_without_its_leading_controller_manager_an_apiserver_or_an_etcd_member(
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let mut c = Cluster::start_ha();
    c.apply(&(WEB.to_string() + &client("probe", &c.nodes[0].name)));
    let pods = three_spread_replicas(&c);
    let vip = c.get(&["svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.balanced_over("probe", &vip, &pods.iter().map(name).collect());
    c.step("HA control plane: 3 replicas behind the Service");

    let urls = c.cp.urls();
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    let failed_over = Mutex::new(0usize);
    let writer_k: Vec<Kubectl> = urls.iter().map(|u| c.cp.kubectl().with_server(u)).collect();
    std::thread::scope(|s| {
        let (stop, acknowledged, failed_over) = (&stop, &acknowledged, &failed_over);
        // The writer: a client that knows every API server and moves to the
        // next one when a create fails, as an HA-aware client does.
        s.spawn(move || {
            let (mut i, mut server) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{i}");
                i += 1;
                let out =
                    writer_k[server].output(&["create", "configmap", &name, "--from-literal=k=v"]);
                match out {
                    Ok(o) if o.status.success() => acknowledged.lock().unwrap().push(name),
                    _ => {
                        server = (server + 1) % writer_k.len();
                        *failed_over.lock().unwrap() += 1;
                    }
                }
            }
        });
        let _stop_writer = StopOnDrop(stop);
        let acked = || acknowledged.lock().unwrap().len();

        // 1. The leading controller-manager.
        let leader = c.wait(30, "a controller-manager leads", || {
            lease_holder_pid(&c, "kube-controller-manager")
        });
        let (dead, successor) = if c.cm.pid() == leader {
            (&mut c.cm, c.standby[0].pid())
        } else {
            (&mut c.standby[0], c.cm.pid())
        };
        assert!(
            dead.pid() == leader,
            "the lease names pid {leader}, which no controller-manager has"
        );
        dead.kill();
        c.step(&format!("leading controller-manager (pid {leader}) killed"));
        c.wait(30, "the standby controller-manager leads", || {
            (lease_holder_pid(&c, "kube-controller-manager") == Some(successor)).then_some(())
        });
        let doomed = name(&pods[0]);
        c.k.run(&["delete", "pod", &doomed, "--wait=false"])
            .unwrap();
        c.wait(90, "the deleted replica replaced by the new leader", || {
            let p = c.live_pods("app=web");
            (p.len() == 3
                && p.iter().all(running_and_ready)
                && !p.iter().any(|p| name(p) == doomed))
            .then_some(())
        });
        c.step("the standby took over and replaced a deleted replica");

        // 2. The API server every relay tries first.
        let before = node_lease_renewals(&c);
        c.cp.kill_apiserver_at(0);
        c.k = c.cp.kubectl().with_server(&urls[1]);
        c.step("API server 0 killed");
        c.wait(
            30,
            "every node renewing its Lease through another API server",
            || {
                let now = node_lease_renewals(&c);
                (now.len() == 3
                    && now
                        .iter()
                        .all(|(n, t)| before.get(n).is_some_and(|b| t > b)))
                .then_some(())
            },
        );
        c.k.run(&["scale", "rc", "web", "--replicas=4"]).unwrap();
        let four = c.wait(90, "a 4th replica running", || {
            let p = c.live_pods("app=web");
            (p.len() == 4 && p.iter().all(running_and_ready)).then_some(p)
        });
        c.balanced_over("probe", &vip, &four.iter().map(name).collect());
        let nodes = c.get(&["nodes"]);
        for n in nodes["items"].as_array().unwrap() {
            assert_eq!(
                condition(n, "Ready"),
                "True",
                "{} after the API server died",
                name(n)
            );
        }
        c.step("without API server 0: leases renewed, scaled to 4, Service balanced over 4");

        // 3. An etcd member (the cluster keeps its quorum of two).
        let written = acked();
        c.cp.etcd.kill();
        c.step("etcd member 0 killed");
        let cs = c.k.run(&["get", "cs", "--no-headers"]).unwrap();
        let health: BTreeMap<&str, &str> = cs
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?, f.next()?))
            })
            .collect();
        for (member, want) in [
            ("etcd-0", "Unhealthy"),
            ("etcd-1", "Healthy"),
            ("etcd-2", "Healthy"),
        ] {
            assert_eq!(health.get(member), Some(&want), "kubectl get cs:\n{cs}");
        }
        c.wait(60, "writes acknowledged after the etcd member died", || {
            (acked() >= written + 10).then_some(())
        });
        c.k.run(&["scale", "rc", "web", "--replicas=3"]).unwrap();
        c.wait(90, "back to 3 replicas", || {
            let p = c.live_pods("app=web");
            (p.len() == 3 && p.iter().all(running_and_ready)).then_some(())
        });
        c.step("without etcd member 0: writes go on, scaled back to 3");
        stop.store(true, Ordering::Relaxed);
    });

    let acknowledged = acknowledged.into_inner().unwrap();
    let lost = lost_configmaps(&c, &acknowledged);
    c.step(&format!(
        "{} ConfigMaps acknowledged, {} creates failed over to another API server, {} lost",
        acknowledged.len(),
        failed_over.into_inner().unwrap(),
        lost.len()
    ));
    assert!(
        acknowledged.len() > 20,
        "the writer hardly wrote: {acknowledged:?}"
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");

    // The lost members return and serve again: the etcd member rejoins
    // its cluster with its data, the API server answers reads.
    c.cp.etcd.restart().expect("the etcd member rejoins");
    c.cp.start_apiserver_at(0).expect("API server 0 restarts");
    let back = c.cp.kubectl().with_server(&urls[0]);
    let listed = back.run(&["get", "configmaps", "-o", "name"]).unwrap();
    assert!(
        acknowledged
            .iter()
            .all(|n| listed.contains(&format!("configmap/{n}\n"))),
        "the restarted API server lists every acknowledged ConfigMap"
    );
    c.step("etcd member 0 and API server 0 back; every ConfigMap listed through it");
}
