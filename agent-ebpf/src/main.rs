//! eBPF programs loaded by the agent: their entry points, one per program.
//!
//! The pod datapath needs no bridge and no iptables: `from_pod` sits on the
//! host end of each pod's veth and `from_uplink` on the node's uplink. A
//! frame for a pod on this node is handed straight to the pod's `eth0` with
//! `bpf_redirect_peer`, skipping the node's IP stack; a frame for another
//! node's pod is routed by a FIB lookup and sent out with
//! `bpf_redirect_neigh` (wrapped in VXLAN first when the route is the
//! node's tunnel). Everything else goes to the node's stack unchanged.
//! Services are balanced at the socket layer by the `lb_*` programs.
//!
//! Each concern lives in a module of its own, with the maps it owns:
//! `packet` (parsing and checksums), `fib` (routing), `local` (delivery to
//! this node's pods), `nat` (masquerade), `nodeport`, `ct` (the conntrack
//! state of both), `policy` (NetworkPolicy verdicts), `host` (a pod's
//! answers to its node), `tunnel` (VXLAN encapsulation), `lb` (sock_addr
//! load balancing), and `pod`/`uplink` (what each TC program decides).
#![no_std]
#![no_main]
// The conntrack's per-pod counters need an atomic add, which the BPF
// target's core offers only as an intrinsic.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod counter;
mod ct;
mod fib;
mod host;
mod icmp;
mod lb;
mod local;
mod nat;
mod nodeport;
mod packet;
mod pod;
mod policy;
mod stats;
mod tunnel;
mod uplink;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_UNSPEC},
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// Counts packets and bytes, then lets the packet continue. TC_ACT_UNSPEC is
/// "next program" under TCX and "default action" under clsact, so the counter
/// never changes what happens to traffic in either attach mode.
#[classifier]
pub fn count_packets(ctx: TcContext) -> i32 {
    counter::count(&ctx);
    TC_ACT_UNSPEC
}

/// Ingress of the host end of a pod's veth: everything the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    pod::from_pod(&ctx).unwrap_or(TC_ACT_OK)
}

/// Ingress of the node's uplink.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    uplink::from_uplink(&ctx).unwrap_or(TC_ACT_OK)
}

/// `connect()` of a TCP or UDP socket.
#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    lb::translate(&ctx, false)
}

/// `sendto()`/`sendmsg()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    lb::translate(&ctx, true)
}

/// The source a UDP `recvfrom()`/`recvmsg()` reports.
#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    lb::reverse(&ctx);
    lb::ALLOW
}

/// The peer `getpeername()` reports.
#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    lb::reverse(&ctx);
    lb::ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
