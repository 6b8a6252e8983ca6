//! Masquerade: pod traffic leaving the cluster takes the node's address,
//! and replies find their way back, with conntrack in two hash maps and no
//! iptables.
//!
//! Outgoing, `snat_out` picks a node port for the flow (remembered in
//! `SNAT_OUT`, its reverse in `SNAT_IN`) and rewrites the source. Incoming
//! on the uplink, `snat_in` looks the reply up in `SNAT_IN` and rewrites
//! the destination back to the pod, which the caller then delivers. Both
//! directions refresh the flow's state in `SNAT_OUT`, which the agent's
//! sweep reads to remove the two entries together. The maps are hash maps,
//! not LRUs, for the reason given at `abi::MAX_NAT_FLOWS`.

use agent_ebpf_common::{self as abi, Config, CtState, NatKey, NatValue, SnatFlow};
use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::HashMap, programs::TcContext};

use crate::ct;
use crate::nodeport;
use crate::packet::{flow, rewrite, IPPROTO_ICMP, IP_DST_OFF, IP_SRC_OFF};

#[map(name = "SNAT_OUT")]
static SNAT_OUT: HashMap<NatKey, SnatFlow> = HashMap::pinned(abi::MAX_NAT_FLOWS, 0);

#[map(name = "SNAT_IN")]
static SNAT_IN: HashMap<NatKey, NatValue> = HashMap::pinned(abi::MAX_NAT_FLOWS, 0);

/// Flows someone outside the cluster started towards a pod, keyed as the
/// pod's replies are: those replies must keep the pod's address.
#[map(name = "INBOUND_FLOWS")]
static INBOUND_FLOWS: HashMap<NatKey, CtState> = HashMap::pinned(abi::MAX_NAT_FLOWS, 0);

/// BPF_NOEXIST: two CPUs racing for one key cannot both win.
const NOEXIST: u64 = 1;
/// What a map insert returns when the map is full.
const E2BIG: i32 = -7;

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
    /// A new flow of a pod that holds as many as its limit allows.
    OverLimit,
    /// A new flow while the conntrack map is full.
    Full,
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
    // The flow's forward side is the outside end, which started it.
    match INBOUND_FLOWS.get_ptr_mut(key) {
        Some(st) => ct::touch_ptr(st, true, f.tcp_flags),
        None => {
            // A full table leaves the pod's replies to this new flow
            // masqueraded; flows already recorded keep theirs.
            let _ = INBOUND_FLOWS.insert(key, ct::new_state(0, f.tcp_flags), NOEXIST);
        }
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
    if let Some(st) = INBOUND_FLOWS.get_ptr_mut(out_key) {
        // The pod answers a flow the outside started.
        ct::touch_ptr(st, false, f.tcp_flags);
        return Some(Snat::Untouched);
    }
    let port = match SNAT_OUT.get_ptr_mut(out_key) {
        Some(v) => {
            // SAFETY: a map value pointer, valid for the whole run.
            let v = unsafe { &mut *v };
            ct::touch(&mut v.ct, true, f.tcp_flags);
            v.port
        }
        None => {
            if ct::admit(src).is_err() {
                return Some(Snat::OverLimit);
            }
            match allocate(&out_key, cfg.node_ip, f.tcp_flags) {
                Ok(p) => p,
                Err(refused) => {
                    ct::release(src);
                    return Some(refused);
                }
            }
        }
    };
    rewrite(ctx, &f, IP_SRC_OFF, src, cfg.node_ip, f.sport, port)?;
    Some(Snat::Done)
}

/// How many ports a new flow tries before it gives up.
pub const NAT_PORT_TRIES: u32 = 16;

/// The `i`th port of the NAT range a new flow starting at `seed` tries:
/// spread by a multiplicative hash, then stepped.
pub fn candidate_port(seed: u32, i: u32) -> u16 {
    abi::NAT_PORT_MIN
        + ((seed
            .wrapping_mul(2654435761)
            .wrapping_add(i.wrapping_mul(40503)))
            % u32::from(abi::NAT_PORT_COUNT)) as u16
}

/// A random start for a new flow's port search. Hashing the flow instead
/// would let flows differing only in their source port (all of one pod's
/// connections to one server) share a few hundred starts and collide
/// along the same steps, and a flow refused once would be refused again
/// on every retransmission.
pub fn port_seed() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

/// Finds a node port for a new flow and records both directions. The
/// reply key includes the remote end, so a port is only taken per remote.
/// A port is taken only when no live flow's reply entry holds it, here or
/// in the node port table (whose remote-backend replies share the range),
/// and the sweep removes a flow's forward entry before its reply entry, so
/// a port goes back to the pool only once nothing translates to it.
fn allocate(out_key: &NatKey, node_ip: u32, tcp_flags: u8) -> Result<u16, Snat> {
    let seed = port_seed();
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
        if unsafe { SNAT_IN.get(in_key) }.is_some() || nodeport::reply_taken(&in_key) {
            continue;
        }
        let back = NatValue {
            addr: out_key.src,
            port: out_key.sport,
            pad: 0,
        };
        match SNAT_IN.insert(in_key, back, NOEXIST) {
            Ok(()) => {}
            Err(E2BIG) => return Err(Snat::Full),
            // Another CPU took the port first.
            Err(_) => continue,
        }
        let fwd = SnatFlow {
            addr: node_ip,
            port,
            pad: 0,
            ct: ct::new_state(out_key.src, tcp_flags),
        };
        if SNAT_OUT.insert(out_key, fwd, NOEXIST).is_err() {
            // Full, or another CPU recorded the same flow first: its
            // entry stands and this port goes back.
            let _ = SNAT_IN.remove(in_key);
            return Err(Snat::Full);
        }
        return Ok(port);
    }
    Err(Snat::NoPort)
}

/// Whether a reply entry of a masqueraded flow holds `key` (the node
/// port table asks before it takes a port of the shared range).
pub fn reply_taken(key: &NatKey) -> bool {
    unsafe { SNAT_IN.get(*key) }.is_some()
}

/// Where the replies of the masqueraded flow whose reply key is `key` go:
/// the pod's address and port.
pub fn reply_target(key: &NatKey) -> Option<NatValue> {
    unsafe { SNAT_IN.get(*key) }.copied()
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
    let out_key = NatKey {
        src: back.addr,
        dst: src,
        sport: back.port,
        dport: remote_port,
        proto: f.proto,
        pad: [0; 3],
    };
    if let Some(fwd) = SNAT_OUT.get_ptr_mut(out_key) {
        // SAFETY: a map value pointer, valid for the whole run.
        ct::touch(unsafe { &mut (*fwd).ct }, false, f.tcp_flags);
    }
    rewrite(ctx, &f, IP_DST_OFF, dst, back.addr, f.dport, back.port)?;
    Some(back.addr)
}
