//! User story: ICMP errors reach pods through masquerade. A pod whose
//! datagram hits a closed port outside the cluster learns the port is
//! closed, and a pod's TCP transfer across a path with a smaller MTU
//! completes, because the router's "fragmentation needed" is translated
//! back to the pod, which lowers its path MTU.
//!
//! The node is a network namespace with the agent's datapath loaded and
//! attached and a pod wired as the CNI plugin wires it. Beyond its uplink
//! a "router" namespace forwards to a "server" namespace over a link whose
//! router end has an MTU of 1280 while every other link has 1500, so the
//! server still offers full-size segments and only the router can tell
//! the pod to send smaller ones.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use harness::net::{self, Netns};
use kestrel_agent::ebpf::abi::Stat;
use kestrel_agent::netns::NetNs;
use kestrel_agent::network::datapath::{self, Datapath};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

/// A node with one pod, a router and a server. Pins go when it drops; the
/// namespaces (and every link in them) with it.
struct Path {
    pins: PathBuf,
    /// The node namespace's name, for `agent bpf status --netns`.
    node: String,
    dp: Option<Datapath>,
    pod: NetNs,
    server: NetNs,
    _names: Vec<Netns>,
}

impl Path {
    fn new() -> Self {
        let node = Netns::new("in").unwrap();
        let router = Netns::new("ir").unwrap();
        let server = Netns::new("is").unwrap();
        let pod = Netns::new("ip").unwrap();
        let pins = PathBuf::from(format!("/sys/fs/bpf/{}", node.name()));
        let (up, near) = net::veth_between(&node, &router, "iu").unwrap();
        let (far, srv) = net::veth_between(&router, &server, "if").unwrap();
        node.addr_up(&up, "192.168.77.1/24").unwrap();
        router.addr_up(&near, "192.168.77.2/24").unwrap();
        router.addr_up(&far, "192.168.78.1/24").unwrap();
        server.addr_up(&srv, "192.168.78.2/24").unwrap();
        let run = |ns: &Netns, cmd: &str| {
            ns.exec(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
        };
        run(&router, &format!("ip link set {far} mtu 1280"));
        run(&router, "sysctl -qw net.ipv4.conf.all.forwarding=1");
        run(&router, "ip route add 198.51.100.0/24 via 192.168.78.2");
        run(&server, "ip addr add 198.51.100.10/32 dev lo");
        run(&server, "ip route add default via 192.168.78.1");
        run(&node, "ip route add default via 192.168.77.2");
        run(&node, "sysctl -qw net.ipv4.conf.all.forwarding=1");
        let ep = net::wire_pod(&node, &pod, POD).unwrap();

        let object = kestrel_agent::ebpf::object(None).unwrap();
        let in_node = NetNs::open(node.path()).unwrap();
        let loaded = in_node.run(|| -> Result<Datapath, kestrel_agent::ebpf::Error> {
            let mut dp = Datapath::load(&object, &pins)?;
            dp.configure(NODE, "10.244.0.0/16".parse().unwrap(), true)?;
            dp.attach_uplink(&up)?;
            dp.add_endpoint(ep.ip, &ep)?;
            Ok(dp)
        });
        let mut path = Self {
            pins,
            node: node.name().to_string(),
            dp: None,
            pod: NetNs::open(pod.path()).unwrap(),
            server: NetNs::open(server.path()).unwrap(),
            _names: vec![pod, node, router, server],
        };
        // Unwrapped only now, so a failure still cleans up through `path`.
        path.dp = Some(loaded.unwrap().unwrap());
        path
    }

    fn translated(&self) -> u64 {
        datapath::read_stats(&self.pins)
            .unwrap()
            .into_iter()
            .find(|(n, _)| *n == Stat::IcmpErrorIn.name())
            .map(|(_, n)| n)
            .unwrap()
    }

    /// The translated ICMP errors as `agent bpf status` shows them.
    fn status_translated(&self) -> u64 {
        let out = std::process::Command::new(harness::cluster::binary("agent"))
            .args(["bpf", "status", "--netns", &self.node, "--bpffs-dir"])
            .arg(&self.pins)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "agent bpf status: {text}");
        let name = Stat::IcmpErrorIn.name();
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        // The programs' links and maps live in the pins.
        self.dp.take();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

#[test]
fn a_pod_learns_that_an_outside_port_is_closed() {
    let p = Path::new();
    // Nothing listens on the server's port 9: its kernel answers port
    // unreachable, to the node's address the datagram was masqueraded to.
    let err = p
        .pod
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect((SERVER, 9)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send(b"anyone?").unwrap();
            let mut b = [0u8; 16];
            s.recv(&mut b).expect_err("nothing answers on port 9")
        })
        .unwrap();
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "the pod's socket got {err} instead of the port unreachable"
    );
    assert_eq!(p.translated(), 1);
}

#[test]
fn a_pod_transfer_across_a_smaller_mtu_completes() {
    const BYTES: usize = 4 << 20;
    let p = Path::new();
    let addr = SocketAddr::from((SERVER, 8080));
    let listener = p.server.run(|| TcpListener::bind(addr)).unwrap().unwrap();
    // The server counts what it got and answers with the count.
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut got = 0usize;
        let mut b = vec![0u8; 64 << 10];
        while got < BYTES {
            match s.read(&mut b)? {
                0 => break,
                n => got += n,
            }
        }
        s.write_all(&(got as u64).to_be_bytes())?;
        Ok(got)
    });

    let before = p.translated();
    let got = p
        .pod
        .run(|| -> std::io::Result<u64> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            // A bound, not a measure: without the router's error the pod
            // keeps sending segments that never pass, and this fails.
            s.set_write_timeout(Some(Duration::from_secs(20)))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let chunk = vec![7u8; 64 << 10];
            for _ in 0..BYTES / chunk.len() {
                s.write_all(&chunk)?;
            }
            let mut count = [0u8; 8];
            s.read_exact(&mut count)?;
            Ok(u64::from_be_bytes(count))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("transfer: {e}; {} ICMP errors translated", p.translated()));
    assert_eq!(got, BYTES as u64);
    assert_eq!(server.join().unwrap().unwrap(), BYTES);
    // The router's "fragmentation needed" is what let it through.
    assert!(p.translated() > before, "no ICMP error was translated");
    assert!(p.status_translated() > before);
}
