//! Pods reach each other on one node and across nodes, directly and over
//! VXLAN, and reach their nodes.

use harness::cluster::ControlPlane;
use harness::net::{aggregate_size, on_host, packet_filter_rules};
use harness::node::Node;

use crate::common::{counter, exec, http, in_cidr, ping, running_ip, server_pod};

/// Two nodes, two pods on the first and one on the second: TCP and ICMP
/// between every pair, pod to node and node to pod, all through the eBPF
/// programs (their counters move), and the routes between nodes are the
/// agents' own.
#[test]
fn pods_reach_each_other_on_one_node_and_across_nodes() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let mut n1 = Node::start(&cp);
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

    // BIG TCP: the uplink (a veth here) segments 192 KiB aggregates, so
    // the agent lets it be sent them whole.
    let size = aggregate_size(&n1.netns, &n1.uplink).unwrap();
    assert_eq!(size, 196_608, "the uplink's gso_ipv4_max_size");

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

    // `agent reset` gives the uplink back the aggregate size it had.
    n1.reset().unwrap();
    let size = aggregate_size(&n1.netns, &n1.uplink).unwrap();
    assert_eq!(size, 65_536, "the uplink's gso_ipv4_max_size after reset");
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
/// tunnel (the devices' counters move, and the programs' own), routes point
/// into the tunnel, and pod interfaces leave room for the encapsulation.
#[test]
fn pods_reach_each_other_across_nodes_over_vxlan() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    // Node 1's programs wrap what its pods send, node 2 leaves it to its
    // VXLAN device: the two interoperate.
    let n1 = Node::start_with(&cp, &["--tunnel", "vxlan"]);
    let n2 = Node::start_with(&cp, &["--tunnel", "vxlan", "--vxlan-encap", "device"]);
    let nodes = [&n1, &n2];
    k.apply(
        &(server_pod("a1", &n1.name) + &server_pod("a2", &n1.name) + &server_pod("b1", &n2.name)),
    );
    let a1 = running_ip(&k, "a1", &nodes);
    let a2 = running_ip(&k, "a2", &nodes);
    let b1 = running_ip(&k, "b1", &nodes);
    let mtu = exec(&k, "a1", &["cat", "/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(mtu.trim(), "1450", "pod MTU leaves 50 bytes for VXLAN");
    // The VXLAN device takes 64 KiB aggregates at most: no BIG TCP, and
    // the uplink is left as it was.
    let size = aggregate_size(&n1.netns, &n1.uplink).unwrap();
    assert_eq!(size, 65_536, "the uplink's gso_ipv4_max_size");
    // The outer UDP checksum is left zero, as RFC 7348 asks over IPv4.
    let device = n1.exec(&["ip", "-d", "link", "show", "kst-vxlan"]).unwrap();
    assert!(device.contains(" noudpcsum "), "{device}");
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
    // Node 1's program wrapped its pods' frames itself, node 2's did not;
    // both let tunnel packets through to the device at once.
    assert!(
        counter(&n1, "pod_to_tunnel_encapsulated") > 0,
        "{}",
        n1.bpf_status()
    );
    assert_eq!(
        counter(&n2, "pod_to_tunnel_encapsulated"),
        0,
        "{}",
        n2.bpf_status()
    );
    for n in nodes {
        assert!(counter(n, "tunnel_frames_in") > 0, "{}", n.bpf_status());
    }
    // A large response crosses the tunnel whole (the MTU is right, and
    // the sender's aggregates are wrapped and segmented correctly).
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
