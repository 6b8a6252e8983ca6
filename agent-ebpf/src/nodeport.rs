//! NodePort on the uplink: a connection to the node's address and a node
//! port is sent to one of the service's backends by rewriting its
//! destination (DNAT), with conntrack in two hash maps so every packet of
//! the flow meets the same backend. Packets of both directions refresh the
//! flow's state in `NODEPORT_FLOWS`; the agent's sweep removes ended and
//! idle flows, both entries together.
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

use aya_ebpf::{macros::map, maps::HashMap, programs::TcContext};

use crate::{ct, lb, local, nat, packet};
use agent_ebpf_common::{self as abi, Config, NatKey, NodePortFlow, NodePortReply, ServiceKey};

// Hash maps, not LRUs: see `abi::MAX_NAT_FLOWS`.
#[map(name = "NODEPORT_FLOWS")]
static NODEPORT_FLOWS: HashMap<NatKey, NodePortFlow> = HashMap::pinned(abi::MAX_NAT_FLOWS, 0);

#[map(name = "NODEPORT_REPLIES")]
static NODEPORT_REPLIES: HashMap<NatKey, NodePortReply> = HashMap::pinned(abi::MAX_NAT_FLOWS, 0);

/// BPF_NOEXIST: two CPUs racing for one reply key cannot both win.
const NOEXIST: u64 = 1;
/// What a map insert returns when the map is full.
const E2BIG: i32 = -7;

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
    /// A new flow while the conntrack maps are full.
    Full,
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
    let existing = NODEPORT_FLOWS.get_ptr_mut(key).and_then(|flow| {
        // SAFETY: a map value pointer, valid for the whole run.
        let flow = unsafe { &mut *flow };
        if ct::reopens(&flow.ct, f.tcp_flags) {
            // A new connection on a closing flow's ports picks its backend
            // afresh, as conntrack starts a new connection after
            // TIME_WAIT: the old backend may have left the node port
            // (externalTrafficPolicy turned Local, say).
            let old = *flow;
            forget(&key, &old, cfg);
            return None;
        }
        ct::touch(&mut flow.ct, true, f.tcp_flags);
        Some(*flow)
    });
    let flow = match existing {
        Some(flow) => flow,
        None => match open(&key, cfg, f.tcp_flags)? {
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

/// Removes the node port flow `key` (as the client sent it) and its reply
/// entry, the forward entry first, as the agent's sweep does, so its NAT
/// port is free only once nothing translates to it.
fn forget(key: &NatKey, flow: &NodePortFlow, cfg: &Config) {
    let rkey = NatKey {
        src: flow.backend_ip,
        dst: if flow.nat_port == 0 {
            key.src
        } else {
            cfg.node_ip
        },
        sport: flow.backend_port,
        dport: if flow.nat_port == 0 {
            key.sport
        } else {
            flow.nat_port
        },
        proto: key.proto,
        pad: [0; 3],
    };
    let _ = NODEPORT_FLOWS.remove(key);
    let _ = NODEPORT_REPLIES.remove(&rkey);
}

/// The node port flow `key` names as the client sent it: its backend, and
/// the NAT port its frames leave from when that backend is on another node
/// (0 for a backend here).
pub fn flow(key: &NatKey) -> Option<NodePortFlow> {
    unsafe { NODEPORT_FLOWS.get(*key) }.copied()
}

/// The client of the node port flow to a remote backend whose replies
/// arrive as `key`.
pub fn reply(key: &NatKey) -> Option<NodePortReply> {
    unsafe { NODEPORT_REPLIES.get(*key) }.copied()
}

/// A new flow `key`: picks its backend and records both directions. None
/// when the port is no node port.
fn open(key: &NatKey, cfg: &Config, tcp_flags: u8) -> Option<Result<NodePortFlow, Ingress>> {
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
        if NODEPORT_REPLIES.insert(rkey, reply, 0) == Err(E2BIG) {
            return Some(Err(Ingress::Full));
        }
    } else {
        // The reply comes back to a port of ours; the key holds the
        // backend, so a port is only taken per backend, and only when no
        // live flow's reply, here or masqueraded, holds it.
        rkey.dst = cfg.node_ip;
        let seed = nat::port_seed();
        for i in 0..nat::NAT_PORT_TRIES {
            rkey.dport = nat::candidate_port(seed, i);
            if nat::reply_taken(&rkey) {
                continue;
            }
            match NODEPORT_REPLIES.insert(rkey, reply, NOEXIST) {
                Ok(()) => {
                    nat_port = rkey.dport;
                    break;
                }
                Err(E2BIG) => return Some(Err(Ingress::Full)),
                Err(_) => {}
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
        ct: ct::new_state(0, tcp_flags),
    };
    if NODEPORT_FLOWS.insert(key, flow, NOEXIST).is_err() {
        // Full, or another CPU recorded the flow first: its entry stands.
        if nat_port != 0 {
            let _ = NODEPORT_REPLIES.remove(rkey);
        }
        return Some(Err(Ingress::Full));
    }
    Some(Ok(flow))
}

/// Whether a node port flow's reply entry holds `key` (masquerade asks
/// before it takes a port of the shared range).
pub fn reply_taken(key: &NatKey) -> bool {
    unsafe { NODEPORT_REPLIES.get(*key) }.is_some()
}

/// Refreshes the forward entry of the node port flow whose reply is `r`.
fn touch_reply(cfg: &Config, r: &NodePortReply, proto: u8, tcp_flags: u8) {
    let fwd = NatKey {
        src: r.client_ip,
        dst: cfg.node_ip,
        sport: r.client_port,
        dport: r.node_port,
        proto,
        pad: [0; 3],
    };
    if let Some(flow) = NODEPORT_FLOWS.get_ptr_mut(fwd) {
        // SAFETY: a map value pointer, valid for the whole run.
        ct::touch(unsafe { &mut (*flow).ct }, false, tcp_flags);
    }
}

/// A frame a local pod sends: when it answers a node port flow, its source
/// becomes the node's address and node port again. Returns whether it did.
pub fn reply_from_pod(ctx: &TcContext, cfg: &Config) -> Option<()> {
    let f = packet::flow(ctx, true)?;
    let key = reply_key(ctx, &f)?;
    let r = unsafe { NODEPORT_REPLIES.get(key) }.copied()?;
    touch_reply(cfg, &r, f.proto, f.tcp_flags);
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
    touch_reply(cfg, &r, f.proto, f.tcp_flags);
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
