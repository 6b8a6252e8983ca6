//! The VXLAN mode (`--tunnel vxlan`), for nodes that do not share one L2
//! segment: a VXLAN device per node, and for every other node a route to
//! its pod CIDR through that node's tunnel endpoint, with the endpoint's
//! MAC and underlay address written in statically (no multicast, no
//! learning).
//!
//! A node's tunnel endpoint needs no announcement: its MAC is derived from
//! the node's address and its overlay address is the first address of its
//! pod CIDR, both known from the Node object.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::LinkVxlan;

/// Name of the agent's VXLAN device.
pub const DEVICE: &str = "kst-vxlan";
/// The VXLAN network identifier every node uses.
pub const VNI: u32 = 1;
/// UDP port of the tunnel (the Linux default for VXLAN).
pub const PORT: u16 = 8472;
/// Bytes VXLAN adds to each packet (outer IPv4, UDP, VXLAN, Ethernet).
pub const OVERHEAD: u32 = 50;

/// The tunnel endpoint MAC of the node at `ip`: locally administered,
/// unicast, and unique per node address.
pub fn endpoint_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// A remote node's tunnel endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The node's underlay address.
    pub node_ip: Ipv4Addr,
    /// The overlay address routes point at: the pod CIDR's first address.
    pub overlay_ip: Ipv4Addr,
}

/// Makes (or finds) the VXLAN device on `uplink` and returns its index.
pub async fn ensure_device(
    handle: &rtnetlink::Handle,
    uplink_index: u32,
    node_ip: Ipv4Addr,
    mtu: u32,
) -> Result<u32, rtnetlink::Error> {
    if let Some(index) = index_of(handle, DEVICE).await? {
        return Ok(index);
    }
    let msg = LinkVxlan::new(DEVICE, VNI)
        .dev(uplink_index)
        .port(PORT)
        .local(node_ip)
        .learning(false)
        // RFC 7348: the outer UDP checksum SHOULD be zero over IPv4; the
        // inner packet carries its own. Linux computes one unless told.
        .udp_csum(false)
        .mtu(mtu)
        .address(endpoint_mac(node_ip).to_vec())
        .up()
        .build();
    handle.link().add(msg).execute().await?;
    index_of(handle, DEVICE)
        .await?
        .ok_or(rtnetlink::Error::RequestFailed)
}

async fn index_of(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the VXLAN device (for `agent reset`).
pub async fn remove_device(handle: &rtnetlink::Handle) -> Result<(), rtnetlink::Error> {
    if let Some(index) = index_of(handle, DEVICE).await? {
        handle.link().del(index).execute().await?;
    }
    Ok(())
}

/// Makes the device's static neighbours and forwarding entries exactly
/// those of `peers`.
pub async fn sync_peers(
    handle: &rtnetlink::Handle,
    index: u32,
    peers: &[Peer],
) -> Result<(), rtnetlink::Error> {
    // Stale entries first: a node that left, or changed address.
    let entries: Vec<NeighbourMessage> = handle.neighbours().get().execute().try_collect().await?;
    for e in entries.iter().filter(|e| e.header.ifindex == index) {
        let keep = match e.header.family {
            AddressFamily::Inet => e.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))
                    if peers.iter().any(|p| p.overlay_ip == *ip))
            }),
            AddressFamily::Bridge => e.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))
                    if peers.iter().any(|p| p.node_ip == *ip))
            }),
            _ => true,
        };
        if !keep {
            handle.neighbours().del(e.clone()).execute().await?;
        }
    }
    for p in peers {
        let mac = endpoint_mac(p.node_ip);
        handle
            .neighbours()
            .add(index, IpAddr::V4(p.overlay_ip))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await?;
        handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(IpAddr::V4(p.node_ip))
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await?;
    }
    Ok(())
}
