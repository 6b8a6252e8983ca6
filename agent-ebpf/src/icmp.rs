//! ICMP errors about translated flows: a router's "fragmentation needed"
//! or a server's "port unreachable" quotes the packet as it left the node,
//! translated, so it names the node's address and port. Translated back to
//! what its sender sent, it reaches the sender's socket, and path MTU
//! discovery and connection refusal work through every translation:
//! - a masqueraded flow: the error goes to the pod;
//! - a node port flow to a backend here: an error about the backend's reply
//!   (which left from the node port) goes to the backend;
//! - a node port flow to a backend on another node, both ways: an error
//!   about the client's frame on its way to the backend goes back to the
//!   client, one about the backend's reply on its way to the client goes
//!   to the backend's node. Both then come from the node's address, as
//!   from a NAT box, which is what both ends think they talk to;
//! - a backend here that refuses a node port client's frame itself (a
//!   closed UDP port): its error quotes the frame as delivered to it, and
//!   goes to the client as about the frame it sent to the node port.
//!
//! The quoted packet starts 8 bytes into the ICMP message: its IP header,
//! then at least the first 8 bytes of its L4 header (the ports, or an echo
//! request's identifier), as RFC 792 requires of every sender.

use agent_ebpf_common::{Config, NatKey};
use aya_ebpf::programs::TcContext;

use crate::packet::{ETH_HLEN, IPPROTO_ICMP, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF};
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

/// Where an ICMP error went once translated.
pub enum Translated {
    /// To the pod on this node at this address.
    Pod(u32),
    /// Out again: to a node port's client, or to its backend's node.
    Forward,
}

/// Where the parts of an ICMP error sit in the frame.
struct Quote {
    /// The ICMP header.
    icmp: usize,
    /// The quoted IP header.
    inner: usize,
}

impl Quote {
    /// The quoted address at `at` (the quote's source or destination)
    /// becomes `new`; the quote's IP checksum follows, and the ICMP
    /// checksum, which covers the whole quote, follows both.
    #[inline(always)]
    fn set_addr(&self, ctx: &TcContext, at: usize, old: u32, new: u32) -> Option<()> {
        let inner_csum = self.inner + 10;
        let old_csum: u16 = ctx.load(inner_csum).ok()?;
        ctx.l3_csum_replace(inner_csum, u64::from(old), u64::from(new), 4)
            .ok()?;
        let new_csum: u16 = ctx.load(inner_csum).ok()?;
        ctx.store(at, &new, 0).ok()?;
        let icmp_csum = self.icmp + ICMP_CSUM;
        ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 4)
            .ok()?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_csum), u64::from(new_csum), 2)
            .ok()
    }

    /// The quoted port at `at` becomes `new` (both host order). The quoted
    /// L4 checksum is left as it is: the receiving kernel matches the quote
    /// to a socket by addresses and ports and never verifies a checksum
    /// inside an ICMP payload (and a TCP quote is usually cut before it).
    #[inline(always)]
    fn set_port(&self, ctx: &TcContext, at: usize, old: u16, new: u16) -> Option<()> {
        ctx.store(at, &new.to_be(), 0).ok()?;
        ctx.l4_csum_replace(
            self.icmp + ICMP_CSUM,
            u64::from(old.to_be()),
            u64::from(new.to_be()),
            2,
        )
        .ok()
    }
}

/// The outer header's address at `at` becomes `new`: ICMP has no
/// pseudo-header, so only the IP checksum sees it.
#[inline(always)]
fn set_outer(ctx: &TcContext, at: usize, old: u32, new: u32) -> Option<()> {
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .ok()?;
    ctx.store(at, &new, 0).ok()
}

/// An ICMP error's parts: where they sit, and the quoted packet's protocol
/// and addresses.
struct Error {
    q: Quote,
    inner: usize,
    /// The quoted L4 header.
    l4: usize,
    inner_proto: u8,
    inner_src: u32,
    inner_dst: u32,
}

/// Parses an ICMP destination unreachable or time exceeded; None for any
/// other frame.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Error> {
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
    Some(Error {
        q: Quote { icmp, inner },
        inner,
        l4: inner + usize::from(inner_vihl & 0x0f) * 4,
        inner_proto: ctx.load(inner + 9).ok()?,
        inner_src: ctx.load(inner + 12).ok()?,
        inner_dst: ctx.load(inner + 16).ok()?,
    })
}

/// Translates an ICMP error for the node's address whose quoted packet
/// left the node translated (see the module's list); None when the frame
/// is something else, which stays the stack's.
pub fn error_in(ctx: &TcContext, cfg: &Config, dst: u32) -> Option<Translated> {
    if dst != cfg.node_ip {
        return None;
    }
    let Error {
        q,
        inner,
        l4,
        inner_proto,
        inner_src,
        inner_dst,
    } = parse(ctx)?;
    if inner_src != cfg.node_ip {
        return None;
    }
    // Where the node's port sits in the quoted L4 header, and the remote's
    // port as the reply maps key it (0 for echo, which has none).
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
    // masqueraded flow, a client's flow to a node port (whose reply the
    // quote is), or a remote backend's reply to a node port flow (whose
    // forwarded frame the quote is).
    let key = NatKey {
        src: inner_dst,
        dst: inner_src,
        sport: remote_port,
        dport: node_port,
        proto: inner_proto,
        pad: [0; 3],
    };
    if let Some(back) = nat::reply_target(&key) {
        return to_pod(ctx, &q, dst, back.addr, (port_off, node_port, back.port));
    }
    if inner_proto == IPPROTO_ICMP {
        return None;
    }
    let outer_src: u32 = ctx.load(IP_SRC_OFF).ok()?;
    if let Some(flow) = nodeport::flow(&key) {
        if flow.nat_port == 0 {
            let ports = (port_off, node_port, flow.backend_port);
            return to_pod(ctx, &q, dst, flow.backend_ip, ports);
        }
        // The quote is the reply as it left for the client (node:node port
        // to client); the backend sent it as backend to node:NAT port.
        q.set_addr(ctx, inner + 12, inner_src, flow.backend_ip)?;
        q.set_port(ctx, l4, node_port, flow.backend_port)?;
        q.set_addr(ctx, inner + 16, inner_dst, cfg.node_ip)?;
        q.set_port(ctx, l4 + 2, remote_port, flow.nat_port)?;
        set_outer(ctx, IP_SRC_OFF, outer_src, cfg.node_ip)?;
        set_outer(ctx, IP_DST_OFF, dst, flow.backend_ip)?;
        return Some(Translated::Forward);
    }
    let client = nodeport::reply(&key)?;
    // The quote is the client's frame as it left for the backend (node:NAT
    // port to backend); the client sent it to node:node port.
    q.set_addr(ctx, inner + 12, inner_src, client.client_ip)?;
    q.set_port(ctx, l4, node_port, client.client_port)?;
    q.set_addr(ctx, inner + 16, inner_dst, cfg.node_ip)?;
    q.set_port(ctx, l4 + 2, remote_port, client.node_port)?;
    set_outer(ctx, IP_SRC_OFF, outer_src, cfg.node_ip)?;
    set_outer(ctx, IP_DST_OFF, dst, client.client_ip)?;
    Some(Translated::Forward)
}

/// The quote's source (the node, and the node's port at `ports.0`, which
/// is `ports.1`) becomes the pod's `addr` and port `ports.2`, as the pod
/// sent it, and so does the outer destination. Inlined: BPF functions
/// take at most five arguments in registers.
#[inline(always)]
fn to_pod(
    ctx: &TcContext,
    q: &Quote,
    dst: u32,
    addr: u32,
    ports: (usize, u16, u16),
) -> Option<Translated> {
    let (port_off, node_port, port) = ports;
    q.set_addr(ctx, q.inner + 12, dst, addr)?;
    q.set_port(ctx, port_off, node_port, port)?;
    set_outer(ctx, IP_DST_OFF, dst, addr)?;
    Some(Translated::Pod(addr))
}

/// An ICMP error a pod on this node sends about a node port flow to it
/// (its socket refused the client's datagram, say). The quote is the
/// client's frame as delivered to the pod; the client sent it to the node
/// port, and hears about it from the node. Returns whether it was one.
pub fn error_from_pod(ctx: &TcContext, cfg: &Config) -> Option<()> {
    let Error {
        q,
        inner,
        l4,
        inner_proto,
        inner_src,
        inner_dst,
    } = parse(ctx)?;
    let pod: u32 = ctx.load(IP_SRC_OFF).ok()?;
    // A pod speaks only of frames it was sent.
    if inner_dst != pod || (inner_proto != IPPROTO_TCP && inner_proto != IPPROTO_UDP) {
        return None;
    }
    let client_port: u16 = ctx.load(l4).ok()?;
    let pod_port: u16 = ctx.load(l4 + 2).ok()?;
    let (client_port, pod_port) = (u16::from_be(client_port), u16::from_be(pod_port));
    // Keyed as the pod's replies to the flow are.
    let key = NatKey {
        src: pod,
        dst: inner_src,
        sport: pod_port,
        dport: client_port,
        proto: inner_proto,
        pad: [0; 3],
    };
    let flow = nodeport::reply(&key)?;
    q.set_addr(ctx, inner + 16, pod, cfg.node_ip)?;
    q.set_port(ctx, l4 + 2, pod_port, flow.node_port)?;
    set_outer(ctx, IP_SRC_OFF, pod, cfg.node_ip)
}
