//! User story: masquerade conntrack cleans up after itself and is fair.
//! A pod opening ten thousand short UDP flows out of the cluster fills the
//! NAT table, which is near empty again once those flows time out; a pod
//! flooding the table cannot push another pod's long-lived flow out of it.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::node::Node;
use harness::process::wait_for;

const OUTSIDE: &str = "10.99.0.200";

/// A busybox pod on `node` sleeping for `marker` seconds: the marker
/// finds its process, and through it its network namespace.
fn sleeper(k: &Kubectl, name: &str, node: &Node, marker: u32) -> PathBuf {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: [sleep, "{marker}"]
"#,
        node = node.name
    );
    let out = k.run_stdin(&["apply", "-f", "-"], &yaml).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("sleep\0{marker}\0");
    wait_for(Duration::from_secs(60), || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            (cmd == want.as_bytes()).then(|| e.path().join("ns/net"))
        })
    })
    .unwrap_or_else(|| panic!("pod {name} did not start\n{}", node.log()))
}

/// `count` UDP datagrams from the pod whose namespace is `netns`, each
/// from a port of its own starting at 20000: one flow each. They go to
/// ten ports outside, as the node has only so many ports per remote end.
fn flood(netns: &std::path::Path, count: u16) {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        harness::forward::enter(&netns).unwrap();
        for port in 20000..20000 + count {
            let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            s.send_to(b"x", (OUTSIDE, 9010 + port % 10)).unwrap();
        }
    })
    .join()
    .unwrap();
}

/// How many masqueraded flows the node's table holds.
fn nat_flows(node: &Node) -> usize {
    let status = node.bpf_status();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("masqueraded flows (")?
                .strip_suffix("):")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no flow count in:\n{status}"))
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

/// Answers each datagram to :9002 with the source port it came from.
fn echo_port(outside: &harness::net::Netns) {
    let path = outside.path();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        harness::forward::enter(&path).unwrap();
        let s = UdpSocket::bind((OUTSIDE, 9002)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(peer.port().to_string().as_bytes(), peer);
        }
    });
    rx.recv().unwrap();
}

/// Sends on `s` and returns the source port the outside saw.
fn seen_port(s: &UdpSocket) -> String {
    s.send_to(b"?", (OUTSIDE, 9002)).unwrap();
    let mut buf = [0u8; 16];
    let n = s.recv(&mut buf).expect("an answer from outside");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn short_flows_time_out_and_a_flood_cannot_evict_another_pods_flow() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    // Node 1 lets UDP flows live 3 s and sweeps every second; node 2
    // keeps the default lifetimes but lets a pod hold only 1000 flows.
    let n1 = Node::start_with(
        &cp,
        &[
            "--conntrack-other-timeout",
            "3",
            "--conntrack-gc-interval",
            "1",
        ],
    );
    let n2 = Node::start_with(&cp, &["--conntrack-max-flows-per-pod", "1000"]);
    let outside = harness::net::Netns::new("x").unwrap();
    let link = cp.segment().attach(&outside).unwrap();
    outside.addr_up(&link, &format!("{OUTSIDE}/24")).unwrap();
    echo_port(&outside);

    let a1 = sleeper(&k, "a1", &n1, 100001);
    let started = std::time::Instant::now();
    flood(&a1, 10_000);
    let flows = nat_flows(&n1);
    assert!(flows >= 9_000, "{flows} flows after 10000 datagrams");
    wait_for(Duration::from_secs(30), || {
        (nat_flows(&n1) < 10).then_some(())
    })
    .unwrap_or_else(|| panic!("the NAT table did not drain:\n{}", n1.bpf_status()));
    eprintln!("10000 flows opened and drained in {:?}", started.elapsed());

    let a2 = sleeper(&k, "a2", &n2, 100002);
    let b2 = sleeper(&k, "b2", &n2, 100003);
    let (tx, rx) = std::sync::mpsc::channel();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let long_lived = std::thread::spawn(move || {
        harness::forward::enter(&b2).unwrap();
        let s = UdpSocket::bind(("0.0.0.0", 5000)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tx.send(seen_port(&s)).unwrap();
        wait.recv().unwrap();
        tx.send(seen_port(&s)).unwrap();
    });
    let before = rx.recv().unwrap();
    flood(&a2, 10_000);
    go.send(()).unwrap();
    let after = rx.recv().unwrap();
    long_lived.join().unwrap();
    assert_eq!(
        before, after,
        "b2's flow kept its node port through the flood"
    );
    let refused = counter(&n2, "masquerade_pod_flow_limit");
    assert!(refused >= 8_000, "{refused} flows of a2 refused");
    assert!(nat_flows(&n2) <= 1_001 + 1, "{}", n2.bpf_status());
}
