//! ICMP errors about translated flows: a router's "fragmentation needed"
//! or a server's "port unreachable" quotes the packet as it left the node,
//! masqueraded, so it names the node's address and port. Translated back
//! to what the pod sent, it reaches the pod's socket, and path MTU
//! discovery and connection refusal work through masquerade. The same
//! holds for a node port's backend on this node, whose replies leave from
//! the node's address and node port. Errors about flows to another node's
//! backend are not translated (yet).
//!
//! The quoted packet starts 8 bytes into the ICMP message: its IP header,
//! then at least the first 8 bytes of its L4 header (the ports, or an echo
//! request's identifier), as RFC 792 requires of every sender.

use agent_ebpf_common::{Config, NatKey};
use aya_ebpf::programs::TcContext;

use crate::packet::{ETH_HLEN, IPPROTO_ICMP, IP_CSUM_OFF, IP_DST_OFF};
use crate::{nat, nodeport};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Offset of the checksum inside an ICMP header.
const ICMP_CSUM: usize = 2;
/// Where the quoted packet starts inside an ICMP error.
const ICMP_QUOTE: usize = 8;

/// Translates an ICMP error for the node's address whose quoted packet is a
/// masqueraded flow, or a local backend's reply from a node port, back to
/// the pod that sent it; returns the pod's address when it did, None when
/// the frame is something else.
pub fn snat_error_in(ctx: &TcContext, cfg: &Config, dst: u32) -> Option<u32> {
    if dst != cfg.node_ip {
        return None;
    }
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    // A fragment after the first holds no ICMP header.
    if proto != IPPROTO_ICMP || u16::from_be(frag) & 0x1fff != 0 {
        return None;
    }
    // The masks bound every offset below (at most 14 + 60 + 8 + 60 + 8),
    // which the verifier needs for the loads and stores they feed.
    let icmp = ETH_HLEN + usize::from(vihl & 0x0f) * 4;
    let ty: u8 = ctx.load(icmp).ok()?;
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return None;
    }
    let inner = icmp + ICMP_QUOTE;
    let inner_vihl: u8 = ctx.load(inner).ok()?;
    let inner_proto: u8 = ctx.load(inner + 9).ok()?;
    let inner_src: u32 = ctx.load(inner + 12).ok()?;
    let inner_dst: u32 = ctx.load(inner + 16).ok()?;
    if inner_src != cfg.node_ip {
        return None;
    }
    let l4 = inner + usize::from(inner_vihl & 0x0f) * 4;
    // Where the node's port sits in the quoted L4 header, and the remote's
    // port as the reply map keys it (0 for echo, which has none).
    let (port_off, remote_port) = match inner_proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let dport: u16 = ctx.load(l4 + 2).ok()?;
            (l4, u16::from_be(dport))
        }
        IPPROTO_ICMP => {
            let inner_ty: u8 = ctx.load(l4).ok()?;
            if inner_ty != ICMP_ECHO_REQUEST {
                return None;
            }
            (l4 + 4, 0)
        }
        _ => return None,
    };
    let node_port: u16 = ctx.load(port_off).ok()?;
    let node_port = u16::from_be(node_port);
    // The quoted packet went from the node to the remote, so the quote
    // turned around is what the remote sends: the reply key of a
    // masqueraded flow, or a client's flow to a node port whose backend
    // on this node sent the quoted reply from the node port.
    let key = NatKey {
        src: inner_dst,
        dst: inner_src,
        sport: remote_port,
        dport: node_port,
        proto: inner_proto,
        pad: [0; 3],
    };
    let (addr, port) = match nat::reply_target(&key) {
        Some(back) => (back.addr, back.port),
        None => nodeport::local_backend(&key)?,
    };

    // The quoted header's checksum changes with its source; the ICMP
    // checksum covers the whole quote, so it follows the address, that
    // checksum and the port. The quoted L4 checksum is left as it is: the
    // receiving kernel matches the quote to a socket by addresses and
    // ports and never verifies a checksum inside an ICMP payload (and a
    // TCP quote is usually cut before it anyway).
    let inner_csum = inner + 10;
    let old_csum: u16 = ctx.load(inner_csum).ok()?;
    ctx.l3_csum_replace(inner_csum, u64::from(inner_src), u64::from(addr), 4)
        .ok()?;
    let new_csum: u16 = ctx.load(inner_csum).ok()?;
    ctx.store(inner + 12, &addr, 0).ok()?;
    ctx.store(port_off, &port.to_be(), 0).ok()?;
    let icmp_csum = icmp + ICMP_CSUM;
    ctx.l4_csum_replace(icmp_csum, u64::from(inner_src), u64::from(addr), 4)
        .ok()?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_csum), u64::from(new_csum), 2)
        .ok()?;
    ctx.l4_csum_replace(
        icmp_csum,
        u64::from(node_port.to_be()),
        u64::from(port.to_be()),
        2,
    )
    .ok()?;
    // The outer destination: ICMP has no pseudo-header, so only the IP
    // checksum sees it.
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(dst), u64::from(addr), 4)
        .ok()?;
    ctx.store(IP_DST_OFF, &addr, 0).ok()?;
    Some(addr)
}
