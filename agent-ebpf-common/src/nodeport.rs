//! NodePort: a connection from outside the node to the node's address and
//! a node port is sent to a backend by the uplink program, with its source
//! rewritten to the node's when the backend is on another node (so the
//! reply comes back through here to be translated).
//!
//! The node ports themselves are frontends of the service table whose vip
//! is the node's address (`Config::node_ip`); processes in the agent's
//! cgroup subtree reach them through the socket programs like any
//! ClusterIP.

/// Where a node port connection goes, by the flow as it arrives on the
/// uplink ([`crate::NatKey`] of client and node address and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortFlow {
    /// The backend the flow was sent to.
    pub backend_ip: u32,
    /// Host byte order, as in [`crate::NatKey`].
    pub backend_port: u16,
    /// The node port the client's source became (towards a backend on
    /// another node); 0 when the backend is local and sees the client.
    pub nat_port: u16,
    pub ct: crate::CtState,
}

/// What a backend's reply is translated back to, keyed by the reply as it
/// reaches this node ([`crate::NatKey`] from the backend to the client, or
/// to the node address and `nat_port`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortReply {
    pub client_ip: u32,
    pub client_port: u16,
    /// The node port the client connected to: the reply's source port.
    pub node_port: u16,
}

crate::pod!(NodePortFlow, NodePortReply);

/// Node port flows ([`crate::NatKey`] to [`NodePortFlow`]), a hash map aged
/// out by the agent's sweep.
pub const NODEPORT_FLOWS_MAP: &str = "NODEPORT_FLOWS";
/// Their replies ([`crate::NatKey`] to [`NodePortReply`]), removed with their
/// flows.
pub const NODEPORT_REPLIES_MAP: &str = "NODEPORT_REPLIES";
