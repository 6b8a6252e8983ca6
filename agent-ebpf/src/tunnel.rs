//! VXLAN without the device's transmit path (`--tunnel vxlan`): a frame
//! from a pod that the FIB routes into the tunnel is wrapped here in the
//! headers the VXLAN device would write and sent out of the underlay's
//! interface directly. The device stays: its routes and static neighbours
//! say where every other node's pods are, and its socket receives and
//! decapsulates what other nodes send.

use agent_ebpf_common::{Stat, Tunnel};
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibParams, bpf_redir_neigh,
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT,
    },
    helpers::generated::{
        bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_redirect, bpf_redirect_neigh,
    },
    macros::map,
    maps::Array,
    programs::TcContext,
};

use crate::{fib, packet, stats};

#[map(name = "DATAPATH_TUNNEL")]
static DATAPATH_TUNNEL: Array<Tunnel> = Array::pinned(1, 0);

const AF_INET: u8 = 2;
const IPPROTO_UDP: u8 = 17;
const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const VXLAN_HLEN: usize = 8;
/// The outer IPv4, UDP and VXLAN headers.
const ENCAP_LEN: usize = IP_HLEN + UDP_HLEN + VXLAN_HLEN;
/// What goes between the frame's Ethernet header (which becomes the outer
/// one) and its IP header: [`ENCAP_LEN`] and the inner Ethernet header.
const HEADERS: usize = ENCAP_LEN + packet::ETH_HLEN;
/// The outer source port comes from the flow's hash within the range Linux
/// uses for its own tunnels (the default ephemeral ports), so that the
/// underlay's ECMP and the receiver's RSS spread flows as they do for the
/// device's packets.
const SPORT_MIN: u32 = 32768;
const SPORT_MAX: u32 = 60999;
const OUTER_TTL: u8 = 64;

/// The tunnel, when the node has one.
pub fn config() -> Option<Tunnel> {
    DATAPATH_TUNNEL.get(0).copied().filter(|t| t.port != 0)
}

/// The tunnel, when the programs wrap what pods send into it.
pub fn wrapping() -> Option<Tunnel> {
    config().filter(|t| t.ifindex != 0)
}

/// Whether a frame for the node's own address is a tunnel packet (UDP to
/// the tunnel's port), which nothing but the tunnel device's socket takes:
/// node ports and masquerade ports never use that port.
pub fn is_tunnel_frame(ctx: &TcContext, tunnel: &Tunnel) -> bool {
    let Ok(vihl) = ctx.load::<u8>(packet::ETH_HLEN) else {
        return false;
    };
    let Ok(proto) = ctx.load::<u8>(packet::ETH_HLEN + 9) else {
        return false;
    };
    if proto != IPPROTO_UDP {
        return false;
    }
    let l4 = packet::ETH_HLEN + usize::from(vihl & 0x0f) * 4;
    ctx.load::<u16>(l4 + 2).is_ok_and(|port| port == tunnel.port)
}

/// Routes a frame from a pod to `dst`, another pod of the cluster, when
/// the programs wrap for the tunnel and the FIB sends it there: wrapped
/// here and sent out of the underlay's interface towards the node whose
/// tunnel endpoint MAC the lookup found. [`NOT_WRAPPED`] leaves the frame
/// unchanged, to `fib::route`: no wrapping by the programs, a route
/// elsewhere, a frame about to expire, a MAC that is not a node's tunnel
/// endpoint, no route to that node, or a frame too long to wrap.
///
/// A function of its own, called from `from_pod` only, and one lookup
/// structure for both lookups: the verifier bounds the stack of a whole
/// call chain (`from_pod`'s and `from_uplink`'s through `fib::route` are
/// close to the limit already), and the ebpf_datapath tests fail when a
/// change crosses it.
#[inline(never)]
pub fn route(ctx: &TcContext, dst: u32) -> i32 {
    wrap(ctx, dst).unwrap_or(NOT_WRAPPED)
}

/// What [`route`] returns for a frame it left unchanged, for `fib::route`:
/// no TC verdict has this value.
pub const NOT_WRAPPED: i32 = i32::MIN;

// Inlined into `route`, whose plain integer result spares `from_pod` the
// stack slot an `Option` would be returned through.
#[inline(always)]
fn wrap(ctx: &TcContext, dst: u32) -> Option<i32> {
    // Read here, not by the caller: `from_pod`'s own frame stays as it was.
    let tunnel = &wrapping()?;
    let src: u32 = ctx.load(packet::IP_SRC_OFF).ok()?;
    let tos: u8 = ctx.load(packet::ETH_HLEN + 1).ok()?;
    // SAFETY: FibParams is plain old data; all-zero is its documented
    // starting state.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    // SAFETY: the kernel hands every TC program a valid skb.
    let veth = unsafe { (*ctx.skb.skb).ifindex };
    let rc = fib::lookup(ctx, &mut fib, src, dst, tos, veth);
    if rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != tunnel.ifindex {
        return None;
    }
    // A node's tunnel endpoint MAC is 0a:58 followed by its IPv4 address
    // (the agent's `vxlan::endpoint_mac`): the MAC says where to send.
    // The inner MACs are kept as integers: the lookup structure is reused
    // below, and byte arrays copied around the stack cost the verifier.
    let (dmac, smac) = (Mac::of(&fib.dmac), Mac::of(&fib.smac));
    let d = &fib.dmac;
    if d[0] != 0x0a || d[1] != 0x58 {
        return None;
    }
    let remote = u32::from_ne_bytes([d[2], d[3], d[4], d[5]]);
    let node_ip = stats::config()?.node_ip;
    let inner_len = ctx.len() as usize - packet::ETH_HLEN;
    // The outer IPv4 length field is 16 bits; the pods' aggregates are kept
    // at 64 KiB in tunnel mode, so this holds for all they send.
    let ip_len = HEADERS + inner_len;
    if ip_len > 0xffff {
        return None;
    }
    let next_hop = underlay(ctx, &mut fib, veth, node_ip, remote, tunnel.ifindex)?;
    // Routed as the device would have been handed it: one hop fewer.
    packet::decrement_ttl(ctx)?;
    // Hashed before the frame changes, so it is the inner flow's.
    // SAFETY: the kernel hands every TC program a valid skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let mixed = hash ^ (hash << 16);
    let sport = ((u64::from(mixed) * u64::from(SPORT_MAX - SPORT_MIN)) >> 32) as u32 + SPORT_MIN;
    // SAFETY: no arguments; returns a pseudo-random number.
    let id = unsafe { bpf_get_prandom_u32() } as u16;

    // FIXED_GSO: the pod's MTU already leaves room for these headers, so
    // its segments keep their size; the rest of the flags make the kernel
    // see the frame as a UDP tunnel packet with an Ethernet frame inside,
    // as the device's would be (segmented by a NIC or by software alike).
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH;
    let flags = u64::from(flags) | ((packet::ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    if ctx.adjust_room(HEADERS as i32, BPF_ADJ_ROOM_MAC, flags).is_err() {
        // Unchanged but for its TTL (a frame the kernel will not wrap, such
        // as one a pod already encapsulated itself): the device takes it.
        return Some(to_device(ctx, tunnel, dmac, smac));
    }
    // The new headers are written in place: they sit in the buffer's
    // linear part, which the kernel made room in, so no copy on the stack
    // (whose size the verifier bounds) and no helper call per field.
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + packet::ETH_HLEN + HEADERS > end {
        // The frame has grown: there is no going back to the device.
        return Some(TC_ACT_SHOT);
    }
    let at = |off: usize| data + off;
    // SAFETY: every write below lies within the bounds checked above.
    unsafe {
        if next_hop.is_none() {
            Mac::of(&fib.dmac).put(at(0));
            Mac::of(&fib.smac).put(at(6));
        }
        // Outer IPv4: no DF, as the device sends by default, so an
        // underlay with a smaller MTU fragments instead of dropping; the
        // ECN bits are copied from the inner header (RFC 6040).
        let ip = packet::ETH_HLEN;
        put(at(ip), [0x45u8, tos & 0x03]);
        put(at(ip + 2), (ip_len as u16).to_be());
        put(at(ip + 4), id);
        put(at(ip + 6), 0u16);
        put(at(ip + 8), [OUTER_TTL, IPPROTO_UDP]);
        put(at(ip + 10), ipv4_checksum(tos & 0x03, ip_len as u16, id, node_ip, remote));
        put(at(ip + 12), node_ip);
        put(at(ip + 16), remote);
        // UDP, with a zero checksum (RFC 7348 for IPv4; the inner frame
        // carries its own).
        let udp = ip + IP_HLEN;
        put(at(udp), (sport as u16).to_be());
        put(at(udp + 2), tunnel.port);
        put(at(udp + 4), ((ip_len - IP_HLEN) as u16).to_be());
        put(at(udp + 6), 0u16);
        // VXLAN: the "VNI present" flag, then the VNI.
        let vx = udp + UDP_HLEN;
        put(at(vx), 0x08u32.to_le());
        put(at(vx + 4), (tunnel.vni << 8).to_be());
        // The pod's frame's own Ethernet header, as the device carries it.
        let inner = vx + VXLAN_HLEN;
        dmac.put(at(inner));
        smac.put(at(inner + 6));
        put(at(inner + 12), 0x0800u16.to_be());
    }
    stats::count(Stat::PodToTunnel);
    Some(match next_hop {
        None => unsafe { bpf_redirect(fib.ifindex, 0) as i32 },
        Some(nh) => {
            // SAFETY: plain old data; zero is a valid start.
            let mut p: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            p.nh_family = u32::from(AF_INET);
            p.__bindgen_anon_1.ipv4_nh = nh;
            unsafe {
                bpf_redirect_neigh(
                    fib.ifindex,
                    &mut p,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                ) as i32
            }
        }
    })
}

/// Hands a routed frame to the tunnel device with the MACs it expects.
fn to_device(ctx: &TcContext, tunnel: &Tunnel, dmac: Mac, smac: Mac) -> i32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + packet::ETH_HLEN > end {
        return TC_ACT_SHOT;
    }
    // SAFETY: the twelve bytes written lie within the bounds checked.
    unsafe {
        dmac.put(data);
        smac.put(data + 6);
    }
    stats::count(Stat::PodToRemote);
    // SAFETY: a plain helper call.
    unsafe { bpf_redirect(tunnel.ifindex, 0) as i32 }
}

/// Looks up, in `fib`, the node's route to another node as the device's
/// own route lookup would find it: the interface and MACs are left in
/// `fib`, and the next hop is returned when its MAC is for the kernel to
/// resolve (Some) or already known (None inside). None for no route, or a
/// route back into the tunnel.
fn underlay(
    ctx: &TcContext,
    fib: &mut FibParams,
    veth: u32,
    src: u32,
    remote: u32,
    tunnel_ifindex: u32,
) -> Option<Option<u32>> {
    // From the pod's veth, as for the pod's own lookup.
    let rc = fib::lookup(ctx, fib, src, remote, 0, veth);
    if fib.ifindex == tunnel_ifindex {
        return None;
    }
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Some(None),
        // SAFETY: the lookup wrote the next hop's address here.
        BPF_FIB_LKUP_RET_NO_NEIGH => Some(Some(unsafe { fib.__bindgen_anon_4.ipv4_dst })),
        _ => None,
    }
}

/// The checksum of the outer IPv4 header [`send`] writes, from its fields
/// (the others are constants or zero). Addresses and `id` as written.
fn ipv4_checksum(tos: u8, len: u16, id: u16, src: u32, dst: u32) -> u16 {
    let word = |v: u32| (v & 0xffff) + (v >> 16);
    let mut sum = 0x4500 + u32::from(tos) + u32::from(len);
    sum += u32::from(u16::from_be(id)) + (u32::from(OUTER_TTL) << 8) + u32::from(IPPROTO_UDP);
    sum += word(u32::from_be(src)) + word(u32::from_be(dst));
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be()
}

/// A MAC address as two integers, in the order of its bytes.
#[derive(Clone, Copy)]
struct Mac(u32, u16);

impl Mac {
    fn of(m: &[u8; 6]) -> Self {
        Self(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]),
            u16::from_ne_bytes([m[4], m[5]]),
        )
    }

    /// Writes the address at `addr` in the packet.
    ///
    /// # Safety
    /// As for [`put`], for six bytes.
    unsafe fn put(self, addr: usize) {
        put(addr, self.0);
        put(addr + 4, self.1);
    }
}

/// Writes `v` at `addr` in the packet.
///
/// # Safety
/// `addr..addr + size_of::<T>()` must lie within the packet's bounds
/// checked against `data_end`.
unsafe fn put<T>(addr: usize, v: T) {
    core::ptr::write_unaligned(addr as *mut T, v);
}
