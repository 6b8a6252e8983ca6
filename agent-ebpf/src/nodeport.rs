//! NodePort on the uplink: a connection to the node's address and a node
//! port is sent to one of the service's backends by rewriting its
//! destination (DNAT), with conntrack in two LRU maps so every packet of
//! the flow meets the same backend.
//!
//! A backend on this node sees the client's own address, and its replies
//! get the node's address and node port back as their source on the way
//! out of the pod (`reply_from_pod`). A backend on another node also gets
//! the client's source rewritten to the node's address and a port of the
//! NAT range (SNAT), so its replies come back through this node, where
//! `reply_in` turns them back into the node port's before they are
//! forwarded to the client.
//!
//! Which backends a node port has is the agent's business: for
//! `externalTrafficPolicy: Local` it writes only this node's.

use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};

use crate::{lb, local, nat, packet};
use agent_ebpf_common::{self as abi, Config, NatKey, NodePortFlow, NodePortReply, ServiceKey};

#[map(name = "NODEPORT_FLOWS")]
static NODEPORT_FLOWS: LruHashMap<NatKey, NodePortFlow> = LruHashMap::pinned(abi::MAX_NAT_FLOWS, 0);

#[map(name = "NODEPORT_REPLIES")]
static NODEPORT_REPLIES: LruHashMap<NatKey, NodePortReply> =
    LruHashMap::pinned(abi::MAX_NAT_FLOWS, 0);

/// BPF_NOEXIST: two CPUs racing for one reply key cannot both win.
const NOEXIST: u64 = 1;

/// What became of a frame for the node's address.
pub enum Ingress {
    /// Sent to the backend at this address on this node.
    Local(u32),
    /// Sent to a backend on another node: forward it.
    Remote,
    /// A node port without a backend: the node's stack answers it.
    NoBackend,
    /// A new flow to a remote backend without a free source port.
    NoPort,
}

/// A frame from outside for the node's address `dst`: None when its port
/// is no node port (or it is not TCP or UDP), else what was done to it.
pub fn ingress(ctx: &TcContext, cfg: &Config, dst: u32) -> Option<Ingress> {
    let f = packet::flow(ctx, false)?;
    if f.proto == packet::IPPROTO_ICMP {
        return None;
    }
    let src: u32 = ctx.load(packet::IP_SRC_OFF).ok()?;
    let key = NatKey {
        src,
        dst,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        pad: [0; 3],
    };
    let flow = match unsafe { NODEPORT_FLOWS.get(key) }.copied() {
        Some(flow) => flow,
        None => match open(&key, cfg)? {
            Ok(flow) => flow,
            Err(refused) => return Some(refused),
        },
    };
    packet::rewrite(
        ctx,
        &f,
        packet::IP_DST_OFF,
        dst,
        flow.backend_ip,
        f.dport,
        flow.backend_port,
    )?;
    if flow.nat_port == 0 {
        return Some(Ingress::Local(flow.backend_ip));
    }
    let out = packet::flow(ctx, true)?;
    packet::rewrite(
        ctx,
        &out,
        packet::IP_SRC_OFF,
        src,
        cfg.node_ip,
        f.sport,
        flow.nat_port,
    )?;
    Some(Ingress::Remote)
}

/// A new flow `key`: picks its backend and records both directions. None
/// when the port is no node port.
fn open(key: &NatKey, cfg: &Config) -> Option<Result<NodePortFlow, Ingress>> {
    let fe = ServiceKey {
        vip: key.dst,
        port: key.dport.to_be(),
        slot: 0,
        proto: key.proto,
        pad: [0; 3],
    };
    let svc = lb::frontend(&fe)?;
    let Some((_, backend)) = lb::pick(&fe, &svc) else {
        return Some(Err(Ingress::NoBackend));
    };
    let backend_port = u16::from_be(backend.port);
    let reply = NodePortReply {
        client_ip: key.src,
        client_port: key.sport,
        node_port: key.dport,
    };
    let mut rkey = NatKey {
        src: backend.ip,
        dst: key.src,
        sport: backend_port,
        dport: key.sport,
        proto: key.proto,
        pad: [0; 3],
    };
    let mut nat_port = 0;
    if local::is_local_pod(backend.ip) {
        // The reply goes from the pod straight to the client.
        let _ = NODEPORT_REPLIES.insert(rkey, reply, 0);
    } else {
        // The reply comes back to a port of ours; the key holds the
        // backend, so a port is only taken per backend.
        rkey.dst = cfg.node_ip;
        let seed = key.src ^ backend.ip.rotate_left(11) ^ (u32::from(key.sport) << 16);
        for i in 0..nat::NAT_PORT_TRIES {
            rkey.dport = nat::candidate_port(seed, i);
            if NODEPORT_REPLIES.insert(rkey, reply, NOEXIST).is_ok() {
                nat_port = rkey.dport;
                break;
            }
        }
        if nat_port == 0 {
            return Some(Err(Ingress::NoPort));
        }
    }
    let flow = NodePortFlow {
        backend_ip: backend.ip,
        backend_port,
        nat_port,
    };
    let _ = NODEPORT_FLOWS.insert(key, flow, 0);
    Some(Ok(flow))
}

/// A frame a local pod sends: when it answers a node port flow, its source
/// becomes the node's address and node port again. Returns whether it did.
pub fn reply_from_pod(ctx: &TcContext, cfg: &Config) -> Option<()> {
    let f = packet::flow(ctx, true)?;
    let key = reply_key(ctx, &f)?;
    let r = unsafe { NODEPORT_REPLIES.get(key) }.copied()?;
    packet::rewrite(
        ctx,
        &f,
        packet::IP_SRC_OFF,
        key.src,
        cfg.node_ip,
        f.sport,
        r.node_port,
    )
}

/// A frame for the node's address `dst` from a remote backend answering a
/// node port flow: it goes back to the client from the node port. Returns
/// whether it was one.
pub fn reply_in(ctx: &TcContext, cfg: &Config) -> Option<()> {
    let f = packet::flow(ctx, false)?;
    let key = reply_key(ctx, &f)?;
    let r = unsafe { NODEPORT_REPLIES.get(key) }.copied()?;
    packet::rewrite(
        ctx,
        &f,
        packet::IP_DST_OFF,
        key.dst,
        r.client_ip,
        f.dport,
        r.client_port,
    )?;
    let out = packet::flow(ctx, true)?;
    packet::rewrite(
        ctx,
        &out,
        packet::IP_SRC_OFF,
        key.src,
        cfg.node_ip,
        f.sport,
        r.node_port,
    )
}

/// The conntrack key of a frame as it is on the wire (TCP and UDP only).
fn reply_key(ctx: &TcContext, f: &packet::Flow) -> Option<NatKey> {
    if f.proto == packet::IPPROTO_ICMP {
        return None;
    }
    Some(NatKey {
        src: ctx.load(packet::IP_SRC_OFF).ok()?,
        dst: ctx.load(packet::IP_DST_OFF).ok()?,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        pad: [0; 3],
    })
}
