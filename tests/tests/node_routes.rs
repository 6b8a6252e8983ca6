//! Routes between nodes survive bad Node objects: a Node whose address no
//! interface reaches (a machine that left the node network) and Nodes
//! whose pod CIDR lies outside the cluster CIDR or over other nodes' are
//! reported on those Nodes, get no route, and the real nodes' pods still
//! reach each other.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::node::Node;
use harness::process::wait_for;
use serde_json::Value;

/// A Node object no agent runs, with `pod_cidr` and InternalIP `ip`.
fn stale_node(k: &Kubectl, name: &str, pod_cidr: &str, ip: &str) {
    k.apply(&format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}},"spec":{{"podCIDR":"{pod_cidr}","podCIDRs":["{pod_cidr}"]}}}}"#
        ),
    );
    let status =
        format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}}]}}}}"#);
    let out = k
        .output(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn server_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']
---
"#
    )
}

fn logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- agent {} log\n{}", n.name, n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn running_ip(k: &Kubectl, name: &str, nodes: &[&Node]) -> String {
    wait_for(Duration::from_secs(60), || {
        let p: Value =
            serde_json::from_str(&k.run(&["get", "pod", name, "-o", "json"]).ok()?).ok()?;
        (p["status"]["phase"] == "Running")
            .then(|| p["status"]["podIP"].as_str().map(String::from))
            .flatten()
    })
    .unwrap_or_else(|| panic!("pod {name} did not run with an IP\n{}", logs(nodes)))
}

/// `pod` fetches `http://ip:8080/` (busybox nc) and gets `expect`'s page.
fn http(k: &Kubectl, pod: &str, ip: &str, expect: &str, nodes: &[&Node]) {
    let script = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080");
    let get = || {
        let out = k.output(&["exec", pod, "--", "sh", "-c", &script]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.trim().to_string())
    };
    let got = wait_for(Duration::from_secs(15), get).unwrap_or_else(|| {
        panic!(
            "{pod} could not fetch http://{ip}:8080/\n{}\n{}",
            nodes
                .iter()
                .map(|n| n.exec(&["ip", "route"]).unwrap_or_default())
                .collect::<String>(),
            logs(nodes)
        )
    });
    assert_eq!(got, format!("hello from {expect}"), "{pod} -> {ip}");
}

/// The Warning Events about Node `name`: (reason, message).
fn node_events(k: &Kubectl, name: &str) -> Vec<(String, String)> {
    let Ok(text) = k.run(&["get", "events", "-n", "default", "-o", "json"]) else {
        return vec![];
    };
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == "Node" && e["involvedObject"]["name"] == name)
        .filter(|e| e["type"] == "Warning")
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Two real nodes and three Nodes that must not be routed: one left the
/// node network (its route cannot be made), one has a pod CIDR outside the
/// cluster's, one a pod CIDR over both real nodes'. Pods on the real nodes
/// talk across them; no route goes to the bad ones, and each bad Node
/// carries an Event saying why.
#[test]
fn one_bad_node_does_not_cut_the_routes_to_the_others() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let gone = harness::names::unique("gone");
    let outside = harness::names::unique("outside");
    let overlap = harness::names::unique("overlap");
    // Before the real nodes: the agents meet them in their first list.
    // Its pod CIDR sorts before the real nodes': a sync that stops at
    // the first failure would route none of them.
    stale_node(&k, &gone, "10.244.1.0/24", "192.0.2.1");
    stale_node(&k, &outside, "10.250.0.0/24", "10.99.0.200");
    // The real nodes' pod CIDRs are 10.244.10.0/24 and up.
    stale_node(&k, &overlap, "10.244.0.0/20", "10.99.0.201");

    let n1 = Node::start(&cp);
    let n2 = Node::start(&cp);
    let nodes = [&n1, &n2];
    k.apply(&(server_pod("a", &n1.name) + &server_pod("b", &n2.name)));
    let a = running_ip(&k, "a", &nodes);
    let b = running_ip(&k, "b", &nodes);
    http(&k, "a", &b, "b", &nodes);
    http(&k, "b", &a, "a", &nodes);

    for (n, other) in [(&n1, &n2), (&n2, &n1)] {
        let routes = n.exec(&["ip", "route"]).unwrap();
        assert!(
            routes.contains(&format!("{} via {} ", other.pod_cidr, other.ip)),
            "{routes}"
        );
        for bad in ["10.244.1.0/24", "10.250.0.0/24", "10.244.0.0/20"] {
            assert!(
                !routes.contains(bad),
                "a route to {bad} on {}:\n{routes}",
                n.name
            );
        }
    }

    for (name, reason, says) in [
        (&gone, "FailedToCreateRoute", "unreachable"),
        (&outside, "PodCIDRRefused", "outside the cluster CIDR"),
        (&overlap, "PodCIDRRefused", "overlaps"),
    ] {
        // Each agent tells of it.
        let events = wait_for(Duration::from_secs(30), || {
            let ev = node_events(&k, name);
            let told = |n: &Node| {
                ev.iter().any(|(r, m)| {
                    r == reason
                        && m.to_lowercase().contains(&says.to_lowercase())
                        && m.contains(&n.name)
                })
            };
            (told(&n1) && told(&n2)).then_some(ev)
        });
        assert!(
            events.is_some(),
            "no {reason} Event on {name} from both agents: {:?}\n{}",
            node_events(&k, name),
            logs(&nodes)
        );
        for n in nodes {
            assert!(
                n.log().contains(&format!("not routing to node {name}")),
                "{}",
                n.log()
            );
        }
    }
}
