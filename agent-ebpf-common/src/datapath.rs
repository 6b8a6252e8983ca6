//! The pod datapath: `from_pod` on the host end of every pod veth and
//! `from_uplink` on the node's uplink, the local endpoints they deliver to,
//! the node-wide settings they read and the decisions they count.

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

/// The node's VXLAN tunnel (`--tunnel vxlan`), one entry in [`TUNNEL_MAP`]
/// written by the agent at start; all zero without a tunnel. A frame from a
/// pod that the FIB routes into `ifindex` is encapsulated by `from_pod`
/// itself, as the tunnel device would, and sent straight out of the
/// underlay's interface: the device's own transmit path (its forwarding
/// table, a second route lookup, the node's output hooks) is skipped.
/// Decapsulation stays with the device, whose socket owns the port.
/// A map of its own rather than fields of [`Config`], so that the shape of
/// a map an older agent pinned does not change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    /// Interface index of the tunnel device; 0: the device wraps what pods
    /// send (`--vxlan-encap device`).
    pub ifindex: u32,
    /// The tunnel's UDP port, in network byte order; 0: no tunnel.
    pub port: u16,
    pub pad: u16,
    /// The VXLAN network identifier every node uses.
    pub vni: u32,
}

crate::pod!(Endpoint, Config, Tunnel);

/// Name of the single-entry array holding [`Tunnel`].
pub const TUNNEL_MAP: &str = "DATAPATH_TUNNEL";

/// Local pods by IPv4 address; pinned so a restarted agent keeps them.
pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
/// Capacity of [`ENDPOINTS_MAP`]: far above the pods one node runs.
pub const MAX_ENDPOINTS: u32 = 16384;

/// Name of the single-entry array holding [`Config`].
pub const CONFIG_MAP: &str = "DATAPATH_CONFIG";
/// Masquerade pod traffic leaving the cluster to the node's address.
pub const CONFIG_MASQUERADE: u32 = 1;

/// TC ingress program on the host end of every pod veth.
pub const FROM_POD_PROGRAM: &str = "from_pod";
/// TC ingress program on the node's uplink.
pub const FROM_UPLINK_PROGRAM: &str = "from_uplink";

/// Per-CPU counters of the routing programs' decisions, indexed by
/// [`Stat`]; pinned with the endpoints.
pub const STATS_MAP: &str = "DATAPATH_STATS";
/// Capacity of [`STATS_MAP`]: room beyond [`Stat::ALL`], so a new counter
/// does not change the shape of a map an older agent pinned.
pub const STATS_CAPACITY: u32 = 32;

crate::stats! {
    /// What the routing programs did with a frame.
    pub enum Stat {
        /// A frame from a pod delivered straight to another local pod.
        PodToLocal = "pod_to_local_pod",
        /// A frame from a pod sent towards another node after a FIB lookup.
        PodToRemote = "pod_to_remote_node",
        /// A frame from a pod left to the node's own stack (for the node
        /// itself, or no route the FIB lookup could use).
        PodToStack = "pod_to_node_stack",
        /// A frame arriving on the node's uplink delivered straight to a
        /// local pod.
        UplinkToLocal = "uplink_to_local_pod",
        /// A frame leaving the cluster masqueraded to the node address.
        SnatOut = "masqueraded_out",
        /// A reply to a masqueraded flow translated back and delivered.
        SnatIn = "masqueraded_replies_in",
        /// A frame dropped because no masquerade port was free.
        SnatNoPort = "masquerade_no_port",
        /// A frame for a node port sent to a backend on this node.
        NodePortLocal = "node_port_to_local_pod",
        /// A frame for a node port sent to a backend on another node.
        NodePortRemote = "node_port_to_remote_pod",
        /// A backend's reply translated back to the node port and forwarded.
        NodePortReply = "node_port_replies",
        /// A frame for a node port without a backend, left to the node's
        /// stack (which refuses it: nothing listens there).
        NodePortNoBackend = "node_port_no_backend",
        /// A new flow to a remote backend dropped: no free port for its
        /// source.
        NodePortNoPort = "node_port_no_nat_port",
        /// A frame from a pod dropped because its IPv4 source is not the
        /// pod's own address.
        PodSpoofed = "pod_source_spoofed",
        /// A frame dropped because a NetworkPolicy does not allow its flow.
        PolicyDenied = "policy_denied",
        /// A new masqueraded flow dropped: its pod holds as many flows as
        /// `--conntrack-pod-limit` allows.
        CtPodLimit = "conntrack_pod_limit",
        /// A new translated flow dropped: its conntrack map is full.
        CtFull = "conntrack_table_full",
        /// Conntrack flows the agent's sweep removed (both directions count
        /// once); written by the agent.
        CtSwept = "conntrack_swept",
        /// An ICMP error (destination unreachable, fragmentation needed,
        /// time exceeded) about a masqueraded flow or a local node port
        /// backend's reply, translated back and delivered to its pod.
        IcmpErrorIn = "icmp_errors_translated",
        /// An ICMP error about a node port flow translated and forwarded: to
        /// the client when it is about a frame on its way to the backend (or
        /// a local backend's own error), to a remote backend's node when it
        /// is about a reply on its way to the client.
        NodePortIcmpError = "node_port_icmp_errors_forwarded",
        /// A frame from a pod for another node's pod, encapsulated in VXLAN
        /// by the program and sent out of the underlay's interface.
        PodToTunnel = "pod_to_tunnel_encapsulated",
        /// A VXLAN frame for this node left to the tunnel device at once,
        /// without the node port and translation lookups.
        TunnelIn = "tunnel_frames_in",
    }
}

const _: () = assert!(Stat::ALL.len() as u32 <= STATS_CAPACITY);
