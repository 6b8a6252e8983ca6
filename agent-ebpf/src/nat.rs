//! Masquerade: pod traffic leaving the cluster takes the node's address,
//! and replies find their way back, with conntrack in two LRU maps and no
//! iptables.
//!
//! Outgoing, `snat_out` picks a node port for the flow (remembered in
//! `SNAT_OUT`, its reverse in `SNAT_IN`) and rewrites the source. Incoming
//! on the uplink, `snat_in` looks the reply up in `SNAT_IN` and rewrites
//! the destination back to the pod, which the caller then delivers.
//!
//! Entries age out (`abi::ct_expired`): an expired flow is treated as
//! absent and replaced, and the agent's collector removes both directions
//! of expired flows. Each pod may hold only so many flows, so a pod
//! opening flows in a loop cannot push other pods' flows out of the LRU.

use agent_ebpf_common::{self as abi, Config, NatKey, NatValue};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};

use crate::ct;
use crate::packet::{flow, rewrite, Flow, IPPROTO_ICMP, IP_DST_OFF, IP_SRC_OFF};

#[map(name = "SNAT_OUT")]
static SNAT_OUT: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(abi::MAX_NAT_FLOWS, 0);

#[map(name = "SNAT_IN")]
static SNAT_IN: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(abi::MAX_NAT_FLOWS, 0);

/// Live flows per source pod. The programs only count up (a replaced
/// expired flow keeps its count); the agent's collector recounts.
#[map(name = "NAT_POD_FLOWS")]
static NAT_POD_FLOWS: HashMap<u32, u32> = HashMap::pinned(abi::MAX_ENDPOINTS, 0);

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
    /// The pod holds as many flows as one pod may.
    PodLimit,
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
    let now = ct::now();
    let mut replacing = false;
    if let Some(v) = SNAT_OUT.get_ptr_mut(out_key) {
        // SAFETY: a pointer the map just gave; racing writers only ever
        // store whole timestamps and flag bits.
        let v = unsafe { &mut *v };
        if !abi::ct_expired(cfg, f.proto, v.flags, v.last_seen, now) {
            v.last_seen = now;
            v.flags |= f.ct_flags();
            let port = v.port;
            rewrite(ctx, &f, IP_SRC_OFF, src, cfg.node_ip, f.sport, port)?;
            return Some(Snat::Done);
        }
        // Expired: the flow is gone; its reply entry goes with it and the
        // pod's count carries over to the flow replacing it.
        let _ = SNAT_IN.remove(reply_key(&out_key, cfg.node_ip, v.port));
        replacing = true;
    }
    if !replacing && over_limit(cfg, src) {
        return Some(Snat::PodLimit);
    }
    let Some(port) = allocate(&out_key, cfg, &f, now) else {
        return Some(Snat::NoPort);
    };
    if !replacing {
        count_flow(src);
    }
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

/// Whether pod `src` already holds as many flows as one pod may.
fn over_limit(cfg: &Config, src: u32) -> bool {
    let limit = if cfg.ct_max_flows_per_pod == 0 {
        abi::CT_MAX_FLOWS_PER_POD
    } else {
        cfg.ct_max_flows_per_pod
    };
    unsafe { NAT_POD_FLOWS.get(src) }.is_some_and(|n| *n >= limit)
}

fn count_flow(src: u32) {
    match NAT_POD_FLOWS.get_ptr_mut(src) {
        Some(n) => {
            // SAFETY: a pointer the map just gave. Two CPUs counting the
            // same pod at once may lose one add; the collector's recount
            // puts it right.
            unsafe { *n += 1 };
        }
        None => {
            let _ = NAT_POD_FLOWS.insert(src, 1, 1);
        }
    }
}

/// The reply entry of the outgoing flow `out_key` masqueraded to `port`.
fn reply_key(out_key: &NatKey, node_ip: u32, port: u16) -> NatKey {
    NatKey {
        src: out_key.dst,
        dst: node_ip,
        sport: out_key.dport,
        dport: port,
        proto: out_key.proto,
        pad: [0; 3],
    }
}

/// The outgoing flow a reply entry `in_key` -> `back` belongs to.
fn flow_key(in_key: &NatKey, back: &NatValue) -> NatKey {
    NatKey {
        src: back.addr,
        dst: in_key.src,
        sport: back.port,
        dport: in_key.sport,
        proto: in_key.proto,
        pad: [0; 3],
    }
}

/// Whether the reply entry at `in_key` belongs to a live flow: its port is
/// not free, even when the collector has not come by yet.
fn reply_live(cfg: &Config, in_key: &NatKey, now: u64) -> bool {
    let Some(back) = (unsafe { SNAT_IN.get(in_key) }).copied() else {
        return false;
    };
    match unsafe { SNAT_OUT.get(flow_key(in_key, &back)) } {
        Some(v) => {
            v.port == in_key.dport && !abi::ct_expired(cfg, in_key.proto, v.flags, v.last_seen, now)
        }
        None => false,
    }
}

/// Finds a node port for a new flow and records both directions. The
/// reply key includes the remote end, so a port is only taken per remote,
/// and never one a live flow to that remote holds.
fn allocate(out_key: &NatKey, cfg: &Config, f: &Flow, now: u64) -> Option<u16> {
    let seed = out_key.src
        ^ out_key.dst.rotate_left(7)
        ^ (u32::from(out_key.sport) << 16)
        ^ u32::from(out_key.dport);
    let flags = f.ct_flags();
    for i in 0..NAT_PORT_TRIES {
        let port = candidate_port(seed, i);
        if take_port(out_key, cfg, port, flags, now) {
            return Some(port);
        }
    }
    None
}

/// Records the flow `out_key` on node port `port` unless a live flow holds
/// it. Kept out of line: unrolled into the loop, its keys would overflow
/// the 512-byte stack.
#[inline(never)]
fn take_port(out_key: &NatKey, cfg: &Config, port: u16, flags: u16, now: u64) -> bool {
    let in_key = reply_key(out_key, cfg.node_ip, port);
    if unsafe { SNAT_IN.get(in_key) }.is_some() {
        if reply_live(cfg, &in_key, now) {
            return false;
        }
        // Left by an expired flow the collector has not removed yet.
        let _ = SNAT_IN.remove(in_key);
    }
    let back = NatValue {
        addr: out_key.src,
        port: out_key.sport,
        flags: 0,
        last_seen: now,
    };
    // BPF_NOEXIST: two CPUs racing for one port cannot both win.
    if SNAT_IN.insert(in_key, back, 1).is_err() {
        return false;
    }
    let fwd = NatValue {
        addr: cfg.node_ip,
        port,
        flags,
        last_seen: now,
    };
    let _ = SNAT_OUT.insert(out_key, fwd, 0);
    true
}

/// The pod address and port a reply `key` of a live masqueraded flow
/// goes to.
pub fn reply_target(cfg: &Config, key: &NatKey) -> Option<(u32, u16)> {
    if cfg.flags & abi::CONFIG_MASQUERADE == 0 || !reply_live(cfg, key, ct::now()) {
        return None;
    }
    let back = unsafe { SNAT_IN.get(key) }?;
    Some((back.addr, back.port))
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
    // The flow's state lives in its outgoing entry: an expired or replaced
    // flow has no replies.
    let fwd = SNAT_OUT.get_ptr_mut(flow_key(&key, &back))?;
    // SAFETY: a pointer the map just gave.
    let fwd = unsafe { &mut *fwd };
    let now = ct::now();
    if fwd.port != f.dport || abi::ct_expired(cfg, f.proto, fwd.flags, fwd.last_seen, now) {
        return None;
    }
    fwd.last_seen = now;
    fwd.flags |= abi::CT_SEEN_REPLY | f.ct_flags();
    rewrite(ctx, &f, IP_DST_OFF, dst, back.addr, f.dport, back.port)?;
    Some(back.addr)
}
