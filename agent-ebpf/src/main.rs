//! eBPF programs loaded by the agent.
//!
//! The pod datapath needs no bridge and no iptables: `from_pod` sits on the
//! host end of each pod's veth and `from_uplink` on the node's uplink. A
//! frame for a pod on this node is handed straight to the pod's `eth0` with
//! `bpf_redirect_peer`, skipping the node's IP stack; a frame for another
//! node's pod is routed by a FIB lookup and sent out with
//! `bpf_redirect_neigh`. Everything else goes to the node's stack unchanged.
#![no_std]
#![no_main]

mod lb;
mod nat;
mod nodeport;

use agent_ebpf_common::{self as abi, Endpoint, PacketCount, Stat};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};

#[map]
static PACKET_COUNT: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(abi::MAX_ENDPOINTS, 0);

#[map(name = "DATAPATH_STATS")]
static DATAPATH_STATS: PerCpuArray<u64> = PerCpuArray::pinned(abi::STATS_CAPACITY, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
const IP_TTL_OFF: usize = ETH_HLEN + 8;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const BPF_F_PSEUDO_HDR_SIZE2: u64 = 2;

/// Counts packets and bytes, then lets the packet continue. TC_ACT_UNSPEC is
/// "next program" under TCX and "default action" under clsact, so the counter
/// never changes what happens to traffic in either attach mode.
#[classifier]
pub fn count_packets(ctx: TcContext) -> i32 {
    if let Some(count) = PACKET_COUNT.get_ptr_mut(0) {
        // Per-CPU slot: no other CPU writes it, so plain adds are race-free.
        unsafe {
            (*count).packets += 1;
            (*count).bytes += u64::from(ctx.len());
        }
    }
    TC_ACT_UNSPEC
}

/// Ingress of the host end of a pod's veth: everything the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    route_from_pod(&ctx).unwrap_or(TC_ACT_OK as i32)
}

/// Ingress of the node's uplink: frames for local pods skip the stack, node
/// ports are balanced, and replies to translated flows find their way back.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    from_outside(&ctx).unwrap_or(TC_ACT_OK as i32)
}

fn from_outside(ctx: &TcContext) -> Option<i32> {
    let dst = ipv4_dst(ctx)?;
    if let Some(ep) = unsafe { ENDPOINTS.get(&dst) } {
        let ep = *ep;
        if let Some(cfg) = nat::config() {
            nat::note_inbound(ctx, &cfg, dst);
        }
        return deliver_local(ctx, &ep, Stat::UplinkToLocal);
    }
    let cfg = nat::config()?;
    if dst == cfg.node_ip {
        if let Some(verdict) = node_port(ctx, &cfg, dst) {
            return Some(verdict);
        }
    }
    // A reply to a flow a pod started out of the cluster, masqueraded.
    let pod = nat::snat_in(ctx, &cfg, dst)?;
    match unsafe { ENDPOINTS.get(&pod) } {
        Some(ep) => {
            let ep = *ep;
            Some(deliver_local(ctx, &ep, Stat::SnatIn).unwrap_or(TC_ACT_OK as i32))
        }
        // The pod is gone: nobody to deliver the (now rewritten) reply to.
        None => Some(TC_ACT_SHOT as i32),
    }
}

/// A frame for the node's own address: a node port flow, or a remote
/// backend's reply to one. None when it is neither.
fn node_port(ctx: &TcContext, cfg: &abi::Config, dst: u32) -> Option<i32> {
    // Once a frame is rewritten, the stack must not see it: it would not
    // know what to do with it.
    const SHOT: i32 = TC_ACT_SHOT as i32;
    if nodeport::reply_in(ctx, cfg).is_some() {
        return Some(forward(ctx, Stat::NodePortReply).unwrap_or(SHOT));
    }
    Some(match nodeport::ingress(ctx, cfg, dst)? {
        nodeport::Ingress::Local(pod) => match unsafe { ENDPOINTS.get(&pod) }.copied() {
            Some(ep) => deliver_local(ctx, &ep, Stat::NodePortLocal).unwrap_or(SHOT),
            // The pod went between the pick and here.
            None => SHOT,
        },
        nodeport::Ingress::Remote => forward(ctx, Stat::NodePortRemote).unwrap_or(SHOT),
        nodeport::Ingress::NoBackend => {
            count(Stat::NodePortNoBackend);
            TC_ACT_OK as i32
        }
        nodeport::Ingress::NoPort => {
            count(Stat::NodePortNoPort);
            SHOT
        }
    })
}

/// Whether `ip` (as in the IP header) is a pod of this node.
pub fn is_local_pod(ip: u32) -> bool {
    unsafe { ENDPOINTS.get(&ip) }.is_some()
}

fn route_from_pod(ctx: &TcContext) -> Option<i32> {
    let dst = ipv4_dst(ctx)?;
    if let Some(ep) = unsafe { ENDPOINTS.get(&dst) } {
        let ep = *ep;
        return deliver_local(ctx, &ep, Stat::PodToLocal);
    }
    let cfg = nat::config();
    if let Some(cfg) = &cfg {
        // Node port clients are outside the pod network (pods reach node
        // ports through the socket programs, or masqueraded from another
        // node), so traffic between pods never pays for this lookup.
        if dst & cfg.cluster_mask != cfg.cluster_net && nodeport::reply_from_pod(ctx, cfg).is_some()
        {
            return Some(forward(ctx, Stat::NodePortReply).unwrap_or(TC_ACT_SHOT as i32));
        }
    }
    route(ctx, dst, cfg.as_ref(), Stat::PodToRemote)
}

/// Forwards a frame the programs rewrote by the FIB, as the node would
/// route it, without masquerade.
fn forward(ctx: &TcContext, stat: Stat) -> Option<i32> {
    let dst = ipv4_dst(ctx)?;
    route(ctx, dst, None, stat)
}

/// Routes a frame for `dst` by a FIB lookup: sent out where the node would
/// send it (masqueraded first when `masquerade` is given and the frame
/// leaves the cluster), or left to the node's stack.
fn route(ctx: &TcContext, dst: u32, masquerade: Option<&abi::Config>, stat: Stat) -> Option<i32> {
    let src: u32 = ctx.load(IP_SRC_OFF).ok()?;
    let tot_len: u16 = ctx.load(ETH_HLEN + 2).ok()?;
    let tos: u8 = ctx.load(ETH_HLEN + 1).ok()?;
    // SAFETY: FibParams is plain old data; all-zero is its documented
    // starting state.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.__bindgen_anon_1.tot_len = u16::from_be(tot_len);
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = dst;
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
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
                    nat::Snat::Done => count(Stat::SnatOut),
                    nat::Snat::NoPort => {
                        count(Stat::SnatNoPort);
                        return Some(TC_ACT_SHOT as i32);
                    }
                    nat::Snat::Untouched => {}
                }
            }
        }
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            decrement_ttl(ctx)?;
            // The lookup resolved the neighbour too: write both MACs and send.
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&fib.dmac);
            macs[6..].copy_from_slice(&fib.smac);
            ctx.store(0, &macs, 0).ok()?;
            count(stat);
            Some(unsafe { bpf_redirect(fib.ifindex, 0) } as i32)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            decrement_ttl(ctx)?;
            // The kernel resolves the next hop's MAC and fills both in.
            let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            nh.nh_family = AF_INET as u32;
            nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
            count(stat);
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
            count(Stat::PodToStack);
            Some(TC_ACT_OK as i32)
        }
    }
}

/// The destination of an IPv4 frame, or None for anything else.
fn ipv4_dst(ctx: &TcContext) -> Option<u32> {
    let proto: u16 = ctx.load(12).ok()?;
    if proto != ETH_P_IP.to_be() {
        return None;
    }
    ctx.load(IP_DST_OFF).ok()
}

/// Rewrites the Ethernet header for `ep` and hands the frame to the pod's
/// side of the veth, whose stack sees it arrive on `eth0`.
fn deliver_local(ctx: &TcContext, ep: &Endpoint, stat: Stat) -> Option<i32> {
    decrement_ttl(ctx)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&ep.pod_mac);
    macs[6..].copy_from_slice(&ep.host_mac);
    ctx.store(0, &macs, 0).ok()?;
    count(stat);
    Some(unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32)
}

/// A routed hop lowers the TTL, as the stack would; a frame about to expire
/// is left to the stack, which answers with ICMP time exceeded.
fn decrement_ttl(ctx: &TcContext) -> Option<()> {
    let ttl: u8 = ctx.load(IP_TTL_OFF).ok()?;
    if ttl <= 1 {
        return None;
    }
    // The checksum covers TTL and protocol as one 16-bit word.
    let proto: u8 = ctx.load(IP_TTL_OFF + 1).ok()?;
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    ctx.l3_csum_replace(
        IP_CSUM_OFF,
        u64::from(old.to_be()),
        u64::from(new.to_be()),
        BPF_F_PSEUDO_HDR_SIZE2,
    )
    .ok()?;
    ctx.store(IP_TTL_OFF, &(ttl - 1), 0).ok()
}

fn count(stat: Stat) {
    if let Some(c) = DATAPATH_STATS.get_ptr_mut(stat.index()) {
        // Per-CPU slot, as above.
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
