//! Service load balancing at the socket layer.
//!
//! A process that connects (TCP or UDP) or sends a datagram to a ClusterIP
//! has the destination rewritten to one backend before the kernel builds a
//! single packet, so the packets themselves need no NAT and no conntrack.
//! The programs attach to the agent's cgroup v2 subtree, which holds every
//! pod. A process that later reads the peer back (`getpeername`,
//! `recvfrom`) sees the ClusterIP it asked for, not the backend.
//!
//! The agent writes the maps; the order it writes them in (backends, then
//! slots, then slot 0's count) means a reader never meets half a service.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::SockAddrContext,
};

use agent_ebpf_common::{
    self as abi, AffinityKey, AffinityValue, Backend, FlowKey, LbStat, ReverseKey, ReverseValue,
    ServiceKey, ServiceValue,
};

// Entries are replaced and removed while programs read them: without
// preallocation a removed entry is freed only after readers are done, so a
// lookup never sees it reused for another key.
#[map(name = "LB_SERVICES")]
static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(abi::LB_MAX_SERVICE_ROWS, BPF_F_NO_PREALLOC);

#[map(name = "LB_BACKENDS")]
static LB_BACKENDS: HashMap<u32, Backend> =
    HashMap::pinned(abi::LB_MAX_BACKENDS, BPF_F_NO_PREALLOC);

#[map(name = "LB_REVERSE")]
static LB_REVERSE: LruHashMap<ReverseKey, ReverseValue> =
    LruHashMap::pinned(abi::LB_MAX_REVERSE, 0);

#[map(name = "LB_FLOWS")]
static LB_FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::pinned(abi::LB_MAX_FLOWS, 0);

#[map(name = "LB_AFFINITY")]
static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(abi::LB_MAX_AFFINITY, 0);

#[map(name = "LB_STATS")]
static LB_STATS: PerCpuArray<u64> = PerCpuArray::pinned(abi::LB_STATS_CAPACITY, 0);

/// sock_addr verdicts: go on with the call, or fail it.
pub const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Sends a connect or sendmsg for a frontend to one of its backends;
/// `per_datagram` for a sendmsg on an unconnected UDP socket. Returns the
/// sock_addr verdict.
pub fn translate(ctx: &SockAddrContext, per_datagram: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let (vip, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol) };
    let key = ServiceKey {
        vip,
        port,
        slot: 0,
        proto: proto as u8,
        pad: [0; 3],
    };
    // Anything that is not a frontend is none of our business.
    let Some(svc) = frontend(&key) else {
        return ALLOW;
    };
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let Some(backend) = choose(ctx, &key, &svc, cookie, per_datagram) else {
        count(LbStat::NoBackend);
        // A frontend without backends refuses, as a closed port would:
        // callers fail at once instead of waiting for a timeout.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    };
    // SAFETY: as above; both fields are writable in connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = backend.ip;
        (*sa).user_port = u32::from(backend.port);
    }
    let rk = ReverseKey {
        cookie,
        ip: backend.ip,
        port: backend.port,
        pad: 0,
    };
    let rv = ReverseValue { vip, port, pad: 0 };
    // If the LRU is full an old entry goes; failing here would only cost
    // the reverse translation, never the connection.
    let _ = LB_REVERSE.insert(rk, rv, 0);
    count(LbStat::Translated);
    ALLOW
}

/// Picks the backend for a new connection or datagram: the one this UDP
/// socket already uses, the one this client is affine to, or a random
/// ready one.
fn choose(
    ctx: &SockAddrContext,
    key: &ServiceKey,
    svc: &ServiceValue,
    cookie: u64,
    per_datagram: bool,
) -> Option<Backend> {
    let flow = FlowKey {
        cookie,
        vip: key.vip,
        port: key.port,
        proto: key.proto,
        pad: 0,
    };
    // Datagrams of one socket stick to one backend while it lives, as they
    // would with conntrack, so a request and its retries meet one server.
    if per_datagram {
        if let Some(id) = unsafe { LB_FLOWS.get(flow) }.copied() {
            if let Some(b) = backend(id, svc.service_id, false) {
                return Some(b);
            }
        }
    }
    let affine = svc.flags & abi::SERVICE_F_AFFINITY != 0;
    let mut akey = AffinityKey {
        netns_cookie: 0,
        service_id: svc.service_id,
        pad: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if affine {
        akey.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
        if let Some(a) = unsafe { LB_AFFINITY.get(akey) }.copied() {
            let timeout = u64::from(svc.affinity_timeout) * NS_PER_SEC;
            if now.wrapping_sub(a.last_used_ns) < timeout {
                if let Some(b) = backend(a.backend_id, svc.service_id, true) {
                    remember(affine, &akey, a.backend_id, now, per_datagram, &flow);
                    count(LbStat::AffinityHit);
                    return Some(b);
                }
            }
        }
    }
    let (id, b) = pick(key, svc)?;
    remember(affine, &akey, id, now, per_datagram, &flow);
    Some(b)
}

/// Slot 0 of the frontend `key` (a ClusterIP, or the node's address and a
/// node port), if there is one.
pub fn frontend(key: &ServiceKey) -> Option<ServiceValue> {
    unsafe { LB_SERVICES.get(key) }.copied()
}

/// A ready backend of frontend `key` (whose slot 0 is `svc`), picked at
/// random, with its id.
pub fn pick(key: &ServiceKey, svc: &ServiceValue) -> Option<(u32, Backend)> {
    if svc.count == 0 {
        return None;
    }
    let pick = unsafe { bpf_get_prandom_u32() } % u32::from(svc.count);
    let slot = ServiceKey {
        slot: pick as u16 + 1,
        ..*key
    };
    // A slot can be missing for an instant while the agent shrinks the
    // service (the count is lowered before the slots beyond it go).
    let id = unsafe { LB_SERVICES.get(slot) }?.backend_id;
    Some((id, backend(id, svc.service_id, false)?))
}

fn remember(
    affine: bool,
    akey: &AffinityKey,
    id: u32,
    now: u64,
    per_datagram: bool,
    flow: &FlowKey,
) {
    if affine {
        let v = AffinityValue {
            backend_id: id,
            pad: 0,
            last_used_ns: now,
        };
        let _ = LB_AFFINITY.insert(akey, v, 0);
    }
    if per_datagram {
        let _ = LB_FLOWS.insert(flow, id, 0);
    }
}

/// Backend `id` if it still serves `service_id` (and, with `active`, still
/// takes new clients).
fn backend(id: u32, service_id: u32, active: bool) -> Option<Backend> {
    let b = unsafe { LB_BACKENDS.get(id) }.copied()?;
    if b.service_id != service_id || (active && b.flags & abi::BACKEND_F_ACTIVE == 0) {
        return None;
    }
    Some(b)
}

/// Shows a process the frontend it asked for where the kernel would show
/// the backend.
pub fn reverse(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: a valid context; user_ip4/user_port are readable and writable
    // in recvmsg4 and getpeername4.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    let key = ReverseKey {
        cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        ip,
        port,
        pad: 0,
    };
    if let Some(v) = unsafe { LB_REVERSE.get(key) }.copied() {
        unsafe {
            (*sa).user_ip4 = v.vip;
            (*sa).user_port = u32::from(v.port);
        }
        count(LbStat::Reversed);
    }
}

fn count(stat: LbStat) {
    if let Some(c) = LB_STATS.get_ptr_mut(stat.index()) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
}
