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
pub const STAT_COUNT: u32 = 4;
/// Counter names, in index order, for `agent bpf` output.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "pod_to_local_pod",
    "pod_to_remote_node",
    "pod_to_node_stack",
    "uplink_to_local_pod",
];

/// TC ingress program on the host end of every pod veth.
pub const FROM_POD_PROGRAM: &str = "from_pod";
/// TC ingress program on the node's uplink.
pub const FROM_UPLINK_PROGRAM: &str = "from_uplink";
