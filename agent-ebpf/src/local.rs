//! Local delivery: pods of this node, reached through their veth with
//! `bpf_redirect_peer`, which skips the node's IP stack.

use agent_ebpf_common::{self as abi, Endpoint, Stat};
use aya_ebpf::{
    helpers::generated::bpf_redirect_peer, macros::map, maps::HashMap, programs::TcContext,
};

use crate::{packet, stats};

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(abi::MAX_ENDPOINTS, 0);

/// The local pod at `ip` (as in the IP header), if there is one.
pub fn endpoint(ip: u32) -> Option<Endpoint> {
    unsafe { ENDPOINTS.get(ip) }.copied()
}

/// Whether `ip` (as in the IP header) is a pod of this node.
pub fn is_local_pod(ip: u32) -> bool {
    unsafe { ENDPOINTS.get(ip) }.is_some()
}

/// Hands a frame to the pod's side of `ep`'s veth unchanged, as a bridge
/// would between two pods of one node: `bpf_redirect_peer` marks it for
/// the pod itself on the way in, so neither the MACs nor the TTL need
/// rewriting, and a frame that is not written costs no checksum update
/// and none of the helper calls a write takes.
pub fn hand_over(ep: &Endpoint, stat: Stat) -> i32 {
    stats::count(stat);
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}

/// Rewrites the Ethernet header for `ep` and hands the frame to the pod's
/// side of the veth, whose stack sees it arrive on `eth0`: for frames the
/// programs translated, which a capture in the pod should show as sent to it.
pub fn deliver(ctx: &TcContext, ep: &Endpoint, stat: Stat) -> Option<i32> {
    packet::decrement_ttl(ctx)?;
    packet::set_macs(ctx, &ep.pod_mac, &ep.host_mac)?;
    stats::count(stat);
    Some(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}
