//! Map key and value layouts shared by the eBPF programs and the agent.
//!
//! This file is compiled into both sides (the agent includes it by path), so
//! a layout change can never reach only one of them. Everything here is
//! `#[repr(C)]`, plain old data and `no_std`.

/// Packet and byte totals kept per CPU by the counting classifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Name of the per-CPU array that holds one [`PacketCount`] at index 0.
pub const PACKET_COUNT_MAP: &str = "PACKET_COUNT";
/// Name of the TC classifier that counts every packet it sees.
pub const COUNT_PROGRAM: &str = "count_packets";

/// Where a pod on this node is reached: the host end of its veth and the two
/// MAC addresses a frame delivered to it must carry. Keyed in
/// [`ENDPOINTS_MAP`] by the pod's IPv4 address exactly as it appears in the
/// IP header (network byte order read as a native u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Interface index of the host end of the pod's veth.
    pub ifindex: u32,
    /// MAC of the pod's `eth0`: the destination of frames sent to the pod.
    pub pod_mac: [u8; 6],
    /// MAC of the host end: the source the pod expects from its gateway.
    pub host_mac: [u8; 6],
}

/// Local pods by IPv4 address; pinned so a restarted agent keeps them.
pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
/// Capacity of [`ENDPOINTS_MAP`]: far above the pods one node runs.
pub const MAX_ENDPOINTS: u32 = 16384;

/// Per-CPU counters of the routing programs' decisions, indexed by the
/// `STAT_*` constants; pinned with the endpoints.
pub const STATS_MAP: &str = "DATAPATH_STATS";
/// A frame from a pod delivered straight to another local pod.
pub const STAT_POD_TO_LOCAL: u32 = 0;
/// A frame from a pod sent towards another node after a FIB lookup.
pub const STAT_POD_TO_REMOTE: u32 = 1;
/// A frame from a pod left to the node's own stack (for the node itself,
/// or no route the FIB lookup could use).
pub const STAT_POD_TO_STACK: u32 = 2;
/// A frame arriving on the node's uplink delivered straight to a local pod.
pub const STAT_UPLINK_TO_LOCAL: u32 = 3;
/// Number of counters.
pub const STAT_COUNT: u32 = 12;
/// Counter names, in index order, for `agent bpf` output.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "pod_to_local_pod",
    "pod_to_remote_node",
    "pod_to_node_stack",
    "uplink_to_local_pod",
    "masqueraded_out",
    "masqueraded_replies_in",
    "masquerade_no_port",
    "node_port_to_local_pod",
    "node_port_to_remote_pod",
    "node_port_replies",
    "node_port_no_backend",
    "node_port_no_nat_port",
];

/// TC ingress program on the host end of every pod veth.
pub const FROM_POD_PROGRAM: &str = "from_pod";
/// TC ingress program on the node's uplink.
pub const FROM_UPLINK_PROGRAM: &str = "from_uplink";

// ---------------------------------------------------------------------------
// Service load balancing (`lb.rs`): cgroup sock_addr programs that send a
// connect or sendmsg to a ClusterIP straight to a backend, and translate the
// backend's address back to the ClusterIP where a process reads it.
//
// Addresses and ports are kept exactly as they appear in a `sockaddr_in`:
// network byte order, read as a native integer. The agent writes them the
// same way, so neither side ever swaps bytes on the hot path.

/// One row of the service table: slot 0 of a frontend is the service
/// itself, slots 1..=count hold its backends for new connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The ClusterIP.
    pub vip: u32,
    /// The service port.
    pub port: u16,
    /// 0 for the service, 1..=count for a backend slot.
    pub slot: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub pad: [u8; 3],
}

/// A service table row; which fields mean something depends on the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Slot > 0: the backend in this slot.
    pub backend_id: u32,
    /// The frontend's id (all slots): backends and affinity carry it.
    pub service_id: u32,
    /// Slot 0: how many slots follow. 0 means no backend: connects fail
    /// with ECONNREFUSED, as kube-proxy's reject rule makes them.
    pub count: u16,
    /// Slot 0: `SERVICE_F_*`.
    pub flags: u16,
    /// Slot 0: client affinity timeout in seconds (with
    /// [`SERVICE_F_AFFINITY`]).
    pub affinity_timeout: u32,
}

/// sessionAffinity: ClientIP. A client (a pod, or the node, told apart by
/// network namespace) keeps its backend for `affinity_timeout` seconds.
pub const SERVICE_F_AFFINITY: u16 = 1;

/// Where a backend is reached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub ip: u32,
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
    /// The frontend this backend serves: ids are never shared between
    /// frontends, so a stale reference is easy to spot.
    pub service_id: u32,
}

/// The backend takes new clients (it is ready). Without it the backend only
/// keeps the UDP sockets already bound to it while it terminates.
pub const BACKEND_F_ACTIVE: u8 = 1;

/// What a socket was translated to, to translate its peer back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseKey {
    /// The socket's cookie.
    pub cookie: u64,
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}

/// The frontend a socket really asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseValue {
    pub vip: u32,
    pub port: u16,
    pub pad: u16,
}

/// A socket sending datagrams to a frontend without connecting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub cookie: u64,
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// A client of a frontend with session affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    /// The client's network namespace cookie: every socket of a pod shares
    /// it, as every packet of a pod shares its IP.
    pub netns_cookie: u64,
    pub service_id: u32,
    pub pad: u32,
}

/// The backend an affine client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub pad: u32,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub last_used_ns: u64,
}

/// Frontends and backend slots, keyed by [`ServiceKey`].
pub const LB_SERVICES_MAP: &str = "LB_SERVICES";
/// Capacity of [`LB_SERVICES_MAP`]: slot 0 plus one row per ready backend.
pub const LB_MAX_SERVICE_ROWS: u32 = 131072;
/// Backends by id ([`Backend`]).
pub const LB_BACKENDS_MAP: &str = "LB_BACKENDS";
/// Capacity of [`LB_BACKENDS_MAP`].
pub const LB_MAX_BACKENDS: u32 = 65536;
/// Socket cookie and backend to frontend ([`ReverseKey`] to
/// [`ReverseValue`]), an LRU.
pub const LB_REVERSE_MAP: &str = "LB_REVERSE";
/// Capacity of [`LB_REVERSE_MAP`].
pub const LB_MAX_REVERSE: u32 = 65536;
/// The backend each unconnected UDP socket uses per frontend, an LRU.
pub const LB_FLOWS_MAP: &str = "LB_FLOWS";
/// Capacity of [`LB_FLOWS_MAP`].
pub const LB_MAX_FLOWS: u32 = 16384;
/// Client affinity ([`AffinityKey`] to [`AffinityValue`]), an LRU.
pub const LB_AFFINITY_MAP: &str = "LB_AFFINITY";
/// Capacity of [`LB_AFFINITY_MAP`].
pub const LB_MAX_AFFINITY: u32 = 16384;

/// Per-CPU counters of the load balancer, indexed by the `LB_STAT_*`
/// constants.
pub const LB_STATS_MAP: &str = "LB_STATS";
/// A connect or sendmsg sent to a backend.
pub const LB_STAT_TRANSLATED: u32 = 0;
/// A connect or sendmsg to a frontend with no backend, refused.
pub const LB_STAT_NO_BACKEND: u32 = 1;
/// A backend address shown to a process as the frontend's.
pub const LB_STAT_REVERSED: u32 = 2;
/// A client sent to its affine backend again.
pub const LB_STAT_AFFINITY_HIT: u32 = 3;
/// Number of counters.
pub const LB_STAT_COUNT: u32 = 4;
/// Counter names, in index order, for `agent bpf lb`.
pub const LB_STAT_NAMES: [&str; LB_STAT_COUNT as usize] =
    ["translated", "no_backend", "reversed", "affinity_hits"];

/// The cgroup sock_addr programs and where each attaches.
pub const LB_PROGRAMS: [&str; 4] = [
    "lb_connect4",
    "lb_sendmsg4",
    "lb_recvmsg4",
    "lb_getpeername4",
];

/// Node-wide settings of the routing programs, one entry in [`CONFIG_MAP`],
/// written by the agent at start. Addresses as in the IP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The node's address: the source of masqueraded traffic.
    pub node_ip: u32,
    /// The cluster's pod network and its mask: traffic within it is never
    /// masqueraded.
    pub cluster_net: u32,
    pub cluster_mask: u32,
    /// `CONFIG_*` bits.
    pub flags: u32,
}

/// Name of the single-entry array holding [`Config`].
pub const CONFIG_MAP: &str = "DATAPATH_CONFIG";
/// Masquerade pod traffic leaving the cluster to the node's address.
pub const CONFIG_MASQUERADE: u32 = 1;

/// One side of a masqueraded flow: (from, to) addresses and ports and the
/// IP protocol. For ICMP echo the identifier stands in for the local port
/// and the remote port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// The address and port a [`NatKey`] translates to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// Outgoing flows by (pod, remote) → the node address and port used.
pub const SNAT_OUT_MAP: &str = "SNAT_OUT";
/// Replies by (remote, node address and port) → the pod and its port.
pub const SNAT_IN_MAP: &str = "SNAT_IN";
/// Capacity of each conntrack map (least recently used entries go first).
pub const MAX_NAT_FLOWS: u32 = 65536;
/// Masqueraded ports come from this range, above Linux's default
/// ephemeral range, so they never collide with the node's own sockets.
pub const NAT_PORT_MIN: u16 = 61000;
pub const NAT_PORT_COUNT: u16 = 4536;

/// A frame leaving the cluster masqueraded to the node address.
pub const STAT_SNAT_OUT: u32 = 4;
/// A reply to a masqueraded flow translated back and delivered.
pub const STAT_SNAT_IN: u32 = 5;
/// A frame dropped because no masquerade port was free.
pub const STAT_SNAT_NO_PORT: u32 = 6;

// ---------------------------------------------------------------------------
// NodePort (`nodeport.rs`): a connection from outside the node to the node's
// address and a node port is sent to a backend by the uplink program, with
// its source rewritten to the node's when the backend is on another node
// (so the reply comes back through here to be translated).
//
// The node ports themselves are frontends of the service table whose vip is
// the node's address (`Config::node_ip`); processes in the agent's cgroup
// subtree reach them through the socket programs like any ClusterIP.

/// Where a node port connection goes, by the flow as it arrives on the
/// uplink ([`NatKey`] of client and node address and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortFlow {
    /// The backend the flow was sent to.
    pub backend_ip: u32,
    /// Host byte order, as in [`NatKey`].
    pub backend_port: u16,
    /// The node port the client's source became (towards a backend on
    /// another node); 0 when the backend is local and sees the client.
    pub nat_port: u16,
}

/// What a backend's reply is translated back to, keyed by the reply as it
/// reaches this node ([`NatKey`] from the backend to the client, or to the
/// node address and `nat_port`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortReply {
    pub client_ip: u32,
    pub client_port: u16,
    /// The node port the client connected to: the reply's source port.
    pub node_port: u16,
}

/// Node port flows ([`NatKey`] to [`NodePortFlow`]), an LRU.
pub const NODEPORT_FLOWS_MAP: &str = "NODEPORT_FLOWS";
/// Their replies ([`NatKey`] to [`NodePortReply`]), an LRU.
pub const NODEPORT_REPLIES_MAP: &str = "NODEPORT_REPLIES";
/// A frame for a node port sent to a backend on this node.
pub const STAT_NODEPORT_LOCAL: u32 = 7;
/// A frame for a node port sent to a backend on another node.
pub const STAT_NODEPORT_REMOTE: u32 = 8;
/// A backend's reply translated back to the node port and forwarded.
pub const STAT_NODEPORT_REPLY: u32 = 9;
/// A frame for a node port without a backend, left to the node's stack
/// (which refuses it: nothing listens there).
pub const STAT_NODEPORT_NO_BACKEND: u32 = 10;
/// A new flow to a remote backend dropped: no free port for its source.
pub const STAT_NODEPORT_NO_PORT: u32 = 11;
