//! NetworkPolicy verdicts: a new flow passes when the sender's egress and
//! the receiver's ingress allow it; the flow is then remembered in both
//! directions, so its replies and later packets pass on one lookup.
//!
//! The agent writes every map here; a policy change rewrites entries, never
//! the program, and bumps the generation: a remembered flow allowed under
//! an older one is checked again on its next packet (the direction that
//! was checked when it began), and forgotten and dropped once the policy
//! no longer allows it.

use agent_ebpf_common::{
    self as abi, PolicyCidrKey, PolicyCounters, PolicyEndpoint, PolicyFlow, PolicyFlowState,
    PolicyRuleKey,
};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, LruHashMap, PerCpuArray,
    },
    programs::TcContext,
};

use crate::packet::ETH_HLEN;

#[map(name = "POLICY_IDENTITIES")]
static IDENTITIES: HashMap<u32, u32> = HashMap::pinned(abi::MAX_POLICY_IDENTITIES, 0);

#[map(name = "POLICY_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, PolicyEndpoint> = HashMap::pinned(abi::MAX_POLICY_ENDPOINTS, 0);

#[map(name = "POLICY_RULES")]
static RULES: LpmTrie<PolicyRuleKey, u32> = LpmTrie::pinned(abi::MAX_POLICY_RULES, 0);

#[map(name = "POLICY_CIDRS")]
static CIDRS: LpmTrie<PolicyCidrKey, u32> = LpmTrie::pinned(abi::MAX_POLICY_CIDRS, 0);

#[map(name = "POLICY_CT")]
static CT: LruHashMap<PolicyFlow, PolicyFlowState> = LruHashMap::pinned(abi::MAX_POLICY_FLOWS, 0);

#[map(name = "POLICY_GENERATION")]
static GENERATION: Array<u32> = Array::pinned(1, 0);

#[map(name = "POLICY_COUNTERS")]
static COUNTERS: PerCpuArray<PolicyCounters> = PerCpuArray::pinned(abi::MAX_POLICY_ENDPOINTS, 0);

/// A remembered flow idle this long is checked again, as a new one.
const FLOW_IDLE_NS: u64 = 120 * 1_000_000_000;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// The policy state of the local pod at `ip`, if the agent wrote one.
pub fn endpoint(ip: u32) -> Option<PolicyEndpoint> {
    unsafe { ENDPOINTS.get(ip) }.copied()
}

/// Whether the frame from `src` to `dst` may pass. `from` is the sending
/// pod when it is local (its egress applies), `to` the receiving pod when
/// it is local (its ingress applies).
pub fn allows(
    ctx: &TcContext,
    src: u32,
    dst: u32,
    from: Option<PolicyEndpoint>,
    to: Option<PolicyEndpoint>,
) -> bool {
    let flags = from.map_or(0, |e| e.flags) | to.map_or(0, |e| e.flags);
    if flags == 0 {
        // Neither side isolated in any direction: nothing to remember either.
        return true;
    }
    let Some(flow) = flow(ctx, src, dst) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let generation = GENERATION.get(0).copied().unwrap_or(0);
    if let Some(state) = CT.get_ptr_mut(&flow) {
        // SAFETY: a live map value; a racing writer stores the same fields.
        unsafe {
            if now.saturating_sub((*state).seen_ns) < FLOW_IDLE_NS {
                if (*state).generation == generation {
                    (*state).seen_ns = now;
                    return true;
                }
                // The policy changed since: the flow goes on only if the
                // direction checked when it began is still allowed. For a
                // reply, that sender was this packet's receiver.
                let still = if (*state).reply != 0 {
                    verdict(&reversed(&flow), to, from)
                } else {
                    verdict(&flow, from, to)
                };
                if still {
                    (*state).seen_ns = now;
                    (*state).generation = generation;
                    return true;
                }
                let _ = CT.remove(&flow);
                let _ = CT.remove(&reversed(&flow));
                return false;
            }
        }
    }
    if !verdict(&flow, from, to) {
        return false;
    }
    let state = |reply| PolicyFlowState {
        seen_ns: now,
        generation,
        reply,
    };
    let _ = CT.insert(&flow, &state(0), 0);
    let _ = CT.insert(&reversed(&flow), &state(1), 0);
    true
}

/// Whether `flow` passes the sender's egress (`from`, when local and
/// isolated) and the receiver's ingress (`to`, likewise); counted.
fn verdict(flow: &PolicyFlow, from: Option<PolicyEndpoint>, to: Option<PolicyEndpoint>) -> bool {
    if let Some(ep) = from.filter(|e| e.flags & abi::POLICY_ISOLATED_EGRESS != 0) {
        let ok = check(ep.id, abi::POLICY_EGRESS, flow.dst, flow.proto, flow.dport);
        count(ep.id, abi::POLICY_EGRESS, ok);
        if !ok {
            return false;
        }
    }
    if let Some(ep) = to.filter(|e| e.flags & abi::POLICY_ISOLATED_INGRESS != 0) {
        let ok = check(ep.id, abi::POLICY_INGRESS, flow.src, flow.proto, flow.dport);
        count(ep.id, abi::POLICY_INGRESS, ok);
        if !ok {
            return false;
        }
    }
    true
}

/// The other direction of `flow`.
fn reversed(flow: &PolicyFlow) -> PolicyFlow {
    PolicyFlow {
        src: flow.dst,
        dst: flow.src,
        sport: flow.dport,
        dport: flow.sport,
        proto: flow.proto,
        pad: [0; 3],
    }
}

/// The flow a frame belongs to; ports are 0 for protocols without them and
/// for fragments after the first (which then match only rules without
/// ports).
fn flow(ctx: &TcContext, src: u32, dst: u32) -> Option<PolicyFlow> {
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let l4 = ETH_HLEN + usize::from(vihl & 0x0f) * 4;
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    let mut f = PolicyFlow {
        src,
        dst,
        proto,
        ..Default::default()
    };
    let first = u16::from_be(frag) & 0x1fff == 0;
    if first && matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        let sport: u16 = ctx.load(l4).ok()?;
        let dport: u16 = ctx.load(l4 + 2).ok()?;
        f.sport = u16::from_be(sport);
        f.dport = u16::from_be(dport);
    }
    Some(f)
}

/// Whether endpoint slot `ep`'s rules for `direction` allow the peer at
/// `peer_ip` on `proto`/`port`: by the peer's identity, by a rule for any
/// peer, or by a CIDR slot containing the address.
fn check(ep: u32, direction: u8, peer_ip: u32, proto: u8, port: u16) -> bool {
    let id = unsafe { IDENTITIES.get(peer_ip) }
        .copied()
        .unwrap_or(abi::WORLD_IDENTITY);
    if rule(ep, direction, id, proto, port)
        || rule(ep, direction, abi::POLICY_PEER_ANY, proto, port)
    {
        return true;
    }
    let key = Key::new(
        abi::POLICY_CIDR_FIXED_BITS + 32,
        PolicyCidrKey {
            endpoint: ep,
            direction: u32::from(direction),
            addr: peer_ip,
        },
    );
    let Some(slots) = CIDRS.get(&key).copied() else {
        return false;
    };
    let mut slot = 0;
    while slot < abi::MAX_CIDR_SLOTS {
        if slots & (1 << slot) != 0 && rule(ep, direction, abi::CIDR_PEER_BASE + slot, proto, port)
        {
            return true;
        }
        slot += 1;
    }
    false
}

/// Whether a rule for `peer` covers `proto`/`port`, or every protocol.
fn rule(ep: u32, direction: u8, peer: u32, proto: u8, port: u16) -> bool {
    let mut data = PolicyRuleKey {
        endpoint: ep,
        peer,
        direction,
        proto,
        port: port.to_be_bytes(),
    };
    let bits = abi::POLICY_RULE_FIXED_BITS + 16;
    if RULES.get(Key::new(bits, data)).is_some() {
        return true;
    }
    data.proto = 0;
    data.port = [0; 2];
    RULES.get(Key::new(bits, data)).is_some()
}

fn count(ep: u32, direction: u8, allowed: bool) {
    let Some(c) = COUNTERS.get_ptr_mut(ep) else {
        return;
    };
    // Per-CPU slot: no other CPU writes it, so plain adds are race-free.
    unsafe {
        match (direction == abi::POLICY_INGRESS, allowed) {
            (true, true) => (*c).ingress_allowed += 1,
            (true, false) => (*c).ingress_denied += 1,
            (false, true) => (*c).egress_allowed += 1,
            (false, false) => (*c).egress_denied += 1,
        }
    }
}
