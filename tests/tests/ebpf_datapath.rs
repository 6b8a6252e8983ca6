//! User story: the routing programs decide right on every kind of frame a
//! node meets. Each case loads the agent's object, puts its maps in the
//! state the case needs, hands one crafted frame to `from_pod` or
//! `from_uplink` with BPF_PROG_TEST_RUN inside a namespace of the test's
//! own, and checks the verdict, the rewritten headers and their checksums
//! (recomputed here from scratch).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use harness::net::Netns;
use kestrel_agent::ebpf::abi::{
    self, Backend, Config, Endpoint, NatKey, ServiceKey, ServiceValue, Stat,
};
use kestrel_agent::ebpf::aya::maps::{Array, HashMap, PerCpuArray};
use kestrel_agent::ebpf::aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use kestrel_agent::ebpf::aya::Ebpf;
use kestrel_agent::ebpf::{self, MapPins};
use kestrel_agent::netns::NetNs;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const TCP: u8 = 6;
const UDP: u8 = 17;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// MAC of 192.168.50.2, the next hop towards other nodes' pods.
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x02];
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 9);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const POD_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 5];
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const OTHER_POD_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 6];
const HOST_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NODE_PORT: u16 = 30080;

fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The agent's object loaded in a namespace of its own: an uplink `up0`
/// holding the node's address, a route to the other node's pods through
/// a gateway whose MAC is known, a default route out, forwarding on.
/// Maps are pinned under a bpffs directory removed on drop.
struct Bench {
    ebpf: Ebpf,
    pins: PathBuf,
    netns: NetNs,
    uplink_mac: [u8; 6],
    _ns: Netns,
}

impl Bench {
    fn new() -> Self {
        let ns = Netns::new("dp").unwrap();
        for cmd in [
            "ip link add up0 type veth peer name up1",
            "ip addr add 192.168.50.1/24 dev up0",
            "ip link set up0 up",
            "ip link set up1 up",
            "ip neigh replace 192.168.50.2 lladdr 02:00:00:00:50:02 dev up0 nud permanent",
            "ip route add 10.244.2.0/24 via 192.168.50.2",
            "ip route add default via 192.168.50.254",
            "sysctl -qw net.ipv4.conf.all.forwarding=1",
        ] {
            ns.exec(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
        }
        let link = ns.exec(&["cat", "/sys/class/net/up0/address"]).unwrap();
        let uplink_mac = parse_mac(link.trim());
        let pins = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
        let object = ebpf::object(None).unwrap();
        let mut ebpf = ebpf::load(&object, MapPins::Dir(&pins)).unwrap();
        for name in [abi::FROM_POD_PROGRAM, abi::FROM_UPLINK_PROGRAM] {
            ebpf::program::<SchedClassifier>(&mut ebpf, name).unwrap();
        }
        let netns = NetNs::open(ns.path()).unwrap();
        let mut bench = Self {
            ebpf,
            pins,
            netns,
            uplink_mac,
            _ns: ns,
        };
        let cfg = Config {
            node_ip: key(NODE),
            cluster_net: key(Ipv4Addr::new(10, 244, 0, 0)),
            cluster_mask: key(Ipv4Addr::new(255, 255, 0, 0)),
            flags: abi::CONFIG_MASQUERADE,
        };
        Array::<_, Config>::try_from(bench.ebpf.map_mut(abi::CONFIG_MAP).unwrap())
            .unwrap()
            .set(0, cfg, 0)
            .unwrap();
        // Test runs see the frame arrive on the namespace's loopback, so
        // the pods that send in these cases sit behind ifindex 1.
        bench.endpoint(POD, 1, POD_MAC);
        bench.endpoint(OTHER_POD, 1, OTHER_POD_MAC);
        bench
    }

    fn endpoint(&mut self, ip: Ipv4Addr, ifindex: u32, pod_mac: [u8; 6]) {
        let mut eps: HashMap<_, u32, Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(abi::ENDPOINTS_MAP).unwrap()).unwrap();
        let ep = Endpoint {
            ifindex,
            pod_mac,
            host_mac: HOST_MAC,
        };
        eps.insert(key(ip), ep, 0).unwrap();
    }

    fn remove_endpoint(&mut self, ip: Ipv4Addr) {
        let mut eps: HashMap<_, u32, Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(abi::ENDPOINTS_MAP).unwrap()).unwrap();
        eps.remove(&key(ip)).unwrap();
    }

    /// A TCP node port frontend on the node's address with one backend.
    fn node_port(&mut self, backend: Ipv4Addr, port: u16) {
        self.node_port_for(TCP, backend, port);
    }

    /// A node port frontend for `proto` on the node's address with one
    /// backend.
    fn node_port_for(&mut self, proto: u8, backend: Ipv4Addr, port: u16) {
        let fe = ServiceKey {
            vip: key(NODE),
            port: NODE_PORT.to_be(),
            slot: 0,
            proto,
            pad: [0; 3],
        };
        let mut backends: HashMap<_, u32, Backend> =
            HashMap::try_from(self.ebpf.map_mut(abi::LB_BACKENDS_MAP).unwrap()).unwrap();
        let b = Backend {
            ip: key(backend),
            port: port.to_be(),
            proto,
            flags: abi::BACKEND_F_ACTIVE,
            service_id: 1,
        };
        backends.insert(1, b, 0).unwrap();
        let mut services: HashMap<_, ServiceKey, ServiceValue> =
            HashMap::try_from(self.ebpf.map_mut(abi::LB_SERVICES_MAP).unwrap()).unwrap();
        let slot = ServiceValue {
            backend_id: 1,
            service_id: 1,
            ..Default::default()
        };
        services
            .insert(ServiceKey { slot: 1, ..fe }, slot, 0)
            .unwrap();
        let head = ServiceValue {
            service_id: 1,
            count: 1,
            ..Default::default()
        };
        services.insert(fe, head, 0).unwrap();
    }

    /// Runs `program` on `frame`: its verdict and the frame as it left.
    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 64];
        let (ret, len) = self
            .netns
            .run(|| {
                let opts = TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ..Default::default()
                };
                let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
                (r.return_value, r.data_size_out as usize)
            })
            .unwrap();
        out.truncate(len);
        (ret, out)
    }

    fn stat(&self, stat: Stat) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(abi::STATS_MAP).unwrap()).unwrap();
        map.get(&stat.index(), 0).unwrap().iter().sum()
    }

    fn nat_out(&self) -> Vec<(NatKey, u16)> {
        let map: HashMap<_, NatKey, abi::SnatFlow> =
            HashMap::try_from(self.ebpf.map(abi::SNAT_OUT_MAP).unwrap()).unwrap();
        map.iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k, v.port))
            .collect()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(s.split(':')) {
        *m = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// The ones' complement sum of `data` folded to 16 bits.
fn fold(mut sum: u32, data: &[u8]) -> u16 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    fold(0, &pseudo)
}

/// An Ethernet frame carrying an IPv4 TCP SYN or UDP datagram, with
/// every checksum right.
fn frame(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let payload = b"kestrel";
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&1u32.to_be_bytes()); // seq
        l4.extend_from_slice(&0u32.to_be_bytes()); // ack
        l4.extend_from_slice(&[5 << 4, 0x02]); // header length, SYN
        l4.extend_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let csum = l4_checksum(src.0.octets(), dst.0.octets(), proto, &l4);
    let at = if proto == TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());

    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let csum = fold(0, &ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&[0x02, 0xaa, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

/// What a test reads back from a frame, after checking its IPv4 and TCP
/// or UDP checksums from scratch.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    ttl: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
}

fn seen(f: &[u8]) -> Seen {
    let ip = &f[14..34];
    assert_eq!(fold(0, ip), 0, "IPv4 header checksum of {f:02x?}");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &f[34..];
    let at = if proto == TCP { 16 } else { 6 };
    let mut zeroed = l4.to_vec();
    zeroed[at..at + 2].copy_from_slice(&[0, 0]);
    let want = l4_checksum(src.octets(), dst.octets(), proto, &zeroed);
    assert_eq!(
        u16::from_be_bytes([l4[at], l4[at + 1]]),
        want,
        "L4 checksum of {f:02x?}"
    );
    Seen {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        ttl: ip[8],
        src: (src, u16::from_be_bytes([l4[0], l4[1]])),
        dst: (dst, u16::from_be_bytes([l4[2], l4[3]])),
    }
}

#[test]
fn from_pod_delivers_locally_routes_to_other_nodes_and_leaves_the_rest_to_the_stack() {
    let b = Bench::new();

    // Another pod of this node: straight to its veth peer, untouched, as
    // a bridge would pass it (the peer redirect marks it for the pod).
    let sent = frame(TCP, (POD, 40000), (OTHER_POD, 80));
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, sent, "same-node delivery writes nothing");
    assert_eq!(b.stat(Stat::PodToLocal), 1);

    // From another node to a pod of this one: the same, on the uplink.
    let sent = frame(TCP, (REMOTE_POD, 40000), (OTHER_POD, 80));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, sent);
    assert_eq!(b.stat(Stat::UplinkToLocal), 1);

    // Another node's pod: through the gateway the FIB names, unmasqueraded.
    let (ret, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40000), (REMOTE_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!(
        (s.dst_mac, s.src_mac, s.ttl),
        (GATEWAY_MAC, b.uplink_mac, 63)
    );
    assert_eq!((s.src, s.dst), ((POD, 40000), (REMOTE_POD, 53)));
    assert_eq!(b.stat(Stat::PodToRemote), 1);

    // The node itself: the stack's business, the frame untouched.
    let sent = frame(TCP, (POD, 40000), (NODE, 10250));
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, sent);
    assert_eq!(b.stat(Stat::PodToStack), 1);
    assert_eq!(b.stat(Stat::SnatOut), 0, "nothing was masqueraded");
}

#[test]
fn masquerade_rewrites_both_directions_with_valid_checksums() {
    let mut b = Bench::new();
    for proto in [TCP, UDP] {
        let (ret, out) = b.run(
            abi::FROM_POD_PROGRAM,
            &frame(proto, (POD, 40000), (OUTSIDE, 443)),
        );
        assert_eq!(ret, TC_ACT_REDIRECT, "proto {proto}");
        let s = seen(&out);
        assert_eq!(s.src.0, NODE, "the source is the node's address");
        let port = s.src.1;
        assert!(
            (abi::NAT_PORT_MIN..=abi::NAT_PORT_MIN + (abi::NAT_PORT_COUNT - 1)).contains(&port),
            "source port {port} outside the NAT range"
        );
        assert_eq!(s.dst, (OUTSIDE, 443));
        assert!(b
            .nat_out()
            .iter()
            .any(|(k, p)| k.src == key(POD) && k.proto == proto && *p == port));

        // The same flow again keeps its port.
        let (_, again) = b.run(
            abi::FROM_POD_PROGRAM,
            &frame(proto, (POD, 40000), (OUTSIDE, 443)),
        );
        assert_eq!(seen(&again).src, (NODE, port));

        // The reply, arriving on the uplink for the node, goes to the pod.
        let (ret, out) = b.run(
            abi::FROM_UPLINK_PROGRAM,
            &frame(proto, (OUTSIDE, 443), (NODE, port)),
        );
        assert_eq!(ret, TC_ACT_REDIRECT, "proto {proto}");
        let s = seen(&out);
        assert_eq!((s.src, s.dst), ((OUTSIDE, 443), (POD, 40000)));
        assert_eq!((s.dst_mac, s.src_mac), (POD_MAC, HOST_MAC));
    }
    assert_eq!(b.stat(Stat::SnatOut), 4);
    assert_eq!(b.stat(Stat::SnatIn), 2);

    // A node address and port nobody holds: left to the stack as is.
    let stray = frame(UDP, (OUTSIDE, 443), (NODE, 61001));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &stray);
    assert_eq!((ret, out), (TC_ACT_OK, stray));

    // A reply for a pod that is gone is dropped, not handed to the stack
    // half translated.
    let (_, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40001), (OUTSIDE, 443)),
    );
    let port = seen(&out).src.1;
    b.remove_endpoint(POD);
    let (ret, _) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(UDP, (OUTSIDE, 443), (NODE, port)),
    );
    assert_eq!(ret, TC_ACT_SHOT);
}

#[test]
fn node_port_to_a_local_backend_keeps_the_client_and_answers_from_the_node_port() {
    let mut b = Bench::new();
    b.node_port(POD, 8080);
    let (ret, out) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.dst), ((CLIENT, 5555), (POD, 8080)), "DNAT only");
    assert_eq!(s.dst_mac, POD_MAC);
    assert_eq!(b.stat(Stat::NodePortLocal), 1);

    // The backend's reply leaves from the node port, towards the client.
    let (ret, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(TCP, (POD, 8080), (CLIENT, 5555)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.dst), ((NODE, NODE_PORT), (CLIENT, 5555)));
    assert_eq!(b.stat(Stat::NodePortReply), 1);
    assert_eq!(
        b.stat(Stat::SnatOut),
        0,
        "a node port reply is not masqueraded"
    );
}

#[test]
fn node_port_to_a_remote_backend_is_translated_both_ways() {
    let mut b = Bench::new();
    b.node_port(REMOTE_POD, 8080);
    let (ret, out) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!(s.dst, (REMOTE_POD, 8080), "DNAT to the backend");
    assert_eq!(s.src.0, NODE, "SNAT to the node, so the reply comes back");
    let nat_port = s.src.1;
    assert!(nat_port >= abi::NAT_PORT_MIN, "source port {nat_port}");
    assert_eq!((s.dst_mac, s.src_mac), (GATEWAY_MAC, b.uplink_mac));
    assert_eq!(b.stat(Stat::NodePortRemote), 1);

    // The backend's reply reaches the node and goes back to the client
    // from the node port.
    let (ret, out) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (REMOTE_POD, 8080), (NODE, nat_port)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.dst), ((NODE, NODE_PORT), (CLIENT, 5555)));
    assert_eq!(b.stat(Stat::NodePortReply), 1);
}

#[test]
fn from_pod_drops_frames_whose_source_is_not_the_pods_own() {
    let mut b = Bench::new();
    // An address no pod of this node holds.
    let stray = Ipv4Addr::new(10, 244, 1, 99);
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (stray, 40000), (OTHER_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_SHOT);
    // A neighbour's address, sent from a veth that is not the neighbour's.
    let neighbour = Ipv4Addr::new(10, 244, 1, 7);
    b.endpoint(neighbour, 4242, [0x0a, 0x58, 10, 244, 1, 7]);
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (neighbour, 40000), (OTHER_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(b.stat(Stat::PodSpoofed), 2);
    assert_eq!(b.stat(Stat::PodToLocal), 0, "nothing spoofed got through");

    // The pod's own traffic still flows.
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40000), (OTHER_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
}

/// Sends three UDP datagrams from `src` to `dst`:9000 inside `ns`.
fn send_udp(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr) {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{src}', 0))\nfor _ in range(3): s.sendto(b'hello', ('{dst}', 9000))\n"
    );
    ns.exec(&["python3", "-c", &script]).unwrap();
}

/// A pod that gives itself a second address and sends from it is not
/// heard by the other pod; what it sends from its own address is.
#[test]
fn a_pod_cannot_send_from_an_address_that_is_not_its_own() {
    use kestrel_agent::network::datapath::{self, Datapath};
    let node = Netns::new("nd").unwrap();
    let a = Netns::new("pa").unwrap();
    let b = Netns::new("pb").unwrap();
    let a_ip = Ipv4Addr::new(10, 244, 1, 5);
    let b_ip = Ipv4Addr::new(10, 244, 1, 6);
    let a_ep = harness::net::wire_pod(&node, &a, a_ip).unwrap();
    let b_ep = harness::net::wire_pod(&node, &b, b_ip).unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/{}", node.name()));
    struct RemovePins(PathBuf);
    impl Drop for RemovePins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemovePins(pins.clone());
    let object = ebpf::object(None).unwrap();
    let in_node = NetNs::open(node.path()).unwrap();
    let dp = in_node
        .run(|| -> Result<Datapath, kestrel_agent::ebpf::Error> {
            let mut dp = Datapath::load(&object, &pins)?;
            dp.add_endpoint(a_ip, &a_ep)?;
            dp.add_endpoint(b_ip, &b_ep)?;
            Ok(dp)
        })
        .unwrap()
        .unwrap();

    // Pod a takes a second address in its own namespace.
    let spoofed = Ipv4Addr::new(10, 244, 1, 99);
    a.exec(&["ip", "addr", "add", "10.244.1.99/32", "dev", "eth0"])
        .unwrap();

    let listener = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                    s.bind(('0.0.0.0', 9000))\ns.settimeout(3)\nwhile True:\n    \
                    try:\n        data, peer = s.recvfrom(100)\n    \
                    except socket.timeout:\n        break\n    \
                    print(peer[0], flush=True)\n";
    let heard = b
        .command(&["python3", "-c", listener])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    send_udp(&a, a_ip, b_ip);
    send_udp(&a, spoofed, b_ip);
    let out = heard.wait_with_output().unwrap();
    let heard = String::from_utf8_lossy(&out.stdout);
    let from: Vec<&str> = heard.lines().collect();
    assert!(
        from.contains(&a_ip.to_string().as_str()),
        "b did not hear a's own address: {from:?}"
    );
    assert!(
        !from.contains(&spoofed.to_string().as_str()),
        "b heard the spoofed address: {from:?}"
    );
    let stats = datapath::read_stats(&pins).unwrap();
    let dropped = stats
        .iter()
        .find(|(name, _)| *name == Stat::PodSpoofed.name())
        .map(|(_, n)| *n);
    assert_eq!(dropped, Some(3), "{stats:?}");
    drop(dp);
}

/// A "fragmentation needed" (next-hop MTU 1280) that `from` sends to the
/// node about `quoted`, a frame as it left the node: its IP header and the
/// first 8 bytes after it, as routers quote.
fn frag_needed(from: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    icmp_about(from, NODE, 4, quoted)
}

/// An ICMP destination unreachable with `code` from `from` to `to` about
/// `quoted`.
fn icmp_about(from: Ipv4Addr, to: Ipv4Addr, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&1280u16.to_be_bytes());
    icmp.extend_from_slice(&quoted[14..14 + 20 + 8]);
    let csum = fold(0, &icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x56, 0x78, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let csum = fold(0, &ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = quoted[..14].to_vec();
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An ICMP error as a test reads it back, after checking its outer IPv4,
/// ICMP and quoted IPv4 checksums from scratch.
struct IcmpError {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// The quoted packet's source and destination, with their ports.
    quoted: ((Ipv4Addr, u16), (Ipv4Addr, u16)),
}

fn icmp_error(f: &[u8]) -> IcmpError {
    let ip = &f[14..34];
    assert_eq!(fold(0, ip), 0, "outer IPv4 checksum of {f:02x?}");
    assert_eq!(ip[9], 1, "not ICMP: {f:02x?}");
    assert_eq!(fold(0, &f[34..]), 0, "ICMP checksum of {f:02x?}");
    let q = &f[42..];
    assert_eq!(fold(0, &q[..20]), 0, "quoted IPv4 checksum of {f:02x?}");
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
    IcmpError {
        src: addr(&ip[12..16]),
        dst: addr(&ip[16..20]),
        quoted: ((addr(&q[12..16]), port(20)), (addr(&q[16..20]), port(22))),
    }
}

#[test]
fn an_icmp_error_about_a_node_port_reply_reaches_the_local_backend() {
    let mut b = Bench::new();
    b.node_port(POD, 8080);
    let (ret, _) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);

    // A router on the client's side refuses the backend's reply, which
    // left from the node port.
    let router = Ipv4Addr::new(192, 168, 50, 254);
    let reply = frame(TCP, (NODE, NODE_PORT), (CLIENT, 5555));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frag_needed(router, &reply));
    assert_eq!(ret, TC_ACT_REDIRECT, "delivered to the backend");
    assert_eq!(out[..6], POD_MAC);
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (router, POD));
    assert_eq!(
        e.quoted,
        ((POD, 8080), (CLIENT, 5555)),
        "the quote is the reply as the backend sent it"
    );
    assert_eq!(b.stat(Stat::IcmpErrorIn), 1);

    // An error about a flow the node never saw stays the stack's.
    let stray = frag_needed(router, &frame(TCP, (NODE, NODE_PORT), (CLIENT, 6666)));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &stray);
    assert_eq!((ret, out), (TC_ACT_OK, stray));
}

#[test]
fn icmp_errors_about_a_node_port_flow_to_a_remote_backend_reach_both_ends() {
    let mut b = Bench::new();
    b.node_port(REMOTE_POD, 8080);
    let (ret, forwarded) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let nat_port = seen(&forwarded).src.1;

    // The backend's side refuses the frame the node forwarded: the client
    // hears it from the node, about the frame it sent.
    let gateway = Ipv4Addr::new(192, 168, 50, 2);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frag_needed(gateway, &forwarded));
    assert_eq!(ret, TC_ACT_REDIRECT, "forwarded to the client");
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (NODE, CLIENT));
    assert_eq!(e.quoted, ((CLIENT, 5555), (NODE, NODE_PORT)));
    assert_eq!(b.stat(Stat::NodePortIcmpError), 1);

    // The client's side refuses the backend's reply as the node sent it on:
    // the backend's node hears it from the node, about the reply the
    // backend sent.
    let router = Ipv4Addr::new(192, 168, 50, 254);
    let reply = frame(TCP, (NODE, NODE_PORT), (CLIENT, 5555));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frag_needed(router, &reply));
    assert_eq!(ret, TC_ACT_REDIRECT, "forwarded to the backend's node");
    assert_eq!(out[..6], GATEWAY_MAC);
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (NODE, REMOTE_POD));
    assert_eq!(e.quoted, ((REMOTE_POD, 8080), (NODE, nat_port)));
    assert_eq!(b.stat(Stat::NodePortIcmpError), 2);
    assert_eq!(b.stat(Stat::IcmpErrorIn), 0, "nothing went to a local pod");

    // An error about another client's flow, which the node never saw,
    // stays the stack's.
    let stray = frame(TCP, (NODE, nat_port), (REMOTE_POD, 8081));
    let stray = frag_needed(gateway, &stray);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &stray);
    assert_eq!((ret, out), (TC_ACT_OK, stray));
}

#[test]
fn a_local_backends_port_unreachable_reaches_the_node_ports_client() {
    let mut b = Bench::new();
    b.node_port_for(UDP, POD, 8080);
    let (ret, delivered) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(UDP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);

    // Nothing listens on the backend's port: its kernel refuses the
    // datagram it was handed, which the client sent to the node port.
    let (ret, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &icmp_about(POD, CLIENT, 3, &delivered),
    );
    assert_eq!(ret, TC_ACT_REDIRECT, "forwarded to the client");
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (NODE, CLIENT));
    assert_eq!(e.quoted, ((CLIENT, 5555), (NODE, NODE_PORT)));
    assert_eq!(b.stat(Stat::NodePortIcmpError), 1);

    // A pod cannot speak of a frame it was not sent.
    let other = frame(UDP, (CLIENT, 5555), (OTHER_POD, 8080));
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &icmp_about(POD, CLIENT, 3, &other));
    assert_eq!(icmp_error(&out).src, POD, "left untranslated");
    assert_eq!(b.stat(Stat::NodePortIcmpError), 1);
}

#[test]
fn a_new_connection_on_a_closed_node_port_flows_ports_picks_its_backend_again() {
    let mut b = Bench::new();
    b.node_port(REMOTE_POD, 8080);
    let syn = frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT));
    let (_, out) = b.run(abi::FROM_UPLINK_PROGRAM, &syn);
    assert_eq!(seen(&out).dst, (REMOTE_POD, 8080));
    // The client resets the connection; the node port now has only a
    // backend on this node (externalTrafficPolicy turned Local, say).
    let mut rst = syn.clone();
    rst[14 + 20 + 13] = 0x14;
    b.run(abi::FROM_UPLINK_PROGRAM, &rst);
    b.node_port(POD, 8080);
    // A retransmitted segment of the old connection would keep its backend;
    // a new connection from the same port picks again.
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &syn);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(
        seen(&out).dst,
        (POD, 8080),
        "the new connection meets the current backend"
    );
}
