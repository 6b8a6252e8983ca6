//! ICMP errors (destination unreachable, fragmentation needed among them,
//! and time exceeded) about a packet the datapath translated come back to
//! the node's address, quoting the packet as it was sent: from the node's
//! address and a port of ours. They are translated back, the outer
//! destination and the quoted source both, so the pod that sent the
//! packet learns of the error (and of the path MTU).

use agent_ebpf_common::{Config, NatKey, Stat};
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};

use crate::{local, nat, nodeport, packet};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_ECHO_REQUEST: u8 = 8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IP_CSUM_OFF: usize = packet::ETH_HLEN + 10;

/// Folds a ones' complement update of one 16-bit word into `csum`
/// (RFC 1624). Words are taken as they lie in the packet; the sum does
/// not depend on byte order.
fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!csum) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update16(csum, old as u16, new as u16);
    update16(c, (old >> 16) as u16, (new >> 16) as u16)
}

/// An ICMP error for the node's address `dst` about a masqueraded flow or
/// a node port flow to a backend on this node: translated back and
/// delivered to the pod. None when it is none of those.
pub fn error_in(ctx: &TcContext, cfg: &Config, dst: u32) -> Option<i32> {
    let vihl: u8 = ctx.load(packet::ETH_HLEN).ok()?;
    let proto: u8 = ctx.load(packet::ETH_HLEN + 9).ok()?;
    if proto != packet::IPPROTO_ICMP {
        return None;
    }
    let l4 = packet::ETH_HLEN + usize::from(vihl & 0x0f) * 4;
    let ty: u8 = ctx.load(l4).ok()?;
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return None;
    }
    // The quoted packet: its IP header whole, then at least 8 bytes.
    let inner = l4 + 8;
    let ivihl: u8 = ctx.load(inner).ok()?;
    let ihl = usize::from(ivihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let iproto: u8 = ctx.load(inner + 9).ok()?;
    let isrc: u32 = ctx.load(inner + 12).ok()?;
    let idst: u32 = ctx.load(inner + 16).ok()?;
    if isrc != dst {
        return None;
    }
    let il4 = inner + ihl;
    let (port_off, csum_off, remote_port) = match iproto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let rp: u16 = ctx.load(il4 + 2).ok()?;
            let csum_off = if iproto == IPPROTO_TCP {
                il4 + 16
            } else {
                il4 + 6
            };
            (il4, csum_off, u16::from_be(rp))
        }
        packet::IPPROTO_ICMP => {
            let ity: u8 = ctx.load(il4).ok()?;
            if ity != ICMP_ECHO_REQUEST {
                return None;
            }
            (il4 + 4, il4 + 2, 0)
        }
        _ => return None,
    };
    let old_port: u16 = ctx.load(port_off).ok()?;
    // The key of the reply the quoted packet would have had: the shape of
    // both the masquerade's reply entries and node port flows.
    let key = NatKey {
        src: idst,
        dst: isrc,
        sport: remote_port,
        dport: u16::from_be(old_port),
        proto: iproto,
        pad: [0; 3],
    };
    let (addr, port) = match nat::reply_target(cfg, &key) {
        Some(t) => t,
        None => nodeport::local_backend(cfg, &key)?,
    };
    let new_port = port.to_be();

    // The quoted IP header stays valid, so its words still sum to zero
    // and the ICMP checksum only follows what changes after it: the
    // quoted port and the quoted L4 checksum.
    let mut icmp_csum: u16 = ctx.load(l4 + 2).ok()?;
    let icsum: u16 = ctx.load(inner + 10).ok()?;
    ctx.store(inner + 10, &update32(icsum, isrc, addr), 0)
        .ok()?;
    ctx.store(inner + 12, &addr, 0).ok()?;
    // A long enough quote carries the L4 checksum; a UDP checksum of 0
    // means none was computed.
    if let Ok(old_l4) = ctx.load::<u16>(csum_off) {
        if !(iproto == IPPROTO_UDP && old_l4 == 0) {
            let mut l4c = update16(old_l4, old_port, new_port);
            if iproto != packet::IPPROTO_ICMP {
                l4c = update32(l4c, isrc, addr);
            }
            ctx.store(csum_off, &l4c, 0).ok()?;
            icmp_csum = update16(icmp_csum, old_l4, l4c);
        }
    }
    ctx.store(port_off, &new_port, 0).ok()?;
    icmp_csum = update16(icmp_csum, old_port, new_port);
    ctx.store(l4 + 2, &icmp_csum, 0).ok()?;
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(dst), u64::from(addr), 4)
        .ok()?;
    ctx.store(packet::IP_DST_OFF, &addr, 0).ok()?;
    Some(match local::endpoint(addr) {
        Some(ep) => local::deliver(ctx, &ep, Stat::IcmpErrorIn).unwrap_or(TC_ACT_SHOT),
        None => TC_ACT_SHOT,
    })
}
