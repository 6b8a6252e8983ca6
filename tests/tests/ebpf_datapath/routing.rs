//! `from_pod` and `from_uplink` routing: local delivery, other nodes' pods,
//! the stack's own traffic, and masquerading both ways.

use kestrel_agent::ebpf::abi::{self, Stat};

use crate::common::{
    frame, key, seen, Bench, GATEWAY_MAC, HOST_MAC, NODE, OTHER_POD, OUTSIDE, POD, POD_MAC,
    REMOTE_POD, TCP, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, UDP,
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
