//! Masquerade: pod traffic leaving the cluster takes the node's address,
//! with conntrack in two LRU maps whose entries age out.

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
/// The flow's age and TCP state live in the outgoing entry (`SNAT_OUT`),
/// which both directions refresh; the reply entry only points back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub addr: u32,
    pub port: u16,
    /// `CT_*` bits.
    pub flags: u16,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the flow's last packet.
    pub last_seen: u64,
}

crate::pod!(NatKey, NatValue);

/// A reply was seen: a TCP flow is past its handshake.
pub const CT_SEEN_REPLY: u16 = 1;
/// A FIN or RST was seen in either direction: the flow is closing.
pub const CT_CLOSING: u16 = 2;

/// Lifetimes of conntrack entries, in seconds, close to what eBPF
/// datapaths upstream use; a zero in [`crate::Config`] means these.
pub const CT_TCP_SYN_SECS: u32 = 60;
pub const CT_TCP_ESTABLISHED_SECS: u32 = 21600;
pub const CT_TCP_CLOSING_SECS: u32 = 10;
pub const CT_OTHER_SECS: u32 = 60;
/// How many live masqueraded flows one pod may hold: a quarter of the
/// table, so no single pod can push others' flows out of the LRU.
pub const CT_MAX_FLOWS_PER_POD: u32 = MAX_NAT_FLOWS / 4;

/// How long an entry with `flags` of protocol `proto` lives after its last
/// packet, in seconds, given the configured lifetimes (zero: defaults).
pub fn ct_lifetime_secs(cfg: &crate::Config, proto: u8, flags: u16) -> u32 {
    let pick = |v: u32, d: u32| if v == 0 { d } else { v };
    if proto != 6 {
        pick(cfg.ct_other_secs, CT_OTHER_SECS)
    } else if flags & CT_CLOSING != 0 {
        pick(cfg.ct_tcp_closing_secs, CT_TCP_CLOSING_SECS)
    } else if flags & CT_SEEN_REPLY != 0 {
        pick(cfg.ct_tcp_established_secs, CT_TCP_ESTABLISHED_SECS)
    } else {
        pick(cfg.ct_tcp_syn_secs, CT_TCP_SYN_SECS)
    }
}

/// Whether an entry last seen at `last_seen` has expired at `now` (both
/// CLOCK_MONOTONIC nanoseconds).
pub fn ct_expired(cfg: &crate::Config, proto: u8, flags: u16, last_seen: u64, now: u64) -> bool {
    let life = u64::from(ct_lifetime_secs(cfg, proto, flags)) * 1_000_000_000;
    now.saturating_sub(last_seen) > life
}

/// Live masqueraded flows per source pod (address as in the IP header to
/// a count), kept by the programs and recounted by the agent's collector.
pub const NAT_POD_FLOWS_MAP: &str = "NAT_POD_FLOWS";

/// Outgoing flows by (pod, remote) → the node address and port used.
pub const SNAT_OUT_MAP: &str = "SNAT_OUT";
/// Replies by (remote, node address and port) → the pod and its port.
pub const SNAT_IN_MAP: &str = "SNAT_IN";
/// Flows someone outside the cluster started towards a pod, keyed as the
/// pod's replies are: those replies keep the pod's address.
pub const INBOUND_FLOWS_MAP: &str = "INBOUND_FLOWS";
/// Capacity of each conntrack map (least recently used entries go first).
pub const MAX_NAT_FLOWS: u32 = 65536;
/// Masqueraded ports come from this range, above Linux's default
/// ephemeral range, so they never collide with the node's own sockets.
pub const NAT_PORT_MIN: u16 = 61000;
pub const NAT_PORT_COUNT: u16 = 4536;
