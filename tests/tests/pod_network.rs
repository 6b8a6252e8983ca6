//! Pod networking with the eBPF datapath, on nodes built as network
//! namespaces: pods get addresses from their node's pod CIDR, reach each
//! other on one node and across nodes, reach their node and are reached by
//! it; a restarted agent keeps them connected; churn leaves nothing behind;
//! and no iptables or nftables rule is written.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::net::{on_host, packet_filter_rules};
use harness::node::Node;
use harness::process::wait_for;
use serde_json::Value;

fn logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- agent {} log\n{}", n.name, n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pod serving HTTP on :8080 (busybox httpd) bound to `node`.
fn server_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: net}}}}
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

/// Waits for pod `name` to run and returns its IP.
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

fn exec(k: &Kubectl, pod: &str, cmd: &[&str]) -> Result<String, String> {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    let out = k.output(&args).map_err(|e| e.to_string())?;
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

/// An HTTP GET with busybox `nc` (Debian's static busybox `wget` crashes);
/// returns the body.
fn get_cmd(ip: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080"),
    ]
}

fn body(response: &str) -> Option<String> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.trim().to_string())
}

/// `pod` fetches `http://ip:8080/` and must get the page of `expect`.
fn http(k: &Kubectl, pod: &str, ip: &str, expect: &str, nodes: &[&Node]) {
    let cmd = get_cmd(ip);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let got = wait_for(Duration::from_secs(10), || body(&exec(k, pod, &cmd).ok()?));
    let got = got.unwrap_or_else(|| {
        panic!(
            "{pod} could not fetch http://{ip}:8080/: {:?}\n{}\n{}",
            exec(k, pod, &cmd),
            nodes.iter().map(|n| n.bpf_status()).collect::<String>(),
            logs(nodes)
        )
    });
    assert_eq!(got, format!("hello from {expect}"), "{pod} -> {ip}");
}

fn ping(k: &Kubectl, pod: &str, ip: &str, nodes: &[&Node]) {
    let ok = wait_for(Duration::from_secs(10), || {
        exec(k, pod, &["ping", "-c", "1", "-W", "2", ip]).ok()
    });
    assert!(
        ok.is_some(),
        "{pod} cannot ping {ip}: {:?}\n{}",
        exec(k, pod, &["ping", "-c", "1", "-W", "2", ip]),
        nodes.iter().map(|n| n.bpf_status()).collect::<String>()
    );
}

fn counter(node: &Node, name: &str) -> u64 {
    let status = node.bpf_status();
    status
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no counter {name} in:\n{status}"))
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let parse = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
    let mask = u32::MAX << (32 - len.parse::<u32>().unwrap());
    parse(ip) & mask == parse(net) & mask
}

/// Two nodes, two pods on the first and one on the second: TCP and ICMP
/// between every pair, pod to node and node to pod, all through the eBPF
/// programs (their counters move), and the routes between nodes are the
/// agents' own.
#[test]
fn pods_reach_each_other_on_one_node_and_across_nodes() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let n1 = Node::start(&cp);
    let n2 = Node::start(&cp);
    let nodes = [&n1, &n2];
    k.apply(
        &(server_pod("a1", &n1.name) + &server_pod("a2", &n1.name) + &server_pod("b1", &n2.name)),
    );
    let a1 = running_ip(&k, "a1", &nodes);
    let a2 = running_ip(&k, "a2", &nodes);
    let b1 = running_ip(&k, "b1", &nodes);
    assert!(in_cidr(&a1, &n1.pod_cidr), "{a1} not in {}", n1.pod_cidr);
    assert!(in_cidr(&a2, &n1.pod_cidr), "{a2} not in {}", n1.pod_cidr);
    assert!(in_cidr(&b1, &n2.pod_cidr), "{b1} not in {}", n2.pod_cidr);
    assert_ne!(a1, a2);

    // The pod's own view: eth0 with its address, default route via the
    // link-local gateway.
    let addr = exec(&k, "a1", &["ip", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(addr.contains(&format!("{a1}/32")), "{addr}");
    let route = exec(&k, "a1", &["ip", "route"]).unwrap();
    assert!(route.contains("default via 169.254.1.1"), "{route}");

    let local_before = counter(&n1, "pod_to_local_pod");
    http(&k, "a1", &a2, "a2", &nodes);
    ping(&k, "a2", &a1, &nodes);
    assert!(
        counter(&n1, "pod_to_local_pod") > local_before,
        "same-node traffic did not take the eBPF path:\n{}",
        n1.bpf_status()
    );

    let remote_before = counter(&n1, "pod_to_remote_node");
    let uplink_before = counter(&n2, "uplink_to_local_pod");
    http(&k, "a1", &b1, "b1", &nodes);
    http(&k, "b1", &a2, "a2", &nodes);
    ping(&k, "b1", &a1, &nodes);
    assert!(counter(&n1, "pod_to_remote_node") > remote_before);
    assert!(counter(&n2, "uplink_to_local_pod") > uplink_before);

    // Pod to its node and to the other node; the node to its pod.
    ping(&k, "a1", &n1.ip, &nodes);
    ping(&k, "a1", &n2.ip, &nodes);
    n1.exec(&["ping", "-c", "1", "-W", "2", &a1])
        .unwrap_or_else(|e| panic!("node cannot ping its pod: {e}"));
    let page = n1
        .exec(&[
            "curl",
            "-sS",
            "-m",
            "3",
            &format!("http://{a2}:8080/index.html"),
        ])
        .unwrap();
    assert_eq!(page.trim(), "hello from a2");

    // Each node routes the other's pod CIDR via its address, and says so.
    let routes = n1.exec(&["ip", "route"]).unwrap();
    assert!(
        routes.contains(&format!("{} via {} ", n2.pod_cidr, n2.ip)) && routes.contains("proto 211"),
        "{routes}"
    );
    let status = n1.bpf_status();
    assert!(status.contains(&a1) && status.contains(&a2), "{status}");
    assert!(
        status.contains(&format!("{} via {}", n2.pod_cidr, n2.ip)),
        "{status}"
    );

    // The agent's metrics count its pods, their start-up and the datapath.
    let metrics = n1
        .exec(&["curl", "-sS", "-m", "3", "http://127.0.0.1:10250/metrics"])
        .unwrap();
    for want in [
        "kestrel_agent_pods 2",
        "kestrel_agent_pod_start_duration_seconds_count 2",
        "kestrel_datapath_endpoints 2",
        "kestrel_datapath_decisions_total{decision=\"pod_to_local_pod\"}",
    ] {
        assert!(metrics.contains(want), "no {want:?} in\n{metrics}");
    }

    // No packet filter rule anywhere: neither in the nodes nor on the host.
    for n in &nodes {
        let rules = packet_filter_rules(|cmd| n.exec(cmd)).unwrap();
        assert!(rules.is_empty(), "in {}: {rules:?}", n.name);
    }
    let rules = packet_filter_rules(on_host).unwrap();
    assert!(rules.is_empty(), "on the host: {rules:?}");
}

/// Killing the agent with SIGKILL leaves the datapath pinned: pods keep
/// talking while no agent runs (a client pod keeps fetching from a pod on
/// its node and one on the other node, and logs each try to a hostPath
/// file), and after the restart the new agent takes the programs over and
/// new pods join.
#[test]
fn pods_stay_connected_across_an_agent_restart() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let mut n1 = Node::start(&cp);
    let n2 = Node::start(&cp);
    k.apply(
        &(server_pod("a1", &n1.name) + &server_pod("a2", &n1.name) + &server_pod("b1", &n2.name)),
    );
    let a2 = running_ip(&k, "a2", &[&n1, &n2]);
    let b1 = running_ip(&k, "b1", &[&n1, &n2]);
    running_ip(&k, "a1", &[&n1, &n2]);
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("log");
    k.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  volumes: [{{name: out, hostPath: {{path: {dir}}}}}]
  containers:
  - name: c
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'while true; do for t in {a2} {b1}; do if printf "GET /index.html HTTP/1.0\r\n\r\n" | nc -w 2 $t 8080 | grep -q hello; then echo "ok $t"; else echo "fail $t"; fi >> /out/log; done; sleep 0.1; done']
"#,
            node = n1.name,
            dir = out.path().display()
        ),
    );
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    wait_for(Duration::from_secs(60), || {
        (lines().len() >= 4).then_some(())
    })
    .unwrap_or_else(|| panic!("the client pod logged nothing\n{}", n1.log()));

    n1.proc.as_mut().unwrap().kill();
    let from = lines().len();
    let before = counter(&n1, "pod_to_local_pod");
    wait_for(Duration::from_secs(30), || {
        (lines().len() >= from + 20).then_some(())
    })
    .expect("the client stopped while the agent was down");
    let during = lines()[from..from + 20].to_vec();
    assert!(
        during.iter().all(|l| l.starts_with("ok ")),
        "tries failed while the agent was down: {during:?}"
    );
    assert!(during.contains(&format!("ok {a2}")) && during.contains(&format!("ok {b1}")));
    assert!(
        counter(&n1, "pod_to_local_pod") > before,
        "no agent, still eBPF"
    );
    // The other node reaches the pod through node 1's uplink program too.
    let page = n2
        .exec(&[
            "curl",
            "-sS",
            "-m",
            "3",
            &format!("http://{a2}:8080/index.html"),
        ])
        .unwrap();
    assert_eq!(page.trim(), "hello from a2");

    n1.launch();
    k.apply(&server_pod("a3", &n1.name));
    let a3 = running_ip(&k, "a3", &[&n1, &n2]);
    assert_ne!(a3, a2, "a restarted agent handed out a used address");
    http(&k, "a3", &a2, "a2", &[&n1, &n2]);
    http(&k, "a1", &b1, "b1", &[&n1, &n2]);
    http(&k, "b1", &a3, "a3", &[&n1, &n2]);
    let after = lines();
    let failed: Vec<&String> = after[from..]
        .iter()
        .filter(|l| l.starts_with("fail"))
        .collect();
    assert!(
        failed.is_empty(),
        "tries failed across the restart: {failed:?}"
    );
    let agent_log = n1.log();
    assert!(!agent_log.contains("panicked"), "{agent_log}");
}

/// Pods created and deleted in rounds leave no lease, veth, route or map
/// entry behind.
#[test]
fn pod_churn_leaves_nothing_behind() {
    const ROUNDS: usize = 4;
    const PODS: usize = 25;
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let n = Node::start(&cp);
    let links_before = n.exec(&["ip", "-o", "link"]).unwrap().lines().count();
    let routes_before = n.exec(&["ip", "route"]).unwrap();
    for round in 0..ROUNDS {
        let yaml: String = (0..PODS)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: churn-{i}}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: busybox, command: [sleep, '3600']}}\n---\n",
                    n.name
                )
            })
            .collect();
        k.apply(&yaml);
        let ips = wait_for(Duration::from_secs(120), || {
            let list: Value =
                serde_json::from_str(&k.run(&["get", "pods", "-o", "json"]).ok()?).ok()?;
            let ips: Vec<String> = list["items"]
                .as_array()?
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
                .collect();
            (ips.len() == PODS).then_some(ips)
        })
        .unwrap_or_else(|| panic!("round {round}: pods did not all run\n{}", n.log()));
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), PODS, "duplicate pod IPs: {ips:?}");
        let out = k
            .output(&[
                "delete",
                "pods",
                "--all",
                "--grace-period=0",
                "--timeout=120s",
            ])
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(Duration::from_secs(60), || {
            let status = n.bpf_status();
            (status.contains("pod endpoints (0)")).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: endpoints left\n{}", n.bpf_status()));
    }
    let leftover = wait_for(Duration::from_secs(20), || {
        let links = n.exec(&["ip", "-o", "link"]).unwrap();
        (links.lines().count() == links_before).then_some(())
    });
    assert!(
        leftover.is_some(),
        "veths left: {}",
        n.exec(&["ip", "-o", "link"]).unwrap()
    );
    assert_eq!(n.exec(&["ip", "route"]).unwrap(), routes_before);
    let leases: Vec<_> = walk(&n.state.path().join("cni"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.parse::<std::net::Ipv4Addr>().is_ok())
        })
        .collect();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let links = std::fs::read_dir(n.bpffs_dir.join("links"))
        .unwrap()
        .count();
    assert_eq!(links, 1, "only the uplink's link stays pinned");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A server outside the cluster (a namespace on the node network that has
/// no route to any pod CIDR) answering each TCP connection or UDP datagram
/// with the address it came from, for `count` exchanges of each. Over UDP
/// it speaks just enough TFTP (busybox's only UDP client) to answer a read
/// request with an error packet whose message is that address.
fn outside_server(
    ns: &harness::net::Netns,
    ip: &str,
    count: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    use std::io::Write;
    let path = ns.path();
    let tcp_addr: std::net::SocketAddr = format!("{ip}:9000").parse().unwrap();
    let udp_addr: std::net::SocketAddr = format!("{ip}:9001").parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    let p2 = path.clone();
    let tcp = std::thread::spawn(move || {
        harness::forward::enter(&path).unwrap();
        let l = std::net::TcpListener::bind(tcp_addr).unwrap();
        tx.send(()).unwrap();
        for conn in l.incoming().take(count) {
            let mut c = conn.unwrap();
            let peer = c.peer_addr().unwrap();
            let _ = writeln!(c, "{}", peer.ip());
        }
    });
    let udp = std::thread::spawn(move || {
        harness::forward::enter(&p2).unwrap();
        let s = std::net::UdpSocket::bind(udp_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        tx2.send(()).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..count {
            let Ok((_, peer)) = s.recv_from(&mut buf) else {
                return;
            };
            let mut reply = vec![0, 5, 0, 0];
            reply.extend_from_slice(peer.ip().to_string().as_bytes());
            reply.push(0);
            let _ = s.send_to(&reply, peer);
        }
    });
    rx.recv().unwrap();
    rx.recv().unwrap();
    vec![tcp, udp]
}

/// Pods reach a host outside the cluster, which sees the node's address
/// (eBPF masquerade), over TCP, UDP and ICMP; traffic between pods keeps
/// pod addresses.
#[test]
fn pod_traffic_leaving_the_cluster_is_masqueraded() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let n1 = Node::start(&cp);
    let n2 = Node::start(&cp);
    let outside = harness::net::Netns::new("x").unwrap();
    let link = cp.segment().attach(&outside).unwrap();
    outside.addr_up(&link, "10.99.0.200/24").unwrap();
    let _servers = outside_server(&outside, "10.99.0.200", 2);
    k.apply(&(server_pod("a1", &n1.name) + &server_pod("b1", &n2.name)));
    running_ip(&k, "a1", &[&n1, &n2]);
    let b1 = running_ip(&k, "b1", &[&n1, &n2]);

    let seen = exec(
        &k,
        "a1",
        &["sh", "-c", "nc -w 3 10.99.0.200 9000 </dev/null"],
    )
    .unwrap_or_else(|e| panic!("TCP out of the cluster: {e}\n{}", n1.bpf_status()));
    assert_eq!(seen.trim(), n1.ip, "the outside saw the pod, not the node");
    // The transfer fails by design; its error message is what we want.
    let seen = exec(
        &k,
        "b1",
        &[
            "sh",
            "-c",
            "tftp -g -r x -l /tmp/x 10.99.0.200 9001 2>&1; true",
        ],
    )
    .unwrap();
    assert!(
        seen.contains(&format!("server error: (0) {}", n2.ip)),
        "UDP out of the cluster: {seen}\n{}",
        n2.bpf_status()
    );
    ping(&k, "a1", "10.99.0.200", &[&n1, &n2]);
    let status = n1.bpf_status();
    assert!(counter(&n1, "masqueraded_out") >= 2, "{status}");
    assert!(counter(&n1, "masqueraded_replies_in") >= 2, "{status}");
    assert!(status.contains("-> 10.99.0.200:9000"), "{status}");
    // Between pods nothing is translated.
    http(&k, "a1", &b1, "b1", &[&n1, &n2]);
    let _ = (&n1, &n2);
}

/// Packets through the kernel's VXLAN device `kst-vxlan` of `node`,
/// sent plus received.
fn vxlan_packets(node: &Node) -> u64 {
    let out = node.exec(&["cat", "/proc/net/dev"]).unwrap_or_default();
    out.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == "kst-vxlan").then(|| {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                f.get(1).copied().unwrap_or(0) + f.get(9).copied().unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

/// With `--tunnel vxlan` pods on two nodes reach each other through the
/// VXLAN devices (their counters move), routes point into the tunnel, and
/// pod interfaces leave room for the encapsulation.
#[test]
fn pods_reach_each_other_across_nodes_over_vxlan() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let n1 = Node::start_with(&cp, &["--tunnel", "vxlan"]);
    let n2 = Node::start_with(&cp, &["--tunnel", "vxlan"]);
    let nodes = [&n1, &n2];
    k.apply(
        &(server_pod("a1", &n1.name) + &server_pod("a2", &n1.name) + &server_pod("b1", &n2.name)),
    );
    let a1 = running_ip(&k, "a1", &nodes);
    let a2 = running_ip(&k, "a2", &nodes);
    let b1 = running_ip(&k, "b1", &nodes);
    let mtu = exec(&k, "a1", &["cat", "/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(mtu.trim(), "1450", "pod MTU leaves 50 bytes for VXLAN");
    let routes = n1.exec(&["ip", "route"]).unwrap();
    let net2 = n2.pod_cidr.trim_end_matches("/24");
    assert!(
        routes.contains(&format!(
            "{} via {net2} dev kst-vxlan proto 211 onlink",
            n2.pod_cidr
        )),
        "{routes}"
    );
    let before = (vxlan_packets(&n1), vxlan_packets(&n2));
    http(&k, "a1", &b1, "b1", &nodes);
    http(&k, "b1", &a2, "a2", &nodes);
    ping(&k, "b1", &a1, &nodes);
    http(&k, "a1", &a2, "a2", &nodes);
    assert!(
        vxlan_packets(&n1) > before.0,
        "no packet through node 1's tunnel"
    );
    assert!(
        vxlan_packets(&n2) > before.1,
        "no packet through node 2's tunnel"
    );
    assert!(
        counter(&n2, "uplink_to_local_pod") > 0,
        "{}",
        n2.bpf_status()
    );
    // A large response crosses the tunnel whole (the MTU is right).
    let big = exec(
        &k,
        "b1",
        &[
            "sh",
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' x > /www/big; true",
        ],
    );
    assert!(big.is_ok(), "{big:?}");
    let len = exec(
        &k,
        "a1",
        &[
            "sh",
            "-c",
            &format!("printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {b1} 8080 | wc -c"),
        ],
    )
    .unwrap();
    let len: usize = len.trim().parse().unwrap();
    assert!(len > 200_000, "a 200 kB response arrived as {len} bytes");
}
