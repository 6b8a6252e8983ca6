//! Routing by the kernel's FIB: frames for other nodes (and node port
//! flows the programs rewrote) leave where the node itself would send
//! them, without passing through its IP stack.

use agent_ebpf_common::{Config, Stat};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::{nat, packet, stats};

const AF_INET: u8 = 2;

/// Forwards a frame the programs rewrote by the FIB, as the node would
/// route it, without masquerade.
pub fn forward(ctx: &TcContext, stat: Stat) -> Option<i32> {
    let dst = packet::ipv4_dst(ctx)?;
    route(ctx, dst, None, stat)
}

/// An IPv4 FIB lookup from `src` to `dst`, as for a frame with `tos` that
/// arrived on `ifindex`: the kernel's return code, with the answer (egress
/// interface, MACs, next hop) in `fib`, whose earlier contents go.
// Always inlined: a call would take more arguments than a BPF call has
// registers for.
#[inline(always)]
pub fn lookup(
    ctx: &TcContext,
    fib: &mut FibParams,
    src: u32,
    dst: u32,
    tos: u8,
    ifindex: u32,
) -> u32 {
    // SAFETY: FibParams is plain old data; all-zero is its documented
    // starting state.
    *fib = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    // No `tot_len`: with none the kernel checks the frame against the
    // egress device's MTU itself, and knows a GSO frame leaves as segments.
    // The IP header's length of a GSO frame is the whole super-frame, which
    // the route's MTU always refuses: the frame went to the stack
    // unmasqueraded and a pod's bulk TCP out of the cluster stalled.
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = dst;
    fib.ifindex = ifindex;
    // SAFETY: `fib` is a valid, writable lookup structure of that size.
    (unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    }) as u32
}

/// Routes a frame for `dst` by a FIB lookup: sent out where the node would
/// send it (masqueraded first when `masquerade` is given and the frame
/// leaves the cluster), or left to the node's stack.
pub fn route(ctx: &TcContext, dst: u32, masquerade: Option<&Config>, stat: Stat) -> Option<i32> {
    let src: u32 = ctx.load(packet::IP_SRC_OFF).ok()?;
    let tos: u8 = ctx.load(packet::ETH_HLEN + 1).ok()?;
    // SAFETY: FibParams is plain old data; all-zero is its documented
    // starting state.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    // SAFETY: the kernel hands every TC program a valid skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let rc = lookup(ctx, &mut fib, src, dst, tos, ifindex);
    // Anything the FIB does not forward (the node's own addresses, no route,
    // forwarding off) is the node stack's business, as if no program ran.
    let routed = matches!(
        rc as u32,
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH
    );
    if routed {
        if let Some(cfg) = masquerade {
            if nat::wants_snat(cfg, dst) {
                match nat::snat_out(ctx, cfg)? {
                    nat::Snat::Done => stats::count(Stat::SnatOut),
                    nat::Snat::NoPort => {
                        stats::count(Stat::SnatNoPort);
                        return Some(TC_ACT_SHOT);
                    }
                    nat::Snat::OverLimit => {
                        stats::count(Stat::CtPodLimit);
                        return Some(TC_ACT_SHOT);
                    }
                    nat::Snat::Full => {
                        stats::count(Stat::CtFull);
                        return Some(TC_ACT_SHOT);
                    }
                    nat::Snat::Untouched => {}
                }
            }
        }
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            packet::decrement_ttl(ctx)?;
            // The lookup resolved the neighbour too: write both MACs and send.
            packet::set_macs(ctx, &fib.dmac, &fib.smac)?;
            stats::count(stat);
            Some(unsafe { bpf_redirect(fib.ifindex, 0) } as i32)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            packet::decrement_ttl(ctx)?;
            // The kernel resolves the next hop's MAC and fills both in.
            let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            nh.nh_family = AF_INET as u32;
            nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
            stats::count(stat);
            Some(unsafe {
                bpf_redirect_neigh(
                    fib.ifindex,
                    &mut nh,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            } as i32)
        }
        _ => {
            stats::count(Stat::PodToStack);
            Some(TC_ACT_OK)
        }
    }
}
