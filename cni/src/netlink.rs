//! The few rtnetlink requests the plugin makes, on a connection bound to one
//! network namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{run_in, NetnsFd};

/// A route as far as the plugin cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
}

/// A link as far as the plugin cares.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
    /// For a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// A connection whose socket lives in one namespace. The connection task is
/// aborted on drop: it would otherwise outlive every handle, since it keeps
/// waiting for unsolicited messages nobody reads.
pub(crate) struct Netlink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn nl_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

pub(crate) fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

impl Netlink {
    /// Opens a route socket inside `ns`.
    pub(crate) async fn connect(ns: &NetnsFd) -> io::Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = run_in(ns, move || {
            // The socket is registered with the caller's reactor, but created
            // here so that it belongs to `ns`.
            let _enter = rt.enter();
            let (conn, handle, _unsolicited) = rtnetlink::new_connection()?;
            Ok((conn, handle))
        })
        .await?;
        let task = tokio::spawn(conn);
        Ok(Self { handle, task })
    }

    pub(crate) async fn link(&self, name: &str) -> io::Result<Option<Link>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(parse_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = nl_error(e);
                if is_errno(&e, libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Deletes a link by name; false if there was none.
    pub(crate) async fn delete_link(&self, name: &str) -> io::Result<bool> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl_error(e);
                if is_errno(&e, libc::ENODEV) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a veth pair whose peer is born inside `peer_ns` under its final
    /// name, so it never exists in this namespace under a temporary name and
    /// there is no separate move that could fail halfway.
    pub(crate) async fn add_veth(
        &self,
        name: &str,
        peer_name: &str,
        peer_ns: &NetnsFd,
        mtu: u32,
        gso_max_size: u32,
    ) -> io::Result<()> {
        let peer = big_tcp(
            LinkMessageBuilder::<LinkUnspec>::default()
                .name(peer_name)
                .mtu(mtu)
                .setns_by_fd(peer_ns.raw()),
            gso_max_size,
        )
        .build();
        let msg = big_tcp(LinkVeth::new(name, peer_name).mtu(mtu), gso_max_size)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_error)
    }

    pub(crate) async fn set_up(&self, index: u32) -> io::Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_error)
    }

    pub(crate) async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .replace()
            .execute()
            .await
            .map_err(nl_error)
    }

    /// IPv4 addresses (with prefix length) on a link.
    pub(crate) async fn addresses(&self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = stream.try_next().await.map_err(nl_error)? {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    out.push((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a route in the main table.
    pub(crate) async fn replace_route(&self, r: &Route) -> io::Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst, r.prefix)
            .scope(r.scope);
        if let Some(gw) = r.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(nl_error)
    }

    /// Deletes a route; false if there was none.
    pub(crate) async fn delete_route(&self, r: &Route) -> io::Result<bool> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst, r.prefix)
            .scope(r.scope);
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        match self.handle.route().del(b.build()).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl_error(e);
                if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENODEV) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The IPv4 routes of the main table.
    pub(crate) async fn routes(&self) -> io::Result<Vec<Route>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(query).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(nl_error)? {
            if let Some(r) = parse_main_route(&msg) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Sets a permanent neighbour entry, so neither side ever has to ARP.
    pub(crate) async fn set_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: &[u8; 6],
    ) -> io::Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_error)
    }

    /// The link-layer address of a permanent IPv4 neighbour entry, if any.
    pub(crate) async fn permanent_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut stream = self.handle.neighbours().get().execute();
        while let Some(msg) = stream.try_next().await.map_err(nl_error)? {
            if msg.header.family != AddressFamily::Inet
                || msg.header.ifindex != index
                || msg.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let mut dst = None;
            let mut lladdr = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l.clone()),
                    _ => {}
                }
            }
            if dst == Some(ip) {
                return Ok(lladdr);
            }
        }
        Ok(None)
    }
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        mac: [0; 6],
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        peer_index: None,
    };
    let mut is_veth = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Link(i) => link.peer_index = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                is_veth = infos.iter().any(|i| {
                    matches!(
                        i,
                        netlink_packet_route::link::LinkInfo::Kind(InfoKind::Veth)
                    )
                })
            }
            _ => {}
        }
    }
    if !is_veth {
        link.peer_index = None;
    }
    link
}

fn parse_main_route(msg: &RouteMessage) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut route = Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
        scope: msg.header.scope,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(route)
}

/// Sets the IPv4 aggregate sizes at creation, so no frame ever crosses the
/// pair at another size. At the legacy size nothing is sent: kernels before
/// 6.3 know no such attribute, and that size is every link's default.
fn big_tcp<T>(b: LinkMessageBuilder<T>, gso_max_size: u32) -> LinkMessageBuilder<T> {
    if gso_max_size <= crate::LEGACY_GSO_MAX_SIZE {
        return b;
    }
    b.append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(gso_max_size))
        .append_extra_attribute(LinkAttribute::GroIpv4MaxSize(gso_max_size))
}
