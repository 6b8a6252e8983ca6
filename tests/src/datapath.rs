//! The agent's eBPF programs run by `BPF_PROG_TEST_RUN` on crafted frames:
//! the object loaded in a namespace of its own with its maps pinned, the
//! addresses of the node and its neighbours, and frames built and read back
//! with their checksums recomputed here. The `ebpf_datapath` tests check
//! the programs' decisions on it; `bench-ebpf` times them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::net::Netns;
use kestrel_agent::ebpf::abi::{
    self, Backend, Config, Endpoint, NatKey, ServiceKey, ServiceValue, Stat, Tunnel,
};
use kestrel_agent::ebpf::aya::maps::{Array, HashMap, PerCpuArray};
use kestrel_agent::ebpf::aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use kestrel_agent::ebpf::aya::Ebpf;
use kestrel_agent::ebpf::{self, MapPins};
use kestrel_agent::netns::NetNs;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// MAC of 192.168.50.2, the next hop towards other nodes' pods.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x02];
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 9);
pub const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const POD_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 5];
pub const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
const OTHER_POD_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 6];
pub const HOST_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const NODE_PORT: u16 = 30080;
/// A node reached through the tunnel ([`Bench::tunnel`]), its MAC on the
/// uplink's segment, its tunnel endpoint MAC, and one of its pods.
pub const TUNNEL_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 3);
pub const TUNNEL_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x03];
pub const TUNNEL_ENDPOINT_MAC: [u8; 6] = [0x0a, 0x58, 192, 168, 50, 3];
pub const TUNNEL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 8);
pub const TUNNEL_PORT: u16 = 8472;

pub fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The agent's object loaded in a namespace of its own: an uplink `up0`
/// holding the node's address, a route to the other node's pods through
/// a gateway whose MAC is known, a default route out, forwarding on.
/// Maps are pinned under a bpffs directory removed on drop.
pub struct Bench {
    ebpf: Ebpf,
    _pins: PinDir,
    netns: NetNs,
    pub uplink_mac: [u8; 6],
    ns: Netns,
}

impl Bench {
    // No Default: making one creates a namespace and loads programs, which
    // a `default()` would hide.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
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
        // Owned before anything is pinned in it: a load the verifier
        // refuses panics below, and must not leave the maps pinned.
        let pins = PinDir(PathBuf::from(format!("/sys/fs/bpf/{}", ns.name())));
        let object = ebpf::object(None).unwrap();
        let mut ebpf = ebpf::load(&object, MapPins::Dir(&pins.0)).unwrap();
        for name in [
            abi::FROM_POD_PROGRAM,
            abi::FROM_UPLINK_PROGRAM,
            abi::COUNT_PROGRAM,
        ] {
            ebpf::program::<SchedClassifier>(&mut ebpf, name).unwrap();
        }
        let netns = NetNs::open(ns.path()).unwrap();
        let mut bench = Self {
            ebpf,
            _pins: pins,
            netns,
            uplink_mac,
            ns,
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

    pub fn endpoint(&mut self, ip: Ipv4Addr, ifindex: u32, pod_mac: [u8; 6]) {
        let mut eps: HashMap<_, u32, Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(abi::ENDPOINTS_MAP).unwrap()).unwrap();
        let ep = Endpoint {
            ifindex,
            pod_mac,
            host_mac: HOST_MAC,
        };
        eps.insert(key(ip), ep, 0).unwrap();
    }

    /// A VXLAN device `kvx0` as the agent makes it (`--tunnel vxlan`), a
    /// route to [`TUNNEL_NODE`]'s pods through it with that node's tunnel
    /// endpoint MAC, the node itself on the uplink's segment, and the
    /// tunnel written for the programs. The tunnel and the device's MAC are
    /// returned.
    pub fn tunnel(&mut self) -> (Tunnel, [u8; 6]) {
        let node_mac = format_mac(&TUNNEL_NODE_MAC);
        let endpoint_mac = format_mac(&TUNNEL_ENDPOINT_MAC);
        for cmd in [
            "ip link add kvx0 type vxlan id 1 dstport 8472 local 192.168.50.1 dev up0 nolearning noudpcsum",
            "ip link set kvx0 up",
            "ip route add 10.244.3.0/24 via 10.244.3.0 dev kvx0 onlink",
            &format!("ip neigh replace 10.244.3.0 lladdr {endpoint_mac} dev kvx0 nud permanent"),
            &format!("ip neigh replace 192.168.50.3 lladdr {node_mac} dev up0 nud permanent"),
            "sysctl -qw net.ipv4.conf.kvx0.forwarding=1",
        ] {
            self.ns.exec(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
        }
        let index = self
            .ns
            .exec(&["cat", "/sys/class/net/kvx0/ifindex"])
            .unwrap();
        let mac = self
            .ns
            .exec(&["cat", "/sys/class/net/kvx0/address"])
            .unwrap();
        let tunnel = Tunnel {
            ifindex: index.trim().parse().unwrap(),
            port: TUNNEL_PORT.to_be(),
            pad: 0,
            vni: 1,
        };
        self.set_tunnel(tunnel);
        (tunnel, parse_mac(mac.trim()))
    }

    /// Writes `t` as the node's tunnel (all zero: none).
    pub fn set_tunnel(&mut self, t: Tunnel) {
        Array::<_, Tunnel>::try_from(self.ebpf.map_mut(abi::TUNNEL_MAP).unwrap())
            .unwrap()
            .set(0, t, 0)
            .unwrap();
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) {
        let mut eps: HashMap<_, u32, Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(abi::ENDPOINTS_MAP).unwrap()).unwrap();
        eps.remove(&key(ip)).unwrap();
    }

    /// A TCP node port frontend on the node's address with one backend.
    pub fn node_port(&mut self, backend: Ipv4Addr, port: u16) {
        self.node_port_for(TCP, backend, port);
    }

    /// A node port frontend for `proto` on the node's address with one
    /// backend.
    pub fn node_port_for(&mut self, proto: u8, backend: Ipv4Addr, port: u16) {
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
    pub fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
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

    /// Runs `program` `runs` times, each on a fresh copy of `frame` (one
    /// `BPF_PROG_TEST_RUN` each, so that no run sees what the one before
    /// rewrote): the verdicts it reached, with how often, and the mean
    /// time of one run as the kernel measured it.
    pub fn time(&self, program: &str, frame: &[u8], runs: u32) -> (Vec<(u32, u32)>, Duration) {
        let prog: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        self.netns
            .run(|| {
                let mut verdicts: Vec<(u32, u32)> = Vec::new();
                let mut total = Duration::ZERO;
                for _ in 0..runs {
                    let opts = TestRunOptions {
                        data_in: Some(frame),
                        ..Default::default()
                    };
                    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
                    total += r.duration;
                    match verdicts.iter_mut().find(|(v, _)| *v == r.return_value) {
                        Some((_, n)) => *n += 1,
                        None => verdicts.push((r.return_value, 1)),
                    }
                }
                (verdicts, total / runs.max(1))
            })
            .unwrap()
    }

    /// How many BPF instructions `program` is after the verifier (what
    /// `bpftool prog` calls xlated), if the kernel says.
    pub fn instructions(&self, program: &str) -> Option<u32> {
        let prog: &SchedClassifier = self.ebpf.program(program)?.try_into().ok()?;
        Some(prog.info().ok()?.size_translated()? / 8)
    }

    pub fn stat(&self, stat: Stat) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(abi::STATS_MAP).unwrap()).unwrap();
        map.get(&stat.index(), 0).unwrap().iter().sum()
    }

    pub fn nat_out(&self) -> Vec<(NatKey, u16)> {
        let map: HashMap<_, NatKey, abi::SnatFlow> =
            HashMap::try_from(self.ebpf.map(abi::SNAT_OUT_MAP).unwrap()).unwrap();
        map.iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k, v.port))
            .collect()
    }
}

/// A bpffs directory of pins, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(s.split(':')) {
        *m = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// The ones' complement sum of `data` folded to 16 bits.
pub fn fold(mut sum: u32, data: &[u8]) -> u16 {
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
pub fn frame(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
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
pub struct Seen {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ttl: u8,
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
}

pub fn seen(f: &[u8]) -> Seen {
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
