//! User stories of the scheduler and the controller-manager, on hollow
//! nodes (Node objects, Leases and a stand-in kubelet; no containers), with
//! the real API server, etcd and kubectl 1.32.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

fn get(k: &Kubectl, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = k.run(&a).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Pods matching `selector` that are not being deleted.
fn live_pods(k: &Kubectl, selector: &str) -> Vec<Value> {
    live_pods_in(k, selector, "default")
}

fn live_pods_in(k: &Kubectl, selector: &str, ns: &str) -> Vec<Value> {
    get(k, &["pods", "-n", ns, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .collect()
}

fn node_of(p: &Value) -> &str {
    p["spec"]["nodeName"].as_str().unwrap_or("")
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
}

/// A control plane with the scheduler, the controller-manager and hollow
/// node groups (`(prefix, count, extra flags)`).
struct Cluster {
    cp: ControlPlane,
    k: Kubectl,
    scheduler: Guarded,
    cm: Guarded,
    groups: Vec<Guarded>,
}

impl Cluster {
    fn start(apiserver: &[&str], cm_args: &[&str], groups: &[(&str, usize, &[&str])]) -> Self {
        // The scheduler and the controller-manager run as their own RBAC
        // users, so every test here also proves their roles suffice.
        let cp =
            ControlPlane::start_with_component_identities(apiserver).expect("control plane starts");
        let k = cp.kubectl();
        let scheduler = cp.component("scheduler", &["scheduler"]).unwrap();
        let mut args = vec!["controller-manager"];
        args.extend_from_slice(cm_args);
        let cm = cp.component("controller-manager", &args).unwrap();
        let mut started = Vec::new();
        let mut total = 0;
        for (prefix, count, extra) in groups {
            let n = count.to_string();
            let mut a = vec![
                "hollow-nodes",
                "--name-prefix",
                prefix,
                "--count",
                &n,
                "--lease-interval-seconds",
                "1",
            ];
            a.extend_from_slice(extra);
            started.push(cp.component(&format!("hollow-{prefix}"), &a).unwrap());
            total += count;
        }
        let ready = wait_for(Duration::from_secs(30), || {
            let nodes = get(&k, &["nodes"]);
            (nodes["items"].as_array().map(Vec::len) == Some(total)).then_some(())
        });
        assert!(ready.is_some(), "{total} hollow nodes did not register");
        Cluster {
            cp,
            k,
            scheduler,
            cm,
            groups: started,
        }
    }

    /// `kubectl rollout status` succeeds within `secs`, or the test fails
    /// with everything needed to tell why.
    fn rollout_done(&self, secs: u64) {
        let out = self
            .k
            .output(&[
                "rollout",
                "status",
                "deployment/shop",
                &format!("--timeout={secs}s"),
            ])
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n--- state\n{}\n--- deployment status\n{}\n--- controller-manager\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.k
                .run(&["get", "deploy,rs,pods", "-o", "wide"])
                .unwrap_or_default(),
            self.k
                .run(&[
                    "get",
                    "deploy",
                    "shop",
                    "-o",
                    "jsonpath={.metadata.generation} {.status}"
                ])
                .unwrap_or_default(),
            self.cp.log("controller-manager"),
        );
    }

    fn logs(&self) -> String {
        format!(
            "--- scheduler\n{}\n--- controller-manager\n{}",
            tail(&self.cp.log("scheduler")),
            tail(&self.cp.log("controller-manager"))
        )
    }

    /// Waits up to `secs` for `check`, failing with the components' logs.
    fn wait<T>(&self, secs: u64, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_for(Duration::from_secs(secs), check)
            .unwrap_or_else(|| panic!("timed out: {what}\n{}", self.logs()))
    }
}

/// A test that passed also proves the components' RBAC roles hold every
/// verb they sent: neither was refused anything on the way.
impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for c in ["scheduler", "controller-manager"] {
            let log = self.cp.log(c);
            // RBAC's refusals read `... is forbidden: User "..." cannot ...`.
            assert!(
                !log.contains("forbidden: User"),
                "the {c} was refused something it needs:\n{}",
                tail(&log)
            );
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

/// The seed's replication story: three replicas land on three different
/// nodes, a deleted pod is replaced, and scaling moves the count both ways.
#[test]
fn replication_controller_spreads_replaces_and_scales() {
    let c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.apply(RC);
    let pods = c.wait(30, "3 running replicas", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 3 && p.iter().all(running)).then_some(p)
    });
    let nodes: BTreeSet<&str> = pods.iter().map(node_of).collect();
    assert_eq!(nodes.len(), 3, "replicas share a node: {nodes:?}");
    // Node IPAM gave every node its own podCIDR from 10.244.0.0/16.
    let cidrs = c.wait(30, "a podCIDR on every node", || {
        let n = get(&c.k, &["nodes"]);
        let cidrs: BTreeSet<String> = n["items"]
            .as_array()?
            .iter()
            .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
            .collect();
        (cidrs.len() == 3).then_some(cidrs)
    });
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("10.244.") && c.ends_with(".0/24")),
        "{cidrs:?}"
    );

    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    c.k.run(&["delete", "pod", &victim]).unwrap();
    c.wait(30, "a replacement replica", || {
        let p = live_pods(&c.k, "app=web");
        let names: HashSet<&str> = p
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        (p.len() == 3 && !names.contains(victim.as_str()) && p.iter().all(running)).then_some(())
    });

    c.k.run(&["scale", "rc", "web", "--replicas=5"]).unwrap();
    c.wait(30, "5 replicas", || {
        let rc = get(&c.k, &["rc", "web"]);
        (live_pods(&c.k, "app=web").len() == 5 && rc["status"]["readyReplicas"] == 5).then_some(())
    });
    c.k.run(&["scale", "rc", "web", "--replicas=1"]).unwrap();
    c.wait(30, "1 replica", || {
        let rc = get(&c.k, &["rc", "web"]);
        (live_pods(&c.k, "app=web").len() == 1 && rc["status"]["replicas"] == 1).then_some(())
    });
    // A node removed from the cluster: its pod is deleted (pod GC) and the
    // RC replaces it elsewhere.
    let on = node_of(&live_pods(&c.k, "app=web")[0]).to_string();
    c.k.run(&["delete", "node", &on]).unwrap();
    c.wait(30, "the replica replaced on a remaining node", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 1 && running(&p[0]) && node_of(&p[0]) != on).then_some(())
    });
    // Deleting the RC (background cascade) takes its pod along.
    c.k.run(&["delete", "rc", "web"]).unwrap();
    c.wait(30, "the RC's pods to be garbage collected", || {
        live_pods(&c.k, "app=web").is_empty().then_some(())
    });
}

/// A pod nothing can hold stays Pending, and the user reads why in
/// kube-scheduler's words; it is placed as soon as a node fits.
#[test]
fn unschedulable_pod_says_why_and_is_placed_when_a_node_fits() {
    let c = Cluster::start(
        &[],
        &[],
        &[
            ("hdd", 2, &["--label", "disk=hdd"]),
            ("ssd", 1, &["--label", "disk=ssd", "--cpu", "1"]),
        ],
    );
    c.k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: big}
spec:
  nodeSelector: {disk: ssd}
  containers:
  - name: c
    image: registry.local/big:1
    resources: {requests: {cpu: "2"}}
"#,
    );
    let message = c.wait(30, "a FailedScheduling event", || {
        let ev = get(
            &c.k,
            &[
                "events",
                "--field-selector",
                "involvedObject.name=big,reason=FailedScheduling",
            ],
        );
        ev["items"][0]["message"].as_str().map(str::to_string)
    });
    assert_eq!(
        message,
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
    );
    let pod = get(&c.k, &["pod", "big"]);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(pod["spec"].get("nodeName").is_none());
    let cond = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .expect("a PodScheduled condition");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "Unschedulable");
    let describe = c.k.run(&["describe", "pod", "big"]).unwrap();
    assert!(describe.contains("FailedScheduling"), "{describe}");

    // A bigger ssd node arrives: the scheduler retries and places the pod.
    let _big =
        c.cp.component(
            "hollow-bigssd",
            &[
                "hollow-nodes",
                "--name-prefix",
                "bigssd",
                "--count",
                "1",
                "--label",
                "disk=ssd",
                "--cpu",
                "8",
            ],
        )
        .unwrap();
    let node = c.wait(60, "the pod to be placed on the new node", || {
        let p = get(&c.k, &["pod", "big"]);
        p["spec"]["nodeName"].as_str().map(str::to_string)
    });
    assert_eq!(node, "bigssd-0");
}

/// Taints keep pods away unless tolerated, and required anti-affinity puts
/// at most one replica per node; the one that cannot fit says so.
#[test]
fn taints_and_anti_affinity_are_respected() {
    let c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.run(&["taint", "nodes", "node-2", "dedicated=db:NoSchedule"])
        .unwrap();
    c.k.apply(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: spread}
spec:
  replicas: 3
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: spread}}
            topologyKey: kubernetes.io/hostname
      containers: [{name: c, image: registry.local/spread:1}]
"#,
    );
    let pending = c.wait(30, "two placed replicas and one pending", || {
        let p = live_pods(&c.k, "app=spread");
        let placed: Vec<&Value> = p.iter().filter(|p| !node_of(p).is_empty()).collect();
        let unplaced: Vec<&Value> = p.iter().filter(|p| node_of(p).is_empty()).collect();
        (p.len() == 3 && placed.len() == 2 && unplaced.len() == 1).then(|| {
            let nodes: BTreeSet<&str> = placed.iter().map(|p| node_of(p)).collect();
            assert_eq!(
                nodes,
                BTreeSet::from(["node-0", "node-1"]),
                "tainted node used or replicas share a node"
            );
            unplaced[0]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
    });
    let message = c.wait(30, "FailedScheduling for the third replica", || {
        let sel = format!("involvedObject.name={pending},reason=FailedScheduling");
        let ev = get(&c.k, &["events", "--field-selector", &sel]);
        ev["items"][0]["message"].as_str().map(str::to_string)
    });
    assert_eq!(
        message,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, 2 node(s) didn't match pod anti-affinity rules."
    );
    // Tolerating the taint lets a pod onto that node.
    c.k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: tolerant, labels: {app: db}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-2}
  tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]
  containers: [{name: c, image: registry.local/db:1}]
"#,
    );
    c.wait(30, "the tolerant pod on node-2", || {
        (node_of(&get(&c.k, &["pod", "tolerant"])) == "node-2").then_some(())
    });
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 4
  selector: {matchLabels: {app: shop}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 1, maxSurge: 1}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: shop, image: registry.local/shop:1}]
"#;

fn available(k: &Kubectl) -> i64 {
    get(k, &["deployment", "shop"])["status"]["availableReplicas"]
        .as_i64()
        .unwrap_or(0)
}

/// A rolling update replaces every pod without dropping below
/// replicas - maxUnavailable available, `rollout status` waits for it, and
/// `rollout pause` holds a template change until `resume`, and `rollout
/// undo` brings the previous image back.
#[test]
fn deployment_rolls_out_within_max_unavailable_and_undoes() {
    let c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.apply(DEPLOYMENT);
    c.rollout_done(60);

    c.k.run(&[
        "set",
        "image",
        "deployment/shop",
        "shop=registry.local/shop:2",
    ])
    .unwrap();
    // Watch availability through the rollout from another thread.
    let kubeconfig = c.cp.kubeconfig();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let k = Kubectl::new(&kubeconfig).unwrap();
            let mut lowest = i64::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                lowest = lowest.min(available(&k));
                std::thread::sleep(Duration::from_millis(20));
            }
            lowest
        })
    };
    let out =
        c.k.output(&["rollout", "status", "deployment/shop", "--timeout=90s"])
            .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lowest = watcher.join().unwrap();
    assert!(
        out.status.success(),
        "rollout status failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));
    assert!(
        lowest >= 3,
        "availability fell to {lowest} with maxUnavailable 1 of 4"
    );
    let pods = live_pods(&c.k, "app=shop");
    assert_eq!(pods.len(), 4);
    assert!(pods
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:2"));

    // Paused, a template change makes no new ReplicaSet; resumed, it rolls out.
    c.k.run(&["rollout", "pause", "deployment/shop"]).unwrap();
    c.k.run(&[
        "set",
        "image",
        "deployment/shop",
        "shop=registry.local/shop:3",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rs = get(&c.k, &["rs", "-l", "app=shop"]);
    assert_eq!(
        rs["items"].as_array().map(Vec::len),
        Some(2),
        "a paused deployment rolled out"
    );
    c.k.run(&["rollout", "resume", "deployment/shop"]).unwrap();
    c.rollout_done(90);
    c.wait(30, "only shop:3 pods after resume", || {
        let pods = live_pods(&c.k, "app=shop");
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:3"))
        .then_some(())
    });

    let history = c.k.run(&["rollout", "history", "deployment/shop"]).unwrap();
    assert!(
        history.contains("1 ") && history.contains("2 ") && history.contains("3 "),
        "{history}"
    );
    c.k.run(&["rollout", "undo", "deployment/shop"]).unwrap();
    c.rollout_done(90);
    c.wait(30, "only shop:2 pods after undo", || {
        let pods = live_pods(&c.k, "app=shop");
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:2"))
        .then_some(())
    });
    let image =
        c.k.run(&[
            "get",
            "deployment",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .unwrap();
    assert_eq!(
        image, "registry.local/shop:2",
        "undo goes back one revision"
    );
}

/// A node that stops renewing its Lease turns Unknown within the grace
/// period and is tainted; after the toleration time its pods are evicted
/// and their controller recreates them on healthy nodes.
#[test]
fn failed_node_is_marked_unknown_and_its_pods_move() {
    let mut c = Cluster::start(
        &["--default-unreachable-toleration-seconds", "4"],
        &[
            "--node-monitor-grace-period",
            "4",
            "--node-monitor-period",
            "1",
        ],
        &[("good", 2, &[]), ("doomed", 1, &[])],
    );
    c.k.apply(RC);
    c.wait(30, "3 running replicas, one on the doomed node", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 3 && p.iter().all(running) && p.iter().any(|p| node_of(p) == "doomed-0"))
            .then_some(())
    });
    // The doomed node's agent dies.
    c.groups[1].kill();
    let node = c.wait(20, "doomed-0 Ready=Unknown", || {
        let n = get(&c.k, &["node", "doomed-0"]);
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| t.len() >= 2);
        (ready["status"] == "Unknown" && tainted).then_some(n)
    });
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap_or(""),
                        t["effect"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()),
        "{taints:?}"
    );
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()),
        "{taints:?}"
    );
    let nodes = c.wait(30, "replicas recreated on healthy nodes", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 3 && p.iter().all(|p| running(p) && node_of(p) != "doomed-0"))
            .then(|| p.iter().map(|p| node_of(p).to_string()).collect::<Vec<_>>())
    });
    assert!(nodes.iter().all(|n| n.starts_with("good-")), "{nodes:?}");
    let events = c.k.run(&["get", "events"]).unwrap();
    assert!(events.contains("TaintManagerEviction"), "{events}");
    assert!(events.contains("NodeNotReady"), "{events}");
}

/// Endpoints follow pod readiness (named target ports resolved per pod);
/// deleting the namespace removes everything in it.
#[test]
fn endpoints_follow_readiness_and_namespace_deletion_empties_it() {
    let c = Cluster::start(&[], &[], &[("node", 2, &[])]);
    c.k.apply("{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"shop\"}}");
    let yaml = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n",
        RC.replace("metadata: {name: web}", "metadata: {name: web, namespace: shop}")
            .replace("replicas: 3", "replicas: 2")
    );
    c.k.apply(&yaml);
    let ips = c.wait(30, "2 ready endpoints on port 8080", || {
        let ep = get(&c.k, &["endpoints", "web", "-n", "shop"]);
        let subset = &ep["subsets"][0];
        let addrs = subset["addresses"].as_array()?;
        (addrs.len() == 2 && subset["ports"][0]["port"] == 8080).then(|| {
            addrs
                .iter()
                .map(|a| a["ip"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
    });
    // One pod's readiness probe starts failing (the test plays kubelet).
    let pod = live_pods_in(&c.k, "app=web", "shop")
        .into_iter()
        .find(|p| p["status"]["podIP"] == ips[0].as_str())
        .unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap();
    c.k.run(&[
        "-n",
        "shop",
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ])
    .unwrap();
    c.wait(30, "the pod moved to notReadyAddresses", || {
        let ep = get(&c.k, &["endpoints", "web", "-n", "shop"]);
        let s = &ep["subsets"][0];
        (s["addresses"].as_array().map(Vec::len) == Some(1)
            && s["notReadyAddresses"][0]["ip"] == ips[0].as_str())
        .then_some(())
    });
    let slices = get(
        &c.k,
        &[
            "endpointslices",
            "-n",
            "shop",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    );
    let eps = slices["items"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let not_ready: Vec<&Value> = eps
        .iter()
        .filter(|e| e["conditions"]["ready"] == false)
        .collect();
    assert_eq!(not_ready.len(), 1, "{slices}");
    assert_eq!(not_ready[0]["addresses"][0], ips[0].as_str());

    let out =
        c.k.output(&["delete", "namespace", "shop", "--timeout=60s"])
            .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let gone = c.k.output(&["get", "namespace", "shop"]).unwrap();
    assert!(!gone.status.success());
    let left = get(&c.k, &["pods,services,endpoints,rc", "-A"]);
    let in_shop: Vec<&Value> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["metadata"]["namespace"] == "shop")
        .collect();
    assert!(in_shop.is_empty(), "left behind: {in_shop:?}");
}

/// The controller-manager dies mid-rollout and a new one finishes the job:
/// no pod is lost or made twice.
#[test]
fn controller_manager_restart_mid_rollout_neither_loses_nor_duplicates() {
    let mut c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.apply(&DEPLOYMENT.replace("replicas: 4", "replicas: 6"));
    c.rollout_done(60);
    c.k.run(&[
        "set",
        "image",
        "deployment/shop",
        "shop=registry.local/shop:2",
    ])
    .unwrap();
    c.wait(30, "the rollout to be under way", || {
        let d = get(&c.k, &["deployment", "shop"]);
        (d["status"]["updatedReplicas"].as_i64().unwrap_or(0) >= 1).then_some(())
    });
    c.cm.kill();
    c.cm =
        c.cp.component("controller-manager-2", &["controller-manager"])
            .unwrap();
    let out =
        c.k.output(&["rollout", "status", "deployment/shop", "--timeout=90s"])
            .unwrap();
    assert!(
        out.status.success(),
        "{}\n--- rollout\n{}\n--- state\n{}\n--- controller-manager-2\n{}\n--- scheduler\n{}\n--- hollow nodes\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        c.k.run(&["get", "deploy,rs,pods", "-o", "wide"]).unwrap_or_default(),
        c.cp.log("controller-manager-2"),
        tail(&c.cp.log("scheduler")),
        tail(&c.cp.log("hollow-node")),
    );
    let pods = c.wait(30, "exactly 6 pods", || {
        let p = live_pods(&c.k, "app=shop");
        (p.len() == 6).then_some(p)
    });
    assert!(pods
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:2"));
    let rs = get(&c.k, &["rs", "-l", "app=shop"]);
    let total: i64 = rs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"]["replicas"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, 6, "ReplicaSets want {total} pods in all");
    let _ = &c.scheduler;
}

/// Deleting an owner with `--cascade=orphan` keeps its pods (without the
/// owner reference); `--cascade=foreground` removes the pods before the
/// owner itself is gone.
#[test]
fn cascading_deletion_orphan_and_foreground() {
    let c = Cluster::start(&[], &[], &[("node", 2, &[])]);
    c.k.apply(&RC.replace("replicas: 3", "replicas: 2"));
    c.wait(30, "2 replicas", || {
        (live_pods(&c.k, "app=web").len() == 2).then_some(())
    });
    c.k.run(&["delete", "rc", "web", "--cascade=orphan"])
        .unwrap();
    let orphans = c.wait(30, "pods released by the deleted RC", || {
        let p = live_pods(&c.k, "app=web");
        let released = p.iter().all(|p| {
            p["metadata"]
                .get("ownerReferences")
                .is_none_or(|r| r.as_array().is_some_and(Vec::is_empty))
        });
        (released && c.k.output(&["get", "rc", "web"]).ok()?.status.code() == Some(1)).then_some(p)
    });
    assert_eq!(orphans.len(), 2, "orphaned pods were deleted");
    // A new RC with the same selector adopts them instead of creating more.
    c.k.apply(&RC.replace("replicas: 3", "replicas: 2"));
    c.wait(30, "the orphans adopted", || {
        let p = live_pods(&c.k, "app=web");
        let adopted = p
            .iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicationController");
        (p.len() == 2 && adopted).then_some(())
    });
    let names: BTreeSet<String> = live_pods(&c.k, "app=web")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let before: BTreeSet<String> = orphans
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, before, "the RC made new pods instead of adopting");

    let out =
        c.k.output(&[
            "delete",
            "rc",
            "web",
            "--cascade=foreground",
            "--timeout=60s",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    // kubectl waited for the RC to be gone; foreground means its pods went first.
    assert!(
        live_pods(&c.k, "app=web").is_empty(),
        "pods outlived their foreground-deleted owner"
    );
}

/// Two schedulers: one leads, the other stands by and takes over when the
/// leader dies, and `kubectl get cs` reports the scheduler healthy.
#[test]
fn standby_scheduler_takes_over() {
    let mut c = Cluster::start(&[], &[], &[("node", 2, &[])]);
    let _standby = c.cp.component("scheduler-2", &["scheduler"]).unwrap();
    c.k.apply("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"one\"},\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"registry.local/x:1\"}]}}");
    c.wait(30, "pod one scheduled", || {
        (!node_of(&get(&c.k, &["pod", "one"])).is_empty()).then_some(())
    });
    let cs = c.k.run(&["get", "cs"]).unwrap();
    assert!(
        cs.lines()
            .any(|l| l.starts_with("scheduler") && l.contains("Healthy")),
        "{cs}"
    );
    c.scheduler.kill();
    c.k.apply("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"two\"},\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"registry.local/x:1\"}]}}");
    c.wait(30, "pod two scheduled by the standby", || {
        (!node_of(&get(&c.k, &["pod", "two"])).is_empty()).then_some(())
    });
    assert!(
        c.cp.log("scheduler-2").contains("acquired lease"),
        "{}",
        c.cp.log("scheduler-2")
    );
}
