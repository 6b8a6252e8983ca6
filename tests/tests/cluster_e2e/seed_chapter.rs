//! A fresh cluster as a user first checks it: component health, node
//! capacity, label selection, a spread ReplicationController that heals,
//! a balanced Service whose endpoints follow readiness, cross-node pod
//! traffic, a liveness probe and a pod too big for any node.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{
    bytes, client, endpoints, millicores, name, node_of, pod_ip, running_and_ready, slice_ready,
    three_spread_replicas, Cluster, WEB,
};

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
