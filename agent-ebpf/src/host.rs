//! Frames from a pod to its own node. A pod under egress policy reaches
//! its node only where a policy allows (the agent gives the node's address
//! the cluster DNS's identity, since the node answers it), but its answers
//! on connections the node opened to it, the agent's probes among them,
//! always pass: the kernel's socket lookup finds the node's end of them.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4},
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::TcContext,
};

use crate::packet;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_LISTEN: u32 = 10;
/// BPF_F_CURRENT_NETNS: the lookup stays in the namespace of the device
/// the frame arrived on, the node's.
const CURRENT_NETNS: u64 = u64::MAX;

/// Whether the frame from pod `src` to its node `dst` answers a connection
/// the node opened: a TCP socket of the node's that is past listening (a
/// pod's own connection to a node's server meets the listener, or the
/// listener behind a half-open request), or a UDP socket connected to the
/// pod's address and port (a server's unconnected socket is not one).
pub fn answers_node(ctx: &TcContext, src: u32, dst: u32) -> bool {
    let Some(f) = packet::flow(ctx, true) else {
        return false;
    };
    // SAFETY: an all-zero tuple is valid; the IPv4 half is filled below.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4 = Tuple4 {
        saddr: src,
        daddr: dst,
        sport: f.sport.to_be(),
        dport: f.dport.to_be(),
    };
    let size = core::mem::size_of::<Tuple4>() as u32;
    let skb = ctx.skb.skb as *mut _;
    // SAFETY: the helpers read `size` bytes of the tuple; a socket they
    // return is released below, on every path.
    let sk: *mut bpf_sock = unsafe {
        match f.proto {
            IPPROTO_TCP => bpf_sk_lookup_tcp(skb, &mut tuple, size, CURRENT_NETNS, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, &mut tuple, size, CURRENT_NETNS, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the lookup returned, held until released; single
    // field loads, as the verifier allows them.
    let (state, peer_ip, peer_port) = unsafe {
        (
            core::ptr::read_volatile(&(*sk).state),
            core::ptr::read_volatile(&(*sk).dst_ip4),
            core::ptr::read_volatile(&(*sk).dst_port),
        )
    };
    unsafe { bpf_sk_release(sk as *mut _) };
    if f.proto == IPPROTO_TCP {
        state != TCP_LISTEN
    } else {
        peer_ip == src && peer_port == f.sport.to_be()
    }
}
