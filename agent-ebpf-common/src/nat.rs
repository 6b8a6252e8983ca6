//! Masquerade: pod traffic leaving the cluster takes the node's address,
//! with conntrack in two hash maps the agent's sweep ages out.

/// One side of a masqueraded flow: (from, to) addresses and ports and the
/// IP protocol. Ports in host byte order. For ICMP echo the identifier
/// stands in for the local port and the remote port is 0.
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

/// The address and port (host byte order) a [`NatKey`] translates to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// A masqueraded flow in [`SNAT_OUT_MAP`]: the node address and port it
/// took and its conntrack state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatFlow {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
    pub ct: crate::CtState,
}

crate::pod!(NatKey, NatValue, SnatFlow);

/// Outgoing flows by (pod, remote) → [`SnatFlow`].
pub const SNAT_OUT_MAP: &str = "SNAT_OUT";
/// Replies by (remote, node address and port) → the pod and its port.
pub const SNAT_IN_MAP: &str = "SNAT_IN";
/// Flows someone outside the cluster started towards a pod, keyed as the
/// pod's replies are: those replies keep the pod's address. Values are
/// [`crate::CtState`].
pub const INBOUND_FLOWS_MAP: &str = "INBOUND_FLOWS";
/// Capacity of each conntrack map. They are plain hash maps, not LRUs: a
/// full LRU makes room by evicting whichever flow was idle longest, which
/// lets one pod's flood push out another pod's quiet but live connection
/// (and hand its port to someone else). A full hash map refuses the new
/// flow instead, the per-pod limit keeps any one pod far from full, and
/// the agent's sweep frees what ended.
pub const MAX_NAT_FLOWS: u32 = 65536;
/// Masqueraded ports come from this range, above Linux's default
/// ephemeral range, so they never collide with the node's own sockets.
pub const NAT_PORT_MIN: u16 = 61000;
pub const NAT_PORT_COUNT: u16 = 4536;
