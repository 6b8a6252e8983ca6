//! What arrives on the node's uplink: frames for local pods skip the
//! stack, node ports are balanced, and replies to translated flows find
//! their way back.

use agent_ebpf_common::{Config, Stat};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};

use crate::{fib, icmp, local, nat, nodeport, packet, policy, stats, tunnel};

/// The verdict for a frame from outside the node; None leaves it to the
/// node's stack.
pub fn from_uplink(ctx: &TcContext) -> Option<i32> {
    let dst = packet::ipv4_dst(ctx)?;
    let verdict = to_pod(ctx, dst);
    if verdict != NOT_LOCAL {
        return Some(verdict);
    }
    let cfg = stats::config()?;
    if dst == cfg.node_ip {
        // Most of what arrives for the node in tunnel mode is other nodes'
        // pod traffic: a single frame for a pod of this node is unwrapped
        // here and handed over, the rest goes to the tunnel device, both
        // spared the lookups below.
        if let Some(tunnel) = tunnel::config() {
            if tunnel::is_tunnel_frame(ctx, &tunnel) {
                stats::count(Stat::TunnelIn);
                if tunnel::unwrap(ctx) {
                    let verdict = to_pod(ctx, packet::ipv4_dst(ctx)?);
                    // The pod went since `unwrap` saw it: the stack routes
                    // the (now plain) packet as any other.
                    return Some(if verdict == NOT_LOCAL { TC_ACT_OK } else { verdict });
                }
                return Some(TC_ACT_OK);
            }
        }
        if let Some(verdict) = node_port(ctx, &cfg, dst) {
            return Some(verdict);
        }
    }
    // A reply to a flow a pod started out of the cluster, masqueraded, or
    // an ICMP error about a translated flow.
    let (pod, stat) = match nat::snat_in(ctx, &cfg, dst) {
        Some(pod) => (pod, Stat::SnatIn),
        None => match icmp::error_in(ctx, &cfg, dst)? {
            icmp::Translated::Pod(pod) => (pod, Stat::IcmpErrorIn),
            // Rewritten: the stack must not see it.
            icmp::Translated::Forward => {
                return Some(fib::forward(ctx, Stat::NodePortIcmpError).unwrap_or(TC_ACT_SHOT))
            }
        },
    };
    match local::endpoint(pod) {
        Some(ep) => Some(local::deliver(ctx, &ep, stat).unwrap_or(TC_ACT_OK)),
        // The pod is gone: nobody to deliver the (now rewritten) reply to.
        None => Some(TC_ACT_SHOT),
    }
}

/// What [`to_pod`] returns for a frame that is not for a pod of this node:
/// no TC verdict has this value.
const NOT_LOCAL: i32 = i32::MIN;

/// A frame for `dst`, when it is a pod of this node: policed and handed
/// to the pod. A call of its own (returning a plain integer, not an
/// `Option`) for the stack limit: it runs again for unwrapped frames.
#[inline(never)]
fn to_pod(ctx: &TcContext, dst: u32) -> i32 {
    let Some(ep) = local::endpoint(dst) else {
        return NOT_LOCAL;
    };
    let Ok(src) = ctx.load::<u32>(packet::IP_SRC_OFF) else {
        return TC_ACT_OK;
    };
    if !policy::allows(ctx, src, dst, None, policy::endpoint(dst)) {
        stats::count(Stat::PolicyDenied);
        return TC_ACT_SHOT;
    }
    if let Some(cfg) = stats::config() {
        nat::note_inbound(ctx, &cfg, dst);
    }
    // The sending node routed the frame (and lowered its TTL); here it
    // only crosses into the pod, as in `from_pod`.
    local::hand_over(&ep, Stat::UplinkToLocal)
}

/// A frame for the node's own address: a node port flow, or a remote
/// backend's reply to one. None when it is neither.
fn node_port(ctx: &TcContext, cfg: &Config, dst: u32) -> Option<i32> {
    // Once a frame is rewritten, the stack must not see it: it would not
    // know what to do with it.
    const SHOT: i32 = TC_ACT_SHOT;
    if nodeport::reply_in(ctx, cfg).is_some() {
        return Some(fib::forward(ctx, Stat::NodePortReply).unwrap_or(SHOT));
    }
    Some(match nodeport::ingress(ctx, cfg, dst)? {
        nodeport::Ingress::Local(pod) => match local::endpoint(pod) {
            Some(ep) => local::deliver(ctx, &ep, Stat::NodePortLocal).unwrap_or(SHOT),
            // The pod went between the pick and here.
            None => SHOT,
        },
        nodeport::Ingress::Remote => fib::forward(ctx, Stat::NodePortRemote).unwrap_or(SHOT),
        nodeport::Ingress::NoBackend => {
            stats::count(Stat::NodePortNoBackend);
            TC_ACT_OK
        }
        nodeport::Ingress::NoPort => {
            stats::count(Stat::NodePortNoPort);
            SHOT
        }
        nodeport::Ingress::Full => {
            stats::count(Stat::CtFull);
            SHOT
        }
    })
}
