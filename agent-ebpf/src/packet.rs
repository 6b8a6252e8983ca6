//! Reading and rewriting IPv4 frames: header offsets, the parts of a flow
//! NAT touches, and the checksum updates every rewrite needs.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_TTL_OFF: usize = ETH_HLEN + 8;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;
pub const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const BPF_F_PSEUDO_HDR_SIZE2: u64 = 2;

/// The destination of an IPv4 frame, or None for anything else.
pub fn ipv4_dst(ctx: &TcContext) -> Option<u32> {
    ipv4_addrs(ctx).map(|(_, dst)| dst)
}

/// The source and destination of an IPv4 frame, or None for anything
/// else. Read in place when the headers are in the linear part of the
/// buffer (always, for what a local socket sends), which spares every
/// frame the helper calls of `load`; read by copy otherwise.
pub fn ipv4_addrs(ctx: &TcContext) -> Option<(u32, u32)> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + IP_DST_OFF + 4 <= end {
        // SAFETY: the bounds check above covers the Ethernet header and
        // both addresses; the verifier checks it too.
        unsafe {
            let proto = core::ptr::read_unaligned((data + 12) as *const u16);
            if proto != ETH_P_IP.to_be() {
                return None;
            }
            Some((
                core::ptr::read_unaligned((data + IP_SRC_OFF) as *const u32),
                core::ptr::read_unaligned((data + IP_DST_OFF) as *const u32),
            ))
        }
    } else {
        let proto: u16 = ctx.load(12).ok()?;
        if proto != ETH_P_IP.to_be() {
            return None;
        }
        Some((ctx.load(IP_SRC_OFF).ok()?, ctx.load(IP_DST_OFF).ok()?))
    }
}

/// Where the parts of a packet that NAT touches are.
pub struct Flow {
    pub proto: u8,
    /// Offset of the (local-side) port or ICMP identifier to rewrite.
    port_off: usize,
    /// Offset of the L4 checksum.
    csum_off: usize,
    /// Host byte order, as in `NatKey`.
    pub sport: u16,
    pub dport: u16,
    /// The TCP flags byte; 0 for UDP and ICMP.
    pub tcp_flags: u8,
}

/// Parses what NAT needs; None for what it leaves alone (fragments after
/// the first, other protocols, ICMP other than echo). `outgoing` picks the
/// port a [`rewrite`] changes: the source port, or the destination port.
pub fn flow(ctx: &TcContext, outgoing: bool) -> Option<Flow> {
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let l4 = ETH_HLEN + usize::from(vihl & 0x0f) * 4;
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let sport: u16 = ctx.load(l4).ok()?;
            let dport: u16 = ctx.load(l4 + 2).ok()?;
            let tcp_flags: u8 = if proto == IPPROTO_TCP {
                ctx.load(l4 + 13).ok()?
            } else {
                0
            };
            Some(Flow {
                proto,
                // Outgoing the pod's source port changes, incoming the
                // destination port.
                port_off: if outgoing { l4 } else { l4 + 2 },
                csum_off: if proto == IPPROTO_TCP {
                    l4 + 16
                } else {
                    l4 + 6
                },
                sport: u16::from_be(sport),
                dport: u16::from_be(dport),
                tcp_flags,
            })
        }
        IPPROTO_ICMP => {
            let ty: u8 = ctx.load(l4).ok()?;
            let want = if outgoing {
                ICMP_ECHO_REQUEST
            } else {
                ICMP_ECHO_REPLY
            };
            if ty != want {
                return None;
            }
            let id: u16 = ctx.load(l4 + 4).ok()?;
            let id = u16::from_be(id);
            Some(Flow {
                proto,
                port_off: l4 + 4,
                csum_off: l4 + 2,
                // The identifier plays the local port on both sides.
                sport: id,
                dport: id,
                tcp_flags: 0,
            })
        }
        _ => None,
    }
}

/// Rewrites an address at `addr_off` and a port at `flow.port_off`,
/// keeping the IP and L4 checksums right.
pub fn rewrite(
    ctx: &TcContext,
    f: &Flow,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> Option<()> {
    let udp = f.proto == IPPROTO_UDP;
    let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    if f.proto != IPPROTO_ICMP {
        // TCP and UDP checksums cover the addresses (pseudo-header); ICMP's
        // does not.
        ctx.l4_csum_replace(
            f.csum_off,
            u64::from(old_addr),
            u64::from(new_addr),
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .ok()?;
    }
    ctx.l4_csum_replace(
        f.csum_off,
        u64::from(old_port.to_be()),
        u64::from(new_port.to_be()),
        mangled | 2,
    )
    .ok()?;
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(new_addr), 4)
        .ok()?;
    ctx.store(addr_off, &new_addr, 0).ok()?;
    ctx.store(f.port_off, &new_port.to_be(), 0).ok()
}

/// A routed hop lowers the TTL, as the stack would; a frame about to expire
/// is left to the stack, which answers with ICMP time exceeded.
pub fn decrement_ttl(ctx: &TcContext) -> Option<()> {
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

/// Writes the destination and source MACs of the frame.
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Option<()> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    ctx.store(0, &macs, 0).ok()
}
