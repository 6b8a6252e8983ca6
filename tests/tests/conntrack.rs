//! User story: a node's masquerade conntrack stays small and fair. Flows
//! that ended leave the table after their timeout, one pod flooding new
//! flows cannot push out another pod's connection, and a port a live flow
//! holds is never given to a new one.
//!
//! Each case builds a node as a network namespace of its own with the
//! agent's datapath loaded and attached, pods wired as the CNI plugin
//! wires them, and an "outside" namespace beyond the node's uplink that
//! holds the servers (addresses outside the cluster CIDR, which exist only
//! there). The sweep is the agent's own, run by the test at a chosen time
//! instead of on the agent's timer.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::net::{self, Netns};
use kestrel_agent::ebpf::abi::{self, CtState, NatKey, NatValue, SnatFlow, Stat};
use kestrel_agent::ebpf::aya::maps::{HashMap, Map, MapData};
use kestrel_agent::netns::NetNs;
use kestrel_agent::network::conntrack::{self, monotonic_ns, Sweeper, Timeouts};
use kestrel_agent::network::datapath::{self, Datapath};
use kestrel_agent::network::Endpoint;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const SERVER2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const HOUR: Duration = Duration::from_secs(3600);

/// A node with two pods and the outside world behind its uplink. Pins go
/// when it drops; the namespaces (and every link in them) with it.
struct Cluster {
    pins: PathBuf,
    /// The node namespace's name, for `agent bpf status --netns`.
    node: String,
    dp: Option<Datapath>,
    pods: Vec<NetNs>,
    outside: NetNs,
    _names: Vec<Netns>,
}

impl Cluster {
    fn new(pod_limit: u32) -> Self {
        let node = Netns::new("cn").unwrap();
        let outside = Netns::new("co").unwrap();
        let (up, peer) = net::veth_between(&node, &outside, "cu").unwrap();
        let pins = PathBuf::from(format!("/sys/fs/bpf/{}", node.name()));
        let mut cluster = Self {
            pins: pins.clone(),
            node: node.name().to_string(),
            dp: None,
            pods: Vec::new(),
            outside: NetNs::open(outside.path()).unwrap(),
            _names: Vec::new(),
        };
        node.addr_up(&up, "192.168.77.1/24").unwrap();
        outside.addr_up(&peer, "192.168.77.2/24").unwrap();
        for cmd in [
            "ip addr add 198.51.100.10/32 dev lo",
            "ip addr add 198.51.100.11/32 dev lo",
        ] {
            outside.exec(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
        }
        for cmd in [
            "ip route add default via 192.168.77.2",
            "sysctl -qw net.ipv4.conf.all.forwarding=1",
        ] {
            node.exec(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
        }
        let mut eps: Vec<Endpoint> = Vec::new();
        for ip in [POD_A, POD_B] {
            let pod = Netns::new("cp").unwrap();
            eps.push(net::wire_pod(&node, &pod, ip).unwrap());
            cluster.pods.push(NetNs::open(pod.path()).unwrap());
            cluster._names.push(pod);
        }
        let object = kestrel_agent::ebpf::object(None).unwrap();
        let in_node = NetNs::open(node.path()).unwrap();
        let dp = in_node
            .run(|| -> Result<Datapath, kestrel_agent::ebpf::Error> {
                let mut dp = Datapath::load(&object, &pins)?;
                dp.configure(NODE, "10.244.0.0/16".parse().unwrap(), true)?;
                dp.configure_conntrack(pod_limit)?;
                dp.attach_uplink(&up)?;
                for ep in &eps {
                    dp.add_endpoint(ep.ip, ep)?;
                }
                Ok(dp)
            })
            .unwrap()
            .unwrap();
        cluster.dp = Some(dp);
        cluster._names.push(node);
        cluster._names.push(outside);
        cluster
    }

    fn pod(&self, ip: Ipv4Addr) -> &NetNs {
        &self.pods[if ip == POD_A { 0 } else { 1 }]
    }

    fn table(&self, name: &str) -> usize {
        conntrack::table_sizes(&self.pins)
            .unwrap()
            .into_iter()
            .find(|(t, _)| *t == name)
            .map(|(_, n)| n)
            .unwrap()
    }

    fn stat(&self, stat: Stat) -> u64 {
        datapath::read_stats(&self.pins)
            .unwrap()
            .into_iter()
            .find(|(n, _)| *n == stat.name())
            .map(|(_, n)| n)
            .unwrap()
    }

    fn held_by(&self, pod: Ipv4Addr) -> u64 {
        conntrack::pod_flows(&self.pins)
            .unwrap()
            .into_iter()
            .find(|(p, _)| *p == pod)
            .map(|(_, n)| n)
            .unwrap_or(0)
    }

    /// The node port a masqueraded flow from `pod`:`port` holds.
    fn nat_port(&self, pod: Ipv4Addr, port: u16) -> Option<u16> {
        datapath::read_nat(&self.pins)
            .unwrap()
            .into_iter()
            .find(|f| f.pod == pod && f.pod_port == port)
            .map(|f| f.node_port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The programs' links and maps live in the pins.
        self.dp.take();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// A server thread in the outside namespace, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// TCP on `addr`: answers one byte per byte; `once` closes after the
    /// first answer, otherwise echoes until the client closes.
    fn tcp(ns: &NetNs, addr: SocketAddr, once: bool) -> Self {
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        Self::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                // Long-lived connections stay idle while the rest of a
                // case runs; a client that vanished is still let go.
                let idle = if once { 1 } else { 120 };
                let _ = s.set_read_timeout(Some(Duration::from_secs(idle)));
                let mut serve = move || {
                    let mut b = [0u8; 64];
                    while let Ok(n @ 1..) = s.read(&mut b) {
                        if s.write_all(&b[..n]).is_err() || once {
                            break;
                        }
                    }
                };
                if once {
                    serve();
                } else {
                    std::thread::spawn(serve);
                }
            }
        })
    }

    /// UDP on `addr`: records who sent each datagram.
    fn udp(ns: &NetNs, addr: SocketAddr, heard: Arc<Mutex<Vec<SocketAddr>>>) -> Self {
        let sock = ns.run(|| UdpSocket::bind(addr)).unwrap().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Self::spawn(move |stop| {
            let mut b = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = sock.recv_from(&mut b) {
                    heard.lock().unwrap().push(from);
                }
            }
        })
    }

    fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Self {
            stop,
            thread: Some(std::thread::spawn(move || f(flag))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits (at most 10 s) for `cond`, which the datapath makes true
/// asynchronously (a frame is handled after `send` returns).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn timeouts(tcp_closing: Duration, udp: Duration) -> Timeouts {
    Timeouts {
        tcp_opening: HOUR,
        tcp_established: HOUR,
        tcp_closing,
        udp,
        icmp: HOUR,
    }
}

/// An established connection from a pod, echoing through masquerade.
fn echo(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back)?;
    Ok(back)
}

fn connect(ns: &NetNs, to: SocketAddr) -> TcpStream {
    let s = ns
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn ten_thousand_short_connections_leave_the_table_near_empty_after_the_timeout() {
    const CONNECTIONS: usize = 10_000;
    // The run holds every flow until the test sweeps: a limit above it.
    let c = Cluster::new(2 * CONNECTIONS as u32);
    // Closed flows keep their node port until the sweep, and a node port
    // is unique per remote address and port: spread over eight server
    // ports, the run holds about a quarter of each one's range.
    let short: Vec<SocketAddr> = (8100..8108)
        .map(|p| SocketAddr::from((SERVER, p)))
        .collect();
    let _short: Vec<Server> = short
        .iter()
        .map(|a| Server::tcp(&c.outside, *a, true))
        .collect();
    let long = SocketAddr::from((SERVER, 8081));
    let _long = Server::tcp(&c.outside, long, false);

    // A connection that stays open throughout: the sweep must keep it.
    let mut kept = connect(c.pod(POD_A), long);
    assert_eq!(echo(&mut kept, b"hello").unwrap(), b"hello");
    let kept_port = kept.local_addr().unwrap().port();

    let started = Instant::now();
    c.pod(POD_A)
        .run(|| {
            for i in 0..CONNECTIONS {
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "only {i} connections in 300 s"
                );
                let to = short[i % short.len()];
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                assert_eq!(echo(&mut s, b"x").unwrap(), b"x", "connection {i}");
                // The server closes after its answer; the client closes too.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            }
        })
        .unwrap();
    let tracked = c.table(abi::SNAT_OUT_MAP);
    assert!(
        tracked > CONNECTIONS * 9 / 10,
        "only {tracked} of {CONNECTIONS} connections were tracked"
    );
    assert!(c.held_by(POD_A) as usize >= tracked - 1);

    let closing = Duration::from_secs(600);
    let mut sweeper = Sweeper::new(&c.pins, timeouts(closing, HOUR));
    // Before the closing timeout nothing goes.
    assert_eq!(sweeper.sweep(monotonic_ns()).unwrap(), 0);
    // Past it (the sweep is told the time), every closed connection goes,
    // both directions; the open one's hour is far from over.
    let later = monotonic_ns() + closing.as_nanos() as u64 + 1_000_000_000;
    let removed = sweeper.sweep(later).expect("sweep");
    let (out, back) = (c.table(abi::SNAT_OUT_MAP), c.table(abi::SNAT_IN_MAP));
    assert!(
        out <= CONNECTIONS / 100 && back <= CONNECTIONS / 100,
        "{out} forward and {back} reply entries left of {tracked}"
    );
    assert!(removed as usize >= tracked - CONNECTIONS / 100);
    assert_eq!(
        c.stat(Stat::CtSwept),
        removed,
        "the sweep counts what it removed"
    );
    assert!(
        c.held_by(POD_A) as usize <= CONNECTIONS / 100,
        "the pod's flow count was given back"
    );

    // What an operator sees: the tables near empty, the sweep counted.
    let status = std::process::Command::new(harness::cluster::binary("agent"))
        .args(["bpf", "status", "--netns", &c.node, "--bpffs-dir"])
        .arg(&c.pins)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "agent bpf status: {text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
    };
    assert_eq!(line(abi::SNAT_OUT_MAP) as usize, out);
    assert_eq!(line(Stat::CtSwept.name()), removed);

    // The open connection kept its entry and its port, and still works.
    assert!(c.nat_port(POD_A, kept_port).is_some());
    assert_eq!(echo(&mut kept, b"still").unwrap(), b"still");
}

#[test]
fn a_long_lived_flow_survives_a_udp_flood_from_another_pod() {
    const LIMIT: u32 = 1000;
    // More new flows than the whole table holds.
    const FLOOD: u32 = abi::MAX_NAT_FLOWS + 4464;
    let c = Cluster::new(LIMIT);
    let long = SocketAddr::from((SERVER, 8081));
    let _long = Server::tcp(&c.outside, long, false);

    let mut a = connect(c.pod(POD_A), long);
    assert_eq!(echo(&mut a, b"ping").unwrap(), b"ping");
    let a_port = a.local_addr().unwrap().port();
    let node_port = c.nat_port(POD_A, a_port).expect("pod a's flow is tracked");

    // Pod b sends one datagram to each of FLOOD remote ports.
    let sent = c
        .pod(POD_B)
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut sent = 0u32;
            for i in 0..FLOOD {
                let (ip, port) = match i {
                    0..65000 => (SERVER, 1 + i as u16),
                    _ => (SERVER2, 1 + (i - 65000) as u16),
                };
                if s.send_to(b"flood", (ip, port)).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
        .unwrap();
    assert!(sent > abi::MAX_NAT_FLOWS, "only {sent} datagrams sent");
    eventually("the flood is refused beyond pod b's limit", || {
        c.stat(Stat::CtPodLimit) >= u64::from(sent - LIMIT - 64)
    });
    let held = c.held_by(POD_B);
    assert!(
        held >= u64::from(LIMIT) && held <= u64::from(LIMIT) + 64,
        "pod b holds {held} flows with a limit of {LIMIT}"
    );

    // Pod a's connection kept its port and still works.
    assert_eq!(c.nat_port(POD_A, a_port), Some(node_port));
    assert_eq!(echo(&mut a, b"pong").unwrap(), b"pong");
}

#[test]
fn a_port_held_by_a_live_flow_is_never_handed_to_a_new_one() {
    let c = Cluster::new(0);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let remote = SocketAddr::from((SERVER, 9000));
    let _server = Server::udp(&c.outside, remote, heard.clone());

    // Live flows of another pod hold every NAT port towards the server.
    let other = u32::from_ne_bytes([10, 244, 1, 200]);
    let now = monotonic_ns();
    let pin = |name: &str| Map::HashMap(MapData::from_pin(c.pins.join(name)).unwrap());
    let mut out: HashMap<_, NatKey, SnatFlow> = HashMap::try_from(pin(abi::SNAT_OUT_MAP)).unwrap();
    let mut back: HashMap<_, NatKey, NatValue> = HashMap::try_from(pin(abi::SNAT_IN_MAP)).unwrap();
    let ports = abi::NAT_PORT_MIN..=abi::NAT_PORT_MIN + (abi::NAT_PORT_COUNT - 1);
    for (i, port) in ports.clone().enumerate() {
        let fwd = NatKey {
            src: other,
            dst: u32::from_ne_bytes(SERVER.octets()),
            sport: 1000 + i as u16,
            dport: 9000,
            proto: 17,
            pad: [0; 3],
        };
        let reply = NatKey {
            src: fwd.dst,
            dst: u32::from_ne_bytes(NODE.octets()),
            sport: 9000,
            dport: port,
            proto: 17,
            pad: [0; 3],
        };
        let ct = CtState {
            last_seen: now,
            flags: abi::CT_SEEN_FORWARD | abi::CT_SEEN_REPLY,
            owner: 0,
        };
        let flow = SnatFlow {
            addr: reply.dst,
            port,
            pad: 0,
            ct,
        };
        out.insert(fwd, flow, 0).unwrap();
        let to = NatValue {
            addr: other,
            port: fwd.sport,
            pad: 0,
        };
        back.insert(reply, to, 0).unwrap();
    }

    let send = || {
        c.pod(POD_B)
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:4242").unwrap();
                s.send_to(b"hello", remote).unwrap();
            })
            .unwrap()
    };
    // A new flow finds no port free: refused, not given a live flow's.
    send();
    eventually("the new flow is refused for want of a port", || {
        c.stat(Stat::SnatNoPort) == 1
    });
    assert!(c.nat_port(POD_B, 4242).is_none());
    for port in ports.clone() {
        let reply = NatKey {
            src: u32::from_ne_bytes(SERVER.octets()),
            dst: u32::from_ne_bytes(NODE.octets()),
            sport: 9000,
            dport: port,
            proto: 17,
            pad: [0; 3],
        };
        assert_eq!(
            back.get(&reply, 0).unwrap().addr,
            other,
            "the reply entry of port {port} still belongs to its flow"
        );
    }

    // Once those flows idle out, the sweep frees their ports, both
    // directions, and the new flow gets one.
    let mut sweeper = Sweeper::new(&c.pins, timeouts(HOUR, Duration::from_secs(1)));
    let removed = sweeper.sweep(now + 2_000_000_000).unwrap();
    assert_eq!(removed, u64::from(abi::NAT_PORT_COUNT));
    assert_eq!(c.table(abi::SNAT_IN_MAP), 0);
    send();
    eventually("the server hears the new flow", || {
        !heard.lock().unwrap().is_empty()
    });
    let from = heard.lock().unwrap()[0];
    assert_eq!(from.ip(), std::net::IpAddr::V4(NODE));
    assert!(ports.contains(&from.port()));
    assert_eq!(c.nat_port(POD_B, 4242), Some(from.port()));
}
