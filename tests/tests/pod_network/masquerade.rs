//! Traffic leaving the cluster is masqueraded behind the node's address.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::node::Node;

use crate::common::{counter, exec, http, ping, running_ip, server_pod};

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
