//! `from_pod` and `from_uplink` routing: local delivery, other nodes' pods,
//! the stack's own traffic, and masquerading both ways.

use kestrel_agent::ebpf::abi::{self, Stat};

use kestrel_agent::ebpf::abi::Tunnel;

use crate::common::{
    fold, frame, key, seen, Bench, GATEWAY_MAC, HOST_MAC, NODE, OTHER_POD, OUTSIDE, POD, POD_MAC,
    REMOTE_POD, TCP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TUNNEL_ENDPOINT_MAC, TUNNEL_NODE,
    TUNNEL_NODE_MAC, TUNNEL_POD, TUNNEL_PORT, UDP,
};

#[test]
fn from_pod_delivers_locally_routes_to_other_nodes_and_leaves_the_rest_to_the_stack() {
    let b = Bench::new();

    // Another pod of this node: straight to its veth peer, untouched, as
    // a bridge would pass it (the peer redirect marks it for the pod).
    let sent = frame(TCP, (POD, 40000), (OTHER_POD, 80));
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, sent, "same-node delivery writes nothing");
    assert_eq!(b.stat(Stat::PodToLocal), 1);

    // From another node to a pod of this one: the same, on the uplink.
    let sent = frame(TCP, (REMOTE_POD, 40000), (OTHER_POD, 80));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, sent);
    assert_eq!(b.stat(Stat::UplinkToLocal), 1);

    // Another node's pod: through the gateway the FIB names, unmasqueraded.
    let (ret, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40000), (REMOTE_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!(
        (s.dst_mac, s.src_mac, s.ttl),
        (GATEWAY_MAC, b.uplink_mac, 63)
    );
    assert_eq!((s.src, s.dst), ((POD, 40000), (REMOTE_POD, 53)));
    assert_eq!(b.stat(Stat::PodToRemote), 1);

    // The node itself: the stack's business, the frame untouched.
    let sent = frame(TCP, (POD, 40000), (NODE, 10250));
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(out, sent);
    assert_eq!(b.stat(Stat::PodToStack), 1);
    assert_eq!(b.stat(Stat::SnatOut), 0, "nothing was masqueraded");
}

/// In tunnel mode a frame for another node's pod leaves wrapped in the
/// headers the VXLAN device would write, towards that node's underlay
/// address; the inner frame is the one the device would have carried.
#[test]
fn from_pod_wraps_frames_for_tunnel_peers_in_vxlan() {
    let mut b = Bench::new();
    let (tunnel, device_mac) = b.tunnel();
    let sent = frame(TCP, (POD, 40000), (TUNNEL_POD, 80));
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), sent.len() + 50, "{out:02x?}");
    assert_eq!(b.stat(Stat::PodToTunnel), 1);

    // Outer Ethernet: to the other node's MAC, from the uplink's.
    assert_eq!(out[0..6], TUNNEL_NODE_MAC);
    assert_eq!(out[6..12], b.uplink_mac);
    assert_eq!(out[12..14], [0x08, 0x00]);
    // Outer IPv4: node to node, UDP, a valid checksum, the whole length.
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(fold(0, ip), 0, "outer IPv4 checksum");
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        out.len() - 14
    );
    assert_eq!((ip[8], ip[9]), (64, UDP), "TTL and protocol");
    assert_eq!(ip[12..16], NODE.octets());
    assert_eq!(ip[16..20], TUNNEL_NODE.octets());
    // UDP: to the tunnel's port, from one the flow's hash picks, no
    // checksum, its own length.
    let udp = &out[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!((32768..=60999).contains(&sport), "source port {sport}");
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), TUNNEL_PORT);
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        out.len() - 34
    );
    assert_eq!(udp[6..8], [0, 0], "zero UDP checksum");
    // VXLAN: the VNI-present flag and VNI 1.
    assert_eq!(out[42..50], [0x08, 0, 0, 0, 0, 0, 1, 0]);
    // The pod's frame inside, routed: for the node's tunnel endpoint,
    // from the device, one hop fewer, checksums intact.
    let inner = seen(&out[50..]);
    assert_eq!(inner.dst_mac, TUNNEL_ENDPOINT_MAC);
    assert_eq!(inner.src_mac, device_mac);
    assert_eq!(inner.ttl, 63);
    assert_eq!((inner.src, inner.dst), ((POD, 40000), (TUNNEL_POD, 80)));
    assert_eq!(out[50 + 34..], sent[34..], "the TCP segment is untouched");

    // The same flow again picks the same source port (one path for one
    // flow through the underlay).
    let (_, again) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(again[34..36], out[34..36]);

    // Tunnel packets for the node go to the device's socket at once.
    let vxlan = frame(UDP, (TUNNEL_NODE, 40000), (NODE, TUNNEL_PORT));
    let (ret, arrived) = b.run(abi::FROM_UPLINK_PROGRAM, &vxlan);
    assert_eq!((ret, &arrived), (TC_ACT_OK, &vxlan));
    assert_eq!(b.stat(Stat::TunnelIn), 1);

    // `--vxlan-encap device`: the device wraps, tunnel packets still skip
    // the lookups.
    b.set_tunnel(Tunnel {
        ifindex: 0,
        ..tunnel
    });
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(
        (ret, out.len()),
        (TC_ACT_REDIRECT, sent.len()),
        "not wrapped"
    );
    let (ret, _) = b.run(abi::FROM_UPLINK_PROGRAM, &vxlan);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(b.stat(Stat::TunnelIn), 2);

    // With no tunnel written the device carries the frame, as before.
    b.set_tunnel(Tunnel::default());
    let (ret, out) = b.run(abi::FROM_POD_PROGRAM, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), sent.len(), "not wrapped");
    assert_eq!(seen(&out).dst_mac, TUNNEL_ENDPOINT_MAC);
    assert_eq!(
        b.stat(Stat::PodToTunnel),
        2,
        "two wrapped above, none since"
    );
    let (ret, _) = b.run(abi::FROM_UPLINK_PROGRAM, &vxlan);
    assert_eq!(ret, TC_ACT_OK);
    assert_eq!(b.stat(Stat::TunnelIn), 2, "no tunnel: the usual lookups");
}

#[test]
fn masquerade_rewrites_both_directions_with_valid_checksums() {
    let mut b = Bench::new();
    for proto in [TCP, UDP] {
        let (ret, out) = b.run(
            abi::FROM_POD_PROGRAM,
            &frame(proto, (POD, 40000), (OUTSIDE, 443)),
        );
        assert_eq!(ret, TC_ACT_REDIRECT, "proto {proto}");
        let s = seen(&out);
        assert_eq!(s.src.0, NODE, "the source is the node's address");
        let port = s.src.1;
        assert!(
            (abi::NAT_PORT_MIN..=abi::NAT_PORT_MIN + (abi::NAT_PORT_COUNT - 1)).contains(&port),
            "source port {port} outside the NAT range"
        );
        assert_eq!(s.dst, (OUTSIDE, 443));
        assert!(b
            .nat_out()
            .iter()
            .any(|(k, p)| k.src == key(POD) && k.proto == proto && *p == port));

        // The same flow again keeps its port.
        let (_, again) = b.run(
            abi::FROM_POD_PROGRAM,
            &frame(proto, (POD, 40000), (OUTSIDE, 443)),
        );
        assert_eq!(seen(&again).src, (NODE, port));

        // The reply, arriving on the uplink for the node, goes to the pod.
        let (ret, out) = b.run(
            abi::FROM_UPLINK_PROGRAM,
            &frame(proto, (OUTSIDE, 443), (NODE, port)),
        );
        assert_eq!(ret, TC_ACT_REDIRECT, "proto {proto}");
        let s = seen(&out);
        assert_eq!((s.src, s.dst), ((OUTSIDE, 443), (POD, 40000)));
        assert_eq!((s.dst_mac, s.src_mac), (POD_MAC, HOST_MAC));
    }
    assert_eq!(b.stat(Stat::SnatOut), 4);
    assert_eq!(b.stat(Stat::SnatIn), 2);

    // A node address and port nobody holds: left to the stack as is.
    let stray = frame(UDP, (OUTSIDE, 443), (NODE, 61001));
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &stray);
    assert_eq!((ret, out), (TC_ACT_OK, stray));

    // A reply for a pod that is gone is dropped, not handed to the stack
    // half translated.
    let (_, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40001), (OUTSIDE, 443)),
    );
    let port = seen(&out).src.1;
    b.remove_endpoint(POD);
    let (ret, _) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(UDP, (OUTSIDE, 443), (NODE, port)),
    );
    assert_eq!(ret, TC_ACT_SHOT);
}
