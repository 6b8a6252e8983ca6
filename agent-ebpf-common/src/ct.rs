//! Connection tracking of the translated flows (masquerade and node
//! ports): when each flow was last seen and how far a TCP flow got, so the
//! agent's sweep can remove flows that ended or went idle, and how many
//! flows each pod holds, so one pod cannot take the whole table.

/// State of one tracked flow, kept in its forward entry (`SNAT_OUT`,
/// `NODEPORT_FLOWS`, `INBOUND_FLOWS`) and updated by packets of both
/// directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtState {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet, refreshed
    /// at most every [`CT_REFRESH_NS`] unless the flags change.
    pub last_seen: u64,
    /// `CT_*` bits.
    pub flags: u32,
    /// The pod the flow is accounted to in [`CT_POD_OPENED_MAP`] (address as
    /// in the IP header); 0 when it is accounted to nobody.
    pub owner: u32,
}

/// A packet went from the side that started the flow.
pub const CT_SEEN_FORWARD: u32 = 1;
/// A packet came back from the other side.
pub const CT_SEEN_REPLY: u32 = 1 << 1;
/// A TCP segment without SYN was seen: the handshake is over once the
/// other side has answered too.
pub const CT_TCP_NON_SYN: u32 = 1 << 2;
/// FIN from the side that started the flow.
pub const CT_TCP_FIN_FORWARD: u32 = 1 << 3;
/// FIN from the other side.
pub const CT_TCP_FIN_REPLY: u32 = 1 << 4;
/// RST from either side.
pub const CT_TCP_RST: u32 = 1 << 5;

/// How often a busy flow's `last_seen` is written: one write a second
/// keeps the entries precise enough for timeouts of seconds without a
/// store on every packet.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// The stage of a flow the sweep picks its timeout by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtStage {
    /// TCP before both sides have spoken past the SYNs.
    TcpOpening,
    /// TCP with the handshake done and no close.
    TcpEstablished,
    /// TCP after FIN from both sides or a RST.
    TcpClosing,
    Udp,
    Icmp,
}

impl CtState {
    /// The stage of a flow of IP protocol `proto` in this state.
    pub fn stage(&self, proto: u8) -> CtStage {
        match proto {
            6 => {
                let both_fin = CT_TCP_FIN_FORWARD | CT_TCP_FIN_REPLY;
                if self.flags & CT_TCP_RST != 0 || self.flags & both_fin == both_fin {
                    CtStage::TcpClosing
                } else if self.flags & (CT_TCP_NON_SYN | CT_SEEN_REPLY)
                    == CT_TCP_NON_SYN | CT_SEEN_REPLY
                {
                    CtStage::TcpEstablished
                } else {
                    CtStage::TcpOpening
                }
            }
            1 => CtStage::Icmp,
            _ => CtStage::Udp,
        }
    }
}

/// The conntrack settings the programs read, one entry in
/// [`CT_CONFIG_MAP`], written by the agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtConfig {
    /// How many masqueraded flows one pod may hold at once; a new flow
    /// beyond it is dropped and counted. 0: no limit.
    pub pod_limit: u32,
    pub pad: u32,
}

crate::pod!(CtState, CtConfig);

/// Name of the single-entry array holding [`CtConfig`].
pub const CT_CONFIG_MAP: &str = "CT_CONFIG";
/// Flows each pod opened (pod address → u64 count), written by the programs
/// alone (atomic adds), never by the agent.
pub const CT_POD_OPENED_MAP: &str = "CT_POD_OPENED";
/// Flows of each pod the sweep removed (pod address → u64 count), written by
/// the agent alone. A pod holds `opened - closed` flows: two counters with
/// one writer each, so neither side can overwrite the other's updates.
pub const CT_POD_CLOSED_MAP: &str = "CT_POD_CLOSED";
/// The default of [`CtConfig::pod_limit`]: an eighth of the table, so
/// eight busy pods can fill it and no single one.
pub const CT_DEFAULT_POD_LIMIT: u32 = crate::MAX_NAT_FLOWS / 8;
