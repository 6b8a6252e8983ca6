//! NodePorts reached from another node, with the addresses client and
//! backends see, under both external traffic policies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use harness::node::Node;
use serde_json::Value;

use crate::common::{active_backends, assert_no_packet_filter_rules, lb, on_node, Cluster};

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
