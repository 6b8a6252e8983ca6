//! NetworkPolicy in the datapath: pods' identities, each local pod's allow
//! rules and the connection tracking that lets replies and established
//! flows through without a rule walk.
//!
//! A new flow is allowed when the sender's egress and the receiver's
//! ingress both allow it. A direction that is not isolated allows all.
//! Rules live in an LPM trie keyed by (endpoint, peer, direction,
//! protocol, port), so a port range is a few prefixes and "any port" is
//! one; ipBlocks are matched in a second trie that maps an address to the
//! CIDR slots (peers [`CIDR_PEER_BASE`] + slot) containing it.

/// A local pod's policy state, in [`POLICY_ENDPOINTS_MAP`] by its IPv4
/// address (as in the IP header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEndpoint {
    /// The pod's slot: rules and counters are keyed by it.
    pub id: u32,
    /// `POLICY_ISOLATED_*` bits.
    pub flags: u32,
}

/// Only what the rules allow reaches the pod.
pub const POLICY_ISOLATED_INGRESS: u32 = 1;
/// Only what the rules allow leaves the pod.
pub const POLICY_ISOLATED_EGRESS: u32 = 2;

/// Traffic towards the pod.
pub const POLICY_INGRESS: u8 = 1;
/// Traffic from the pod.
pub const POLICY_EGRESS: u8 = 2;

/// The data of a rule's key in [`POLICY_RULES_MAP`]. Every field but
/// `port` is matched whole (80 bits of prefix); `port` (big-endian bytes)
/// by its first bits, so a prefix covers an aligned block of ports.
/// `proto` 0 with an 80-bit prefix allows every protocol and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyRuleKey {
    pub endpoint: u32,
    /// An identity, [`POLICY_PEER_ANY`] or a CIDR slot's peer.
    pub peer: u32,
    pub direction: u8,
    pub proto: u8,
    pub port: [u8; 2],
}

/// Prefix bits of a [`PolicyRuleKey`] before its port.
pub const POLICY_RULE_FIXED_BITS: u32 = 80;

/// The peer of a rule that allows every address.
pub const POLICY_PEER_ANY: u32 = 0;
/// Peer of CIDR slot `n` is `CIDR_PEER_BASE + n`.
pub const CIDR_PEER_BASE: u32 = 0xffff_ff00;
/// CIDR slots per endpoint and direction (bits of the trie's value).
pub const MAX_CIDR_SLOTS: u32 = 32;

/// The data of a key in [`POLICY_CIDRS_MAP`]: endpoint and direction
/// whole (64 bits), then the address by its prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyCidrKey {
    pub endpoint: u32,
    pub direction: u32,
    /// As in the IP header.
    pub addr: u32,
}

/// Prefix bits of a [`PolicyCidrKey`] before its address.
pub const POLICY_CIDR_FIXED_BITS: u32 = 64;

/// A flow the policy let through, in [`POLICY_CT_MAP`]: addresses as in
/// the header, ports in host byte order (0 for protocols without).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyFlow {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Verdicts counted per endpoint slot, summed over CPUs by the reader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    pub ingress_allowed: u64,
    pub ingress_denied: u64,
    pub egress_allowed: u64,
    pub egress_denied: u64,
}

crate::pod!(
    PolicyEndpoint,
    PolicyRuleKey,
    PolicyCidrKey,
    PolicyFlow,
    PolicyCounters
);

/// Pod addresses of the whole cluster → their identity.
pub const POLICY_IDENTITIES_MAP: &str = "POLICY_IDENTITIES";
/// Local pods by address → [`PolicyEndpoint`].
pub const POLICY_ENDPOINTS_MAP: &str = "POLICY_ENDPOINTS";
/// LPM trie of [`PolicyRuleKey`] → 1.
pub const POLICY_RULES_MAP: &str = "POLICY_RULES";
/// LPM trie of [`PolicyCidrKey`] → bitmask of CIDR slots.
pub const POLICY_CIDRS_MAP: &str = "POLICY_CIDRS";
/// Allowed flows, both directions (LRU).
pub const POLICY_CT_MAP: &str = "POLICY_CT";
/// Per-CPU [`PolicyCounters`] by endpoint slot.
pub const POLICY_COUNTERS_MAP: &str = "POLICY_COUNTERS";

/// Capacity of the identity map: pods of the cluster.
pub const MAX_POLICY_IDENTITIES: u32 = 65536;
/// Endpoint slots: pods one node runs.
pub const MAX_POLICY_ENDPOINTS: u32 = 1024;
/// Capacity of the rule trie.
pub const MAX_POLICY_RULES: u32 = 65536;
/// Capacity of the CIDR trie.
pub const MAX_POLICY_CIDRS: u32 = 16384;
/// Capacity of the flow table.
pub const MAX_POLICY_FLOWS: u32 = 65536;

/// The identity of an address no pod has.
pub const WORLD_IDENTITY: u32 = 2;

/// What [`POLICY_CT_MAP`] holds for each remembered flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyFlowState {
    /// `bpf_ktime_get_ns` of its last packet.
    pub seen_ns: u64,
    /// The [`POLICY_GENERATION_MAP`] value it was last allowed under.
    pub generation: u32,
    /// 1 for the reply direction of the flow that was checked.
    pub reply: u32,
}

crate::pod!(PolicyFlowState);

/// A one-entry array of u32: the policy generation, which the agent bumps
/// after each change it writes, so remembered flows are checked again.
pub const POLICY_GENERATION_MAP: &str = "POLICY_GENERATION";
