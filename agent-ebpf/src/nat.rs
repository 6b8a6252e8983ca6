//! Masquerade: pod traffic leaving the cluster takes the node's address,
//! and replies find their way back, with conntrack in two LRU maps and no
//! iptables.
//!
//! Outgoing, `snat_out` picks a node port for the flow (remembered in
//! `SNAT_OUT`, its reverse in `SNAT_IN`) and rewrites the source. Incoming
//! on the uplink, `snat_in` looks the reply up in `SNAT_IN` and rewrites
//! the destination back to the pod, which the caller then delivers.

use agent_ebpf_common::{self as abi, Config, NatKey, NatValue};
use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};

use crate::packet::{flow, rewrite, IPPROTO_ICMP, IP_DST_OFF, IP_SRC_OFF};

#[map(name = "SNAT_OUT")]
static SNAT_OUT: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(abi::MAX_NAT_FLOWS, 0);

#[map(name = "SNAT_IN")]
static SNAT_IN: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(abi::MAX_NAT_FLOWS, 0);

/// Flows someone outside the cluster started towards a pod, keyed as the
/// pod's replies are: those replies must keep the pod's address.
#[map(name = "INBOUND_FLOWS")]
static INBOUND_FLOWS: LruHashMap<NatKey, u8> = LruHashMap::pinned(abi::MAX_NAT_FLOWS, 0);

/// Whether a frame from a pod to `dst` leaves the cluster and must be
/// masqueraded.
pub fn wants_snat(cfg: &Config, dst: u32) -> bool {
    cfg.flags & abi::CONFIG_MASQUERADE != 0
        && cfg.node_ip != 0
        && dst & cfg.cluster_mask != cfg.cluster_net
}

pub enum Snat {
    /// Not a flow NAT handles: send as is.
    Untouched,
    Done,
    /// No node port free for the flow.
    NoPort,
}

/// Remembers a frame arriving from outside the cluster for local pod
/// `pod`, so the pod's replies are not masqueraded.
pub fn note_inbound(ctx: &TcContext, cfg: &Config, pod: u32) {
    let Ok(src) = ctx.load::<u32>(IP_SRC_OFF) else {
        return;
    };
    if !wants_snat(cfg, src) {
        return;
    }
    let Some(f) = flow(ctx, false) else { return };
    if f.proto == IPPROTO_ICMP {
        // Echo replies are never masqueraded anyway.
        return;
    }
    let key = NatKey {
        src: pod,
        dst: src,
        sport: f.dport,
        dport: f.sport,
        proto: f.proto,
        pad: [0; 3],
    };
    if unsafe { INBOUND_FLOWS.get(key) }.is_none() {
        let _ = INBOUND_FLOWS.insert(key, 1, 0);
    }
}

/// Masquerades a frame from a pod: a known flow keeps its port, a new one
/// gets a free port from the NAT range; replies on flows that came in from
/// outside keep the pod's address.
pub fn snat_out(ctx: &TcContext, cfg: &Config) -> Option<Snat> {
    let Some(f) = flow(ctx, true) else {
        return Some(Snat::Untouched);
    };
    let src: u32 = ctx.load(IP_SRC_OFF).ok()?;
    let dst: u32 = ctx.load(IP_DST_OFF).ok()?;
    let remote_port = if f.proto == IPPROTO_ICMP { 0 } else { f.dport };
    let out_key = NatKey {
        src,
        dst,
        sport: f.sport,
        dport: remote_port,
        proto: f.proto,
        pad: [0; 3],
    };
    if unsafe { INBOUND_FLOWS.get(out_key) }.is_some() {
        return Some(Snat::Untouched);
    }
    let port = match unsafe { SNAT_OUT.get(out_key) } {
        Some(v) => v.port,
        None => match allocate(&out_key, cfg.node_ip) {
            Some(p) => p,
            None => return Some(Snat::NoPort),
        },
    };
    rewrite(ctx, &f, IP_SRC_OFF, src, cfg.node_ip, f.sport, port)?;
    Some(Snat::Done)
}

/// How many ports a new flow tries before it gives up.
pub const NAT_PORT_TRIES: u32 = 16;

/// The `i`th port of the NAT range a flow hashed to `seed` tries: spread
/// by a multiplicative hash, then stepped, so flows rarely meet twice.
pub fn candidate_port(seed: u32, i: u32) -> u16 {
    abi::NAT_PORT_MIN
        + ((seed
            .wrapping_mul(2654435761)
            .wrapping_add(i.wrapping_mul(40503)))
            % u32::from(abi::NAT_PORT_COUNT)) as u16
}

/// Finds a node port for a new flow and records both directions. The
/// reply key includes the remote end, so a port is only taken per remote.
fn allocate(out_key: &NatKey, node_ip: u32) -> Option<u16> {
    let seed = out_key.src
        ^ out_key.dst.rotate_left(7)
        ^ (u32::from(out_key.sport) << 16)
        ^ u32::from(out_key.dport);
    for i in 0..NAT_PORT_TRIES {
        let port = candidate_port(seed, i);
        let in_key = NatKey {
            src: out_key.dst,
            dst: node_ip,
            sport: out_key.dport,
            dport: port,
            proto: out_key.proto,
            pad: [0; 3],
        };
        if unsafe { SNAT_IN.get(in_key) }.is_some() {
            continue;
        }
        let back = NatValue {
            addr: out_key.src,
            port: out_key.sport,
            pad: 0,
        };
        // BPF_NOEXIST: two CPUs racing for one port cannot both win.
        if SNAT_IN.insert(in_key, back, 1).is_err() {
            continue;
        }
        let fwd = NatValue {
            addr: node_ip,
            port,
            pad: 0,
        };
        let _ = SNAT_OUT.insert(out_key, fwd, 0);
        return Some(port);
    }
    None
}

/// Translates a reply arriving for the node address back to the pod;
/// returns the pod's address when it did.
pub fn snat_in(ctx: &TcContext, cfg: &Config, dst: u32) -> Option<u32> {
    if dst != cfg.node_ip || cfg.flags & abi::CONFIG_MASQUERADE == 0 {
        return None;
    }
    let f = flow(ctx, false)?;
    let src: u32 = ctx.load(IP_SRC_OFF).ok()?;
    let remote_port = if f.proto == IPPROTO_ICMP { 0 } else { f.sport };
    let key = NatKey {
        src,
        dst,
        sport: remote_port,
        dport: f.dport,
        proto: f.proto,
        pad: [0; 3],
    };
    let back = unsafe { SNAT_IN.get(key) }.copied()?;
    rewrite(ctx, &f, IP_DST_OFF, dst, back.addr, f.dport, back.port)?;
    Some(back.addr)
}
