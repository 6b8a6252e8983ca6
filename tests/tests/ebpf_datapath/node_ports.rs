//! NodePorts translated to a local or a remote backend, and a new
//! connection on a closed flow's ports meeting the current backend.

use kestrel_agent::ebpf::abi::{self, Stat};

use crate::common::{
    frame, seen, Bench, CLIENT, GATEWAY_MAC, NODE, NODE_PORT, POD, POD_MAC, REMOTE_POD, TCP,
    TC_ACT_REDIRECT,
};

#[test]
fn node_port_to_a_local_backend_keeps_the_client_and_answers_from_the_node_port() {
    let mut b = Bench::new();
    b.node_port(POD, 8080);
    let (ret, out) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.dst), ((CLIENT, 5555), (POD, 8080)), "DNAT only");
    assert_eq!(s.dst_mac, POD_MAC);
    assert_eq!(b.stat(Stat::NodePortLocal), 1);

    // The backend's reply leaves from the node port, towards the client.
    let (ret, out) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(TCP, (POD, 8080), (CLIENT, 5555)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.dst), ((NODE, NODE_PORT), (CLIENT, 5555)));
    assert_eq!(b.stat(Stat::NodePortReply), 1);
    assert_eq!(
        b.stat(Stat::SnatOut),
        0,
        "a node port reply is not masqueraded"
    );
}

#[test]
fn node_port_to_a_remote_backend_is_translated_both_ways() {
    let mut b = Bench::new();
    b.node_port(REMOTE_POD, 8080);
    let (ret, out) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!(s.dst, (REMOTE_POD, 8080), "DNAT to the backend");
    assert_eq!(s.src.0, NODE, "SNAT to the node, so the reply comes back");
    let nat_port = s.src.1;
    assert!(nat_port >= abi::NAT_PORT_MIN, "source port {nat_port}");
    assert_eq!((s.dst_mac, s.src_mac), (GATEWAY_MAC, b.uplink_mac));
    assert_eq!(b.stat(Stat::NodePortRemote), 1);

    // The backend's reply reaches the node and goes back to the client
    // from the node port.
    let (ret, out) = b.run(
        abi::FROM_UPLINK_PROGRAM,
        &frame(TCP, (REMOTE_POD, 8080), (NODE, nat_port)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
    let s = seen(&out);
    assert_eq!((s.src, s.dst), ((NODE, NODE_PORT), (CLIENT, 5555)));
    assert_eq!(b.stat(Stat::NodePortReply), 1);
}

#[test]
fn a_new_connection_on_a_closed_node_port_flows_ports_picks_its_backend_again() {
    let mut b = Bench::new();
    b.node_port(REMOTE_POD, 8080);
    let syn = frame(TCP, (CLIENT, 5555), (NODE, NODE_PORT));
    let (_, out) = b.run(abi::FROM_UPLINK_PROGRAM, &syn);
    assert_eq!(seen(&out).dst, (REMOTE_POD, 8080));
    // The client resets the connection; the node port now has only a
    // backend on this node (externalTrafficPolicy turned Local, say).
    let mut rst = syn.clone();
    rst[14 + 20 + 13] = 0x14;
    b.run(abi::FROM_UPLINK_PROGRAM, &rst);
    b.node_port(POD, 8080);
    // A retransmitted segment of the old connection would keep its backend;
    // a new connection from the same port picks again.
    let (ret, out) = b.run(abi::FROM_UPLINK_PROGRAM, &syn);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(
        seen(&out).dst,
        (POD, 8080),
        "the new connection meets the current backend"
    );
}
