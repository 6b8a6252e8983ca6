//! The three-node cluster every story here starts from, the workload they
//! run on it (a ReplicationController of web servers behind a Service, and
//! client pods), and the reading of nodes, pods and endpoints from
//! `kubectl get -o json`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::node::Node;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

/// A control plane, its scheduler and controller-manager, and three nodes.
pub(crate) struct Cluster {
    // Fields drop in order. The controller-managers and the schedulers go
    // first so that, when each node deletes its pods on drop, no
    // ReplicationController recreates them on the nodes still standing;
    // the control plane goes last because the nodes' clean-up talks to it.
    /// A second controller-manager and scheduler standing by (HA only).
    pub(crate) standby: Vec<Guarded>,
    pub(crate) cm: Guarded,
    pub(crate) scheduler: Guarded,
    pub(crate) nodes: Vec<Node>,
    pub(crate) k: Kubectl,
    pub(crate) cp: ControlPlane,
    t0: Instant,
}

impl Cluster {
    pub(crate) fn start(apiserver: &[&str], cm_args: &[&str]) -> Self {
        let cp = ControlPlane::start_networked_tls(apiserver).expect("the control plane starts");
        Self::start_on(cp, cm_args, false)
    }

    /// A highly available control plane: three API servers over a
    /// three-member etcd, two schedulers and two controller-managers, one
    /// of each leading; every component and agent is given every API
    /// server and fails over between them.
    pub(crate) fn start_ha() -> Self {
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
    pub(crate) fn step(&self, what: &str) {
        // The two tests run at once; the thread's name is the test's.
        let test = std::thread::current().name().unwrap_or("").to_string();
        eprintln!("[{test} {:6.1}s] {what}", self.t0.elapsed().as_secs_f64());
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub(crate) fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.k.run(&a).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    pub(crate) fn apply(&self, yaml: &str) {
        let out = self.k.run_stdin(&["apply", "-f", "-"], yaml).unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pods matching `selector` that are not being deleted.
    pub(crate) fn live_pods(&self, selector: &str) -> Vec<Value> {
        self.get(&["pods", "-l", selector])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .collect()
    }

    /// Enough of every component's log to tell why a wait timed out.
    pub(crate) fn logs(&self) -> String {
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
    pub(crate) fn wait<T>(&self, secs: u64, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_for(Duration::from_secs(secs), check)
            .unwrap_or_else(|| panic!("timed out: {what}\n{}", self.logs()))
    }

    /// `kubectl exec POD -- CMD`: stdout, or stdout and stderr as the error.
    pub(crate) fn exec(&self, pod: &str, cmd: &[&str]) -> Result<String, String> {
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
    pub(crate) fn fetch(&self, from: &str, addr: &str, port: u16, secs: u64) -> Option<String> {
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
    pub(crate) fn through_service(
        &self,
        from: &str,
        vip: &str,
        n: usize,
    ) -> BTreeMap<String, usize> {
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
    pub(crate) fn balanced_over(&self, from: &str, vip: &str, want: &BTreeSet<String>) {
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

    pub(crate) fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The status of condition `kind` of a node or pod ("" when absent).
pub(crate) fn condition<'a>(obj: &'a Value, kind: &str) -> &'a str {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

pub(crate) fn name(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_string()
}

pub(crate) fn node_of(pod: &Value) -> String {
    pod["spec"]["nodeName"].as_str().unwrap_or("").to_string()
}

pub(crate) fn pod_ip(pod: &Value) -> String {
    pod["status"]["podIP"].as_str().unwrap_or("").to_string()
}

pub(crate) fn running_and_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && condition(pod, "Ready") == "True"
}

/// CPU quantity in millicores ("2", "1900m", "0.5").
pub(crate) fn millicores(q: &str) -> i64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0).round() as i64,
    }
}

/// Memory quantity in bytes ("8049172Ki", "512Mi", "1G", "1048576").
pub(crate) fn bytes(q: &str) -> i64 {
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
pub(crate) fn endpoints(c: &Cluster, svc: &str) -> (BTreeSet<String>, BTreeSet<String>) {
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
pub(crate) fn slice_ready(c: &Cluster, svc: &str) -> BTreeSet<String> {
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
pub(crate) const WEB: &str = r#"
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
pub(crate) fn client(name: &str, node: &str) -> String {
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
pub(crate) fn three_spread_replicas(c: &Cluster) -> Vec<Value> {
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

/// The acknowledged ConfigMaps the cluster no longer has.
pub(crate) fn lost_configmaps(c: &Cluster, acknowledged: &[String]) -> Vec<String> {
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
pub(crate) struct StopOnDrop<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
