//! User story: the routing programs decide right on every kind of frame a
//! node meets. Each case loads the agent's object, puts its maps in the
//! state the case needs, hands one crafted frame to `from_pod` or
//! `from_uplink` with BPF_PROG_TEST_RUN inside a namespace of the test's
//! own, and checks the verdict, the rewritten headers and their checksums
//! (recomputed here from scratch).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use harness::net::Netns;
use kestrel_agent::ebpf::abi::NatValue;
use kestrel_agent::ebpf::abi::{
    self, Backend, Config, Endpoint, NatKey, ServiceKey, ServiceValue, Stat,
};
use kestrel_agent::ebpf::aya::maps::{Array, HashMap, MapData, PerCpuArray};
use kestrel_agent::ebpf::aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use kestrel_agent::ebpf::aya::Ebpf;
use kestrel_agent::ebpf::conntrack;
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
        let loaded = (|| {
            let mut ebpf = ebpf::load(&object, MapPins::Dir(&pins))?;
            for name in [abi::FROM_POD_PROGRAM, abi::FROM_UPLINK_PROGRAM] {
                ebpf::program::<SchedClassifier>(&mut ebpf, name)?;
            }
            Ok::<_, ebpf::Error>(ebpf)
        })();
        // Drop removes the pins only once the bench exists.
        let ebpf = loaded.unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&pins);
            panic!("loading the datapath: {e}")
        });
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
            ..Default::default()
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

    /// A node port frontend on the node's address with one backend.
    fn node_port(&mut self, backend: Ipv4Addr, port: u16) {
        let fe = ServiceKey {
            vip: key(NODE),
            port: NODE_PORT.to_be(),
            slot: 0,
            proto: TCP,
            pad: [0; 3],
        };
        let mut backends: HashMap<_, u32, Backend> =
            HashMap::try_from(self.ebpf.map_mut(abi::LB_BACKENDS_MAP).unwrap()).unwrap();
        let b = Backend {
            ip: key(backend),
            port: port.to_be(),
            proto: TCP,
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

    /// Changes the node-wide settings the programs read.
    fn configure(&mut self, change: impl FnOnce(&mut Config)) {
        let mut map: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(abi::CONFIG_MAP).unwrap()).unwrap();
        let mut cfg = map.get(&0, 0).unwrap();
        change(&mut cfg);
        map.set(0, cfg, 0).unwrap();
    }

    fn nat_map(&mut self, name: &str) -> HashMap<&mut MapData, NatKey, NatValue> {
        HashMap::try_from(self.ebpf.map_mut(name).unwrap()).unwrap()
    }

    /// The masquerade entry of the flow from `pod` to `remote`.
    fn nat_entry(&mut self, proto: u8, pod: (Ipv4Addr, u16), remote: (Ipv4Addr, u16)) -> NatValue {
        self.nat_map(abi::SNAT_OUT_MAP)
            .get(&out_key(proto, pod, remote), 0)
            .unwrap()
    }

    /// Makes the flow from `pod` to `remote` look `secs` seconds idle.
    fn age(&mut self, proto: u8, pod: (Ipv4Addr, u16), remote: (Ipv4Addr, u16), secs: u64) {
        let k = out_key(proto, pod, remote);
        let mut map = self.nat_map(abi::SNAT_OUT_MAP);
        let mut v = map.get(&k, 0).unwrap();
        v.last_seen = conntrack::monotonic_ns() - secs * 1_000_000_000;
        map.insert(k, v, 0).unwrap();
    }

    /// Records a masqueraded flow from `pod` to `remote` on node port
    /// `port`, last seen `idle` seconds ago, both directions.
    fn put_flow(&mut self, pod: (Ipv4Addr, u16), remote: (Ipv4Addr, u16), port: u16, idle: u64) {
        let last_seen = conntrack::monotonic_ns() - idle * 1_000_000_000;
        let fwd = NatValue {
            addr: key(NODE),
            port,
            flags: 0,
            last_seen,
        };
        self.nat_map(abi::SNAT_OUT_MAP)
            .insert(out_key(UDP, pod, remote), fwd, 0)
            .unwrap();
        let back = NatValue {
            addr: key(pod.0),
            port: pod.1,
            flags: 0,
            last_seen,
        };
        self.nat_map(abi::SNAT_IN_MAP)
            .insert(out_key(UDP, remote, (NODE, port)), back, 0)
            .unwrap();
    }

    fn nat_out(&self) -> Vec<(NatKey, u16)> {
        let map: HashMap<_, NatKey, abi::NatValue> =
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

fn out_key(proto: u8, from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> NatKey {
    NatKey {
        src: key(from.0),
        dst: key(to.0),
        sport: from.1,
        dport: to.1,
        proto,
        pad: [0; 3],
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

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A TCP frame as [`frame`] makes it, with `flags` in place of SYN.
fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut f = frame(TCP, src, dst);
    let l4 = 14 + 20;
    f[l4 + 13] = flags;
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let csum = l4_checksum(src.0.octets(), dst.0.octets(), TCP, &f[l4..]);
    f[l4 + 16..l4 + 18].copy_from_slice(&csum.to_be_bytes());
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

    // Another pod of this node: straight to its veth peer, MACs for it.
    let (ret, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(TCP, (POD, 40000), (OTHER_POD, 80)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.dst_mac, s.src_mac, s.ttl), (OTHER_POD_MAC, HOST_MAC, 63));
    assert_eq!((s.src, s.dst), ((POD, 40000), (OTHER_POD, 80)));
    assert_eq!(b.stat(Stat::PodToLocal), 1);

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

/// A pod wired as the CNI plugin wires one: a veth with its host end in
/// the node namespace, a /32 address, a default route through the
/// link-local gateway whose MAC is a permanent neighbour entry.
fn wire_pod(node: &Netns, pod: &Netns, ip: Ipv4Addr) -> kestrel_agent::network::Endpoint {
    let host = harness::names::unique("h");
    node.exec(&[
        "ip",
        "link",
        "add",
        &host,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])
    .unwrap();
    node.exec(&["ip", "link", "set", &host, "up"]).unwrap();
    let host_mac = node
        .exec(&["cat", &format!("/sys/class/net/{host}/address")])
        .unwrap();
    let host_ifindex: u32 = node
        .exec(&["cat", &format!("/sys/class/net/{host}/ifindex")])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cidr = format!("{ip}/32");
    for cmd in [
        vec!["ip", "addr", "add", &cidr, "dev", "eth0"],
        vec!["ip", "link", "set", "eth0", "up"],
        vec![
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
        vec![
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ],
        vec![
            "ip",
            "neigh",
            "add",
            "169.254.1.1",
            "lladdr",
            host_mac.trim(),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ] {
        pod.exec(&cmd).unwrap();
    }
    let pod_mac = pod.exec(&["cat", "/sys/class/net/eth0/address"]).unwrap();
    kestrel_agent::network::Endpoint {
        ip,
        gateway: Ipv4Addr::new(169, 254, 1, 1),
        pod_mac: parse_mac(pod_mac.trim()),
        host_ifname: host,
        host_ifindex,
        host_mac: parse_mac(host_mac.trim()),
        mtu: 1500,
    }
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
    let a_ep = wire_pod(&node, &a, a_ip);
    let b_ep = wire_pod(&node, &b, b_ip);
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

/// Lifetimes short enough to tell apart: SYN-only 60 s, established an
/// hour, closing 10 s, UDP 30 s.
fn short_lifetimes(cfg: &mut Config) {
    cfg.ct_tcp_syn_secs = 60;
    cfg.ct_tcp_established_secs = 3600;
    cfg.ct_tcp_closing_secs = 10;
    cfg.ct_other_secs = 30;
}

#[test]
fn a_masquerade_entry_past_its_lifetime_is_replaced_and_its_old_port_forgotten() {
    let mut b = Bench::new();
    b.configure(short_lifetimes);
    let pod = (POD, 40000);
    let remote = (OUTSIDE, 443);
    // A flow on port 61999, idle for 20 s (UDP lives 30 s): still live.
    b.put_flow(pod, remote, 61999, 20);
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &frame(UDP, pod, remote));
    assert_eq!(seen(&out).src, (NODE, 61999), "a live flow keeps its port");

    // Idle for 31 s it is gone: the next datagram opens a flow afresh and
    // the old port no longer leads to the pod.
    b.age(UDP, pod, remote, 31);
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &frame(UDP, pod, remote));
    assert_eq!(ret, TC_ACT_REDIRECT);
    let port = seen(&out).src.1;
    assert_ne!(port, 61999, "the expired flow was replaced");
    let stale = frame(UDP, remote, (NODE, 61999));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &stale);
    assert_eq!((ret, out), (TC_ACT_OK, stale), "the old port is forgotten");
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frame(UDP, remote, (NODE, port)));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(seen(&out).dst, pod);
    let fresh = conntrack::monotonic_ns() - b.nat_entry(UDP, pod, remote).last_seen;
    assert!(fresh < 5_000_000_000, "last seen {fresh} ns ago");
}

#[test]
fn tcp_lifetime_follows_the_handshake_and_fin_or_rst_either_way_shortens_it() {
    let mut b = Bench::new();
    b.configure(short_lifetimes);
    let remote = (OUTSIDE, 443);

    // A SYN nobody answered lives 60 s.
    let pod = (POD, 40000);
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &tcp(pod, remote, 0x02));
    let port = seen(&out).src.1;
    b.age(TCP, pod, remote, 61);
    let late = tcp(remote, (NODE, port), 0x12);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &late);
    assert_eq!((ret, out), (TC_ACT_OK, late), "a SYN-only flow expired");

    // Answered, it lives past 60 s.
    let pod = (POD, 40001);
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &tcp(pod, remote, 0x02));
    let port = seen(&out).src.1;
    let (ret, _) = b.run(abi::FROM_UPLINK_PROGRAM, &tcp(remote, (NODE, port), 0x12));
    assert_eq!(ret, TC_ACT_REDIRECT);
    b.age(TCP, pod, remote, 600);
    let (ret, out) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &tcp(remote, (NODE, port), TCP_ACK),
    );
    assert_eq!(ret, TC_ACT_REDIRECT, "an established flow lives on");
    assert_eq!(seen(&out).dst, pod);

    // A FIN from the pod: 10 s left.
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &tcp(pod, remote, TCP_FIN | TCP_ACK));
    assert_eq!(seen(&out).src, (NODE, port));
    b.age(TCP, pod, remote, 11);
    let late = tcp(remote, (NODE, port), TCP_ACK);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &late);
    assert_eq!((ret, out), (TC_ACT_OK, late), "closed by the pod's FIN");

    // An RST from the remote end does the same.
    let pod = (POD, 40002);
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &tcp(pod, remote, 0x02));
    let port = seen(&out).src.1;
    let (ret, _) = b.run(abi::FROM_UPLINK_PROGRAM, &tcp(remote, (NODE, port), 0x12));
    assert_eq!(ret, TC_ACT_REDIRECT);
    let (ret, _) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &tcp(remote, (NODE, port), TCP_RST),
    );
    assert_eq!(ret, TC_ACT_REDIRECT, "the RST itself reaches the pod");
    b.age(TCP, pod, remote, 9);
    let (ret, _) = b.run(abi::FROM_POD_PROGRAM, &tcp(pod, remote, TCP_ACK));
    assert_eq!(ret, TC_ACT_REDIRECT, "still within the closing lifetime");
    b.age(TCP, pod, remote, 11);
    let late = tcp(remote, (NODE, port), TCP_ACK);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &late);
    assert_eq!((ret, out), (TC_ACT_OK, late), "closed by the remote's RST");
}

#[test]
fn a_pod_over_its_flow_limit_is_refused_while_another_pod_still_gets_flows() {
    let mut b = Bench::new();
    b.configure(|cfg| {
        short_lifetimes(cfg);
        cfg.ct_max_flows_per_pod = 3;
    });
    for sport in 40000..40003 {
        let (ret, _) = b.run(
            abi::FROM_POD_PROGRAM,
            &frame(UDP, (POD, sport), (OUTSIDE, 53)),
        );
        assert_eq!(ret, TC_ACT_REDIRECT, "flow from port {sport}");
    }
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40003), (OUTSIDE, 53)),
    );
    assert_eq!(ret, TC_ACT_SHOT, "a fourth flow is over the limit");
    assert_eq!(b.stat(Stat::SnatPodLimit), 1);
    // Its live flows go on, and the other pod is not affected.
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40000), (OUTSIDE, 53)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (OTHER_POD, 40000), (OUTSIDE, 53)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);

    // Once its flows expire, the collector removes both directions and
    // the pod may open flows again.
    for sport in 40000..40003 {
        b.age(UDP, (POD, sport), (OUTSIDE, 53), 31);
    }
    let swept = conntrack::sweep(&b.pins, conntrack::monotonic_ns()).unwrap();
    assert_eq!(swept.nat_flows, 3, "{swept:?}");
    let pods_left: Vec<u32> = b.nat_out().iter().map(|(k, _)| k.src).collect();
    assert_eq!(pods_left, vec![key(OTHER_POD)]);
    assert_eq!(b.nat_map(abi::SNAT_IN_MAP).keys().count(), 1);
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40003), (OUTSIDE, 53)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
}

#[test]
fn a_port_a_live_flow_holds_is_not_taken_by_a_new_flow() {
    let mut b = Bench::new();
    b.configure(short_lifetimes);
    let remote = (OUTSIDE, 443);
    // Learn the port the flow from POD:40000 hashes to, then hand that
    // port to a live flow of the other pod.
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &frame(UDP, (POD, 40000), remote));
    let port = seen(&out).src.1;
    b.nat_map(abi::SNAT_OUT_MAP)
        .remove(&out_key(UDP, (POD, 40000), remote))
        .unwrap();
    b.put_flow((OTHER_POD, 50000), remote, port, 5);

    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &frame(UDP, (POD, 40000), remote));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_ne!(seen(&out).src.1, port, "the live flow's port was taken");
    let (_, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frame(UDP, remote, (NODE, port)));
    assert_eq!(
        seen(&out).dst,
        (OTHER_POD, 50000),
        "the live flow still works"
    );

    // Once that flow expired, its port is free again.
    b.nat_map(abi::SNAT_OUT_MAP)
        .remove(&out_key(UDP, (POD, 40000), remote))
        .unwrap();
    b.age(UDP, (OTHER_POD, 50000), remote, 31);
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &frame(UDP, (POD, 40000), remote));
    assert_eq!(seen(&out).src.1, port);
}

#[test]
fn a_pinned_map_of_another_layout_is_replaced_on_load() {
    let ns = Netns::new("lay").unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
    struct RemovePins(PathBuf);
    impl Drop for RemovePins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemovePins(pins.clone());
    let object = ebpf::object(None).unwrap();
    // An older agent's SNAT_OUT, played by a map of another shape.
    {
        let old = ebpf::load(&object, MapPins::Private).unwrap();
        std::fs::create_dir_all(&pins).unwrap();
        old.map(abi::NAT_POD_FLOWS_MAP)
            .unwrap()
            .pin(pins.join(abi::SNAT_OUT_MAP))
            .unwrap();
    }
    let before =
        kestrel_agent::ebpf::aya::maps::MapInfo::from_pin(pins.join(abi::SNAT_OUT_MAP)).unwrap();
    assert_eq!(before.value_size(), 4);

    let mut ebpf = ebpf::load(&object, MapPins::Dir(&pins)).unwrap();
    for name in [abi::FROM_POD_PROGRAM, abi::FROM_UPLINK_PROGRAM] {
        ebpf::program::<SchedClassifier>(&mut ebpf, name).unwrap();
    }
    let after =
        kestrel_agent::ebpf::aya::maps::MapInfo::from_pin(pins.join(abi::SNAT_OUT_MAP)).unwrap();
    assert_eq!(
        (after.key_size(), after.value_size(), after.max_entries()),
        (
            std::mem::size_of::<NatKey>() as u32,
            std::mem::size_of::<NatValue>() as u32,
            abi::MAX_NAT_FLOWS
        )
    );
    assert_ne!(after.id(), before.id());
}

/// An ICMP "fragmentation needed" (MTU 1400) from `router` to `to`,
/// quoting the first 28 bytes past the Ethernet header of `quoted` (its
/// IP header and 8 bytes of UDP or ICMP), or 40 for TCP.
fn frag_needed(router: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let proto = quoted[14 + 9];
    let len = if proto == TCP { 40 } else { 28 };
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&1400u16.to_be_bytes());
    icmp.extend_from_slice(&quoted[14..14 + len]);
    let csum = fold(0, &icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&router.octets());
    ip.extend_from_slice(&to.octets());
    let csum = fold(0, &ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = quoted[..14].to_vec();
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// The outer destination and the quoted source of an ICMP error, after
/// checking the outer IP, ICMP, quoted IP and quoted L4 checksums (the
/// last over the bytes quoted, compared with what they were before).
fn icmp_error_seen(f: &[u8], before: &[u8]) -> (Ipv4Addr, (Ipv4Addr, u16)) {
    assert_eq!(fold(0, &f[14..34]), 0, "outer IP checksum");
    assert_eq!(fold(0, &f[34..]), 0, "ICMP checksum");
    let inner = &f[42..];
    assert_eq!(fold(0, &inner[..20]), 0, "quoted IP checksum");
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    let src = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
    let sport = u16::from_be_bytes([inner[20], inner[21]]);
    // The quoted L4 checksum covers the whole original segment; what can
    // be checked is that it changed exactly as the quoted fields did.
    let proto = inner[9];
    let at = match proto {
        TCP => 16,
        UDP => 6,
        _ => 2,
    };
    let old = &before[42..];
    let old_csum = u16::from_be_bytes([old[20 + at], old[21 + at]]);
    let new_csum = u16::from_be_bytes([inner[20 + at], inner[21 + at]]);
    let mut changed = Vec::new();
    if proto != 1 {
        changed.extend_from_slice(&old[12..16]);
    }
    changed.extend_from_slice(&old[20..22]);
    let mut now = Vec::new();
    if proto != 1 {
        now.extend_from_slice(&inner[12..16]);
    }
    now.extend_from_slice(&inner[20..22]);
    // csum' = ~(~csum - old + new): compare in ones' complement sums.
    let sum = |d: &[u8]| u32::from(!fold(0, d));
    let lhs = (u32::from(!new_csum) + sum(&changed)) % 0xffff;
    let rhs = (u32::from(!old_csum) + sum(&now)) % 0xffff;
    assert_eq!(lhs, rhs, "quoted L4 checksum");
    (dst, (src, sport))
}

#[test]
fn icmp_errors_about_translated_flows_reach_the_pod_translated_back() {
    let mut b = Bench::new();
    let router = Ipv4Addr::new(198, 51, 100, 1);
    for proto in [TCP, UDP] {
        let pod = (POD, 40000);
        let (_, out) = b.run(abi::FROM_POD_PROGRAM, &frame(proto, pod, (OUTSIDE, 443)));
        assert_eq!(seen(&out).src.0, NODE);
        let err = frag_needed(router, NODE, &out);
        let (ret, back) = b.run(abi::FROM_UPLINK_PROGRAM, &err);
        assert_eq!(ret, TC_ACT_REDIRECT, "proto {proto}");
        assert_eq!(&back[0..6], &POD_MAC);
        assert_eq!(icmp_error_seen(&back, &err), (POD, pod), "proto {proto}");
        assert_eq!(
            &back[34 + 4..34 + 8],
            &err[34 + 4..34 + 8],
            "the MTU is kept"
        );
    }
    assert_eq!(b.stat(Stat::IcmpErrorIn), 2);

    // The reply of a node port flow to a backend on this node.
    b.node_port(OTHER_POD, 8080);
    let (ret, _) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let (_, reply) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(TCP, (OTHER_POD, 8080), (CLIENT, 5555)),
    );
    assert_eq!(seen(&reply).src, (NODE, NODE_PORT));
    let err = frag_needed(router, NODE, &reply);
    let (ret, back) = b.run(abi::FROM_UPLINK_PROGRAM, &err);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(icmp_error_seen(&back, &err), (OTHER_POD, (OTHER_POD, 8080)));

    // An error quoting a port no flow holds is the node's own business.
    let stray = frame(UDP, (NODE, 61001), (OUTSIDE, 443));
    let err = frag_needed(router, NODE, &stray);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &err);
    assert_eq!((ret, out), (TC_ACT_OK, err));
}
