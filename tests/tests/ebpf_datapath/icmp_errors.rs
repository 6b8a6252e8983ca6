//! ICMP errors about node port flows reaching the backend and the client
//! they concern.

use std::net::Ipv4Addr;

use kestrel_agent::ebpf::abi::{self, Stat};

use crate::common::{
    fold, frame, seen, Bench, CLIENT, GATEWAY_MAC, NODE, NODE_PORT, OTHER_POD, POD, POD_MAC,
    REMOTE_POD, TCP, TC_ACT_OK, TC_ACT_REDIRECT, UDP,
};

/// A "fragmentation needed" (next-hop MTU 1280) that `from` sends to the
/// node about `quoted`, a frame as it left the node: its IP header and the
/// first 8 bytes after it, as routers quote.
fn frag_needed(from: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    icmp_about(from, NODE, 4, quoted)
}

/// An ICMP destination unreachable with `code` from `from` to `to` about
/// `quoted`.
fn icmp_about(from: Ipv4Addr, to: Ipv4Addr, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&1280u16.to_be_bytes());
    icmp.extend_from_slice(&quoted[14..14 + 20 + 8]);
    let csum = fold(0, &icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x56, 0x78, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let csum = fold(0, &ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = quoted[..14].to_vec();
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An ICMP error as a test reads it back, after checking its outer IPv4,
/// ICMP and quoted IPv4 checksums from scratch.
struct IcmpError {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// The quoted packet's source and destination, with their ports.
    quoted: ((Ipv4Addr, u16), (Ipv4Addr, u16)),
}

fn icmp_error(f: &[u8]) -> IcmpError {
    let ip = &f[14..34];
    assert_eq!(fold(0, ip), 0, "outer IPv4 checksum of {f:02x?}");
    assert_eq!(ip[9], 1, "not ICMP: {f:02x?}");
    assert_eq!(fold(0, &f[34..]), 0, "ICMP checksum of {f:02x?}");
    let q = &f[42..];
    assert_eq!(fold(0, &q[..20]), 0, "quoted IPv4 checksum of {f:02x?}");
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
    IcmpError {
        src: addr(&ip[12..16]),
        dst: addr(&ip[16..20]),
        quoted: ((addr(&q[12..16]), port(20)), (addr(&q[16..20]), port(22))),
    }
}

#[test]
fn an_icmp_error_about_a_node_port_reply_reaches_the_local_backend() {
    let mut b = Bench::new();
    b.node_port(POD, 8080);
    let (ret, _) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);

    // A router on the client's side refuses the backend's reply, which
    // left from the node port.
    let router = Ipv4Addr::new(192, 168, 50, 254);
    let reply = frame(TCP, (NODE, NODE_PORT), (CLIENT, 5555));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frag_needed(router, &reply));
    assert_eq!(ret, TC_ACT_REDIRECT, "delivered to the backend");
    assert_eq!(out[..6], POD_MAC);
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (router, POD));
    assert_eq!(
        e.quoted,
        ((POD, 8080), (CLIENT, 5555)),
        "the quote is the reply as the backend sent it"
    );
    assert_eq!(b.stat(Stat::IcmpErrorIn), 1);

    // An error about a flow the node never saw stays the stack's.
    let stray = frag_needed(router, &frame(TCP, (NODE, NODE_PORT), (CLIENT, 6666)));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &stray);
    assert_eq!((ret, out), (TC_ACT_OK, stray));
}

#[test]
fn icmp_errors_about_a_node_port_flow_to_a_remote_backend_reach_both_ends() {
    let mut b = Bench::new();
    b.node_port(REMOTE_POD, 8080);
    let (ret, forwarded) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let nat_port = seen(&forwarded).src.1;

    // The backend's side refuses the frame the node forwarded: the client
    // hears it from the node, about the frame it sent.
    let gateway = Ipv4Addr::new(192, 168, 50, 2);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frag_needed(gateway, &forwarded));
    assert_eq!(ret, TC_ACT_REDIRECT, "forwarded to the client");
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (NODE, CLIENT));
    assert_eq!(e.quoted, ((CLIENT, 5555), (NODE, NODE_PORT)));
    assert_eq!(b.stat(Stat::NodePortIcmpError), 1);

    // The client's side refuses the backend's reply as the node sent it on:
    // the backend's node hears it from the node, about the reply the
    // backend sent.
    let router = Ipv4Addr::new(192, 168, 50, 254);
    let reply = frame(TCP, (NODE, NODE_PORT), (CLIENT, 5555));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &frag_needed(router, &reply));
    assert_eq!(ret, TC_ACT_REDIRECT, "forwarded to the backend's node");
    assert_eq!(out[..6], GATEWAY_MAC);
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (NODE, REMOTE_POD));
    assert_eq!(e.quoted, ((REMOTE_POD, 8080), (NODE, nat_port)));
    assert_eq!(b.stat(Stat::NodePortIcmpError), 2);
    assert_eq!(b.stat(Stat::IcmpErrorIn), 0, "nothing went to a local pod");

    // An error about another client's flow, which the node never saw,
    // stays the stack's.
    let stray = frame(TCP, (NODE, nat_port), (REMOTE_POD, 8081));
    let stray = frag_needed(gateway, &stray);
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &stray);
    assert_eq!((ret, out), (TC_ACT_OK, stray));
}

#[test]
fn a_local_backends_port_unreachable_reaches_the_node_ports_client() {
    let mut b = Bench::new();
    b.node_port_for(UDP, POD, 8080);
    let (ret, delivered) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(UDP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);

    // Nothing listens on the backend's port: its kernel refuses the
    // datagram it was handed, which the client sent to the node port.
    let (ret, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &icmp_about(POD, CLIENT, 3, &delivered),
    );
    assert_eq!(ret, TC_ACT_REDIRECT, "forwarded to the client");
    let e = icmp_error(&out);
    assert_eq!((e.src, e.dst), (NODE, CLIENT));
    assert_eq!(e.quoted, ((CLIENT, 5555), (NODE, NODE_PORT)));
    assert_eq!(b.stat(Stat::NodePortIcmpError), 1);

    // A pod cannot speak of a frame it was not sent.
    let other = frame(UDP, (CLIENT, 5555), (OTHER_POD, 8080));
    let (_, out) = b.run(abi::FROM_POD_PROGRAM, &icmp_about(POD, CLIENT, 3, &other));
    assert_eq!(icmp_error(&out).src, POD, "left untranslated");
    assert_eq!(b.stat(Stat::NodePortIcmpError), 1);
}
