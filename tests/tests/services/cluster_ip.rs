//! A ClusterIP balanced over its ready backends, from pods and from the
//! node, and backends that turn unready or go away getting no new
//! connections.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::kubectl::Kubectl;
use serde_json::Value;

use crate::common::{
    active_backends, assert_no_packet_filter_rules, client, http_loop, lb, on_node, tally, web,
    Cluster,
};

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
