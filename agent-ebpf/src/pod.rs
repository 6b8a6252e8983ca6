//! What a pod sends, seen at ingress of the host end of its veth.

use agent_ebpf_common::Stat;
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};

use crate::{fib, host, icmp, local, nodeport, packet, policy, stats, tunnel};

/// The verdict for a frame from a pod: delivered to a local pod, a node
/// port reply (or an ICMP error about a node port flow) sent back to its
/// client, or routed (masqueraded when it
/// leaves the cluster). None leaves it to the node's stack.
pub fn from_pod(ctx: &TcContext) -> Option<i32> {
    let (src, dst) = packet::ipv4_addrs(ctx)?;
    if !own_source(ctx, src) {
        stats::count(Stat::PodSpoofed);
        return Some(TC_ACT_SHOT);
    }
    let from = policy::endpoint(src);
    if let Some(ep) = local::endpoint(dst) {
        if !policy::allows(ctx, src, dst, from, policy::endpoint(dst)) {
            stats::count(Stat::PolicyDenied);
            return Some(TC_ACT_SHOT);
        }
        return Some(local::hand_over(&ep, Stat::PodToLocal));
    }
    let cfg = stats::config();
    if let Some(cfg) = &cfg {
        // Node port clients are outside the pod network (pods reach node
        // ports through the socket programs, or masqueraded from another
        // node), so traffic between pods never pays for this lookup.
        if dst & cfg.cluster_mask != cfg.cluster_net {
            if nodeport::reply_from_pod(ctx, cfg).is_some() {
                return Some(fib::forward(ctx, Stat::NodePortReply).unwrap_or(TC_ACT_SHOT));
            }
            if icmp::error_from_pod(ctx, cfg).is_some() {
                return Some(fib::forward(ctx, Stat::NodePortIcmpError).unwrap_or(TC_ACT_SHOT));
            }
        }
    }
    // The node is policed like any peer, but for answers on connections
    // it opened (probes), which must pass whatever the pod's egress says.
    let to_node = cfg.as_ref().is_some_and(|c| c.node_ip == dst);
    let answers_node =
        to_node && from.is_some_and(|e| e.flags != 0) && host::answers_node(ctx, src, dst);
    if !answers_node && !policy::allows(ctx, src, dst, from, None) {
        stats::count(Stat::PolicyDenied);
        return Some(TC_ACT_SHOT);
    }
    if let Some(cfg) = &cfg {
        // Another node's pods are behind the tunnel in tunnel mode.
        if dst & cfg.cluster_mask == cfg.cluster_net {
            let verdict = tunnel::route(ctx, dst);
            if verdict != tunnel::NOT_WRAPPED {
                return Some(verdict);
            }
        }
    }
    fib::route(ctx, dst, cfg.as_ref(), Stat::PodToRemote)
}

/// Whether the frame's IPv4 source is the address of the pod behind the
/// veth it arrived on. A pod's NodePort replies pass too: they leave the
/// pod from its own address and only take the node port's afterwards, in
/// `nodeport::reply_from_pod`.
fn own_source(ctx: &TcContext, src: u32) -> bool {
    // SAFETY: the kernel hands every TC program a valid skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    local::endpoint(src).is_some_and(|ep| ep.ifindex == ifindex)
}
