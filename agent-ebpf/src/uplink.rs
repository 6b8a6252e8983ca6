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
    if let Some(ep) = local::endpoint(dst) {
        let src: u32 = ctx.load(packet::IP_SRC_OFF).ok()?;
        if !policy::allows(ctx, src, dst, None, policy::endpoint(dst)) {
            stats::count(Stat::PolicyDenied);
            return Some(TC_ACT_SHOT);
        }
        if let Some(cfg) = stats::config() {
            nat::note_inbound(ctx, &cfg, dst);
        }
        // The sending node routed the frame (and lowered its TTL); here
        // it only crosses into the pod, as in `from_pod`.
        return Some(local::hand_over(&ep, Stat::UplinkToLocal));
    }
    let cfg = stats::config()?;
    if dst == cfg.node_ip {
        // Most of what arrives for the node in tunnel mode is other nodes'
        // pod traffic, for the tunnel device: spared the lookups below.
        if let Some(tunnel) = tunnel::config() {
            if tunnel::is_tunnel_frame(ctx, &tunnel) {
                stats::count(Stat::TunnelIn);
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
