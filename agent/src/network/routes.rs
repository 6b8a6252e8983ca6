//! Routes to other nodes' pod CIDRs (native routing), kept equal to the
//! Node objects. The FIB lookup in `from_pod` follows them.
//!
//! Every route the agent writes carries its own routing protocol number, so
//! it can find and remove its own routes, and only those, after a restart.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::RouteMessageBuilder;

/// The `proto` of routes written by the agent (`ip route` shows "proto 211"; iproute2 names none of 200-239).
pub const ROUTE_PROTOCOL: u8 = 211;

/// One route to another node's pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub pod_cidr: Ipv4Net,
    pub via: Ipv4Addr,
    /// The device, for routes through a tunnel (`onlink`: the next hop is
    /// reached over the tunnel, not a local subnet). None: wherever the
    /// next hop is.
    pub dev: Option<u32>,
}

impl NodeRoute {
    /// Whether the kernel's route `have` is this one.
    fn is(&self, have: &NodeRoute) -> bool {
        self.pod_cidr == have.pod_cidr
            && self.via == have.via
            && (self.dev.is_none() || self.dev == have.dev)
    }
}

/// A netlink handle in the agent's network namespace.
pub struct Routes {
    handle: rtnetlink::Handle,
}

impl Routes {
    pub fn new() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The netlink handle, for the tunnel's neighbours.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The routes this agent wrote earlier, as the kernel has them.
    pub async fn current(&self) -> Result<Vec<NodeRoute>, rtnetlink::Error> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> =
            self.handle.route().get(msg).execute().try_collect().await?;
        Ok(routes
            .into_iter()
            .filter(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
            .filter_map(|r| {
                let mut dst = None;
                let mut via = None;
                let mut dev = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                        RouteAttribute::Oif(i) => dev = Some(*i),
                        _ => {}
                    }
                }
                Some(NodeRoute {
                    pod_cidr: Ipv4Net::new(dst?, r.header.destination_prefix_length).ok()?,
                    via: via?,
                    dev,
                })
            })
            .collect())
    }

    /// Makes the agent's routes exactly `want`: adds or replaces what is
    /// missing or different, removes the rest. Each route is its own
    /// change: one the kernel refuses (a next hop no interface reaches) is
    /// reported in the result and the others are made all the same.
    pub async fn sync(&self, want: &[NodeRoute]) -> Result<Synced, rtnetlink::Error> {
        let have = self.current().await?;
        let mut done = Synced::default();
        for r in have.iter().filter(|r| !want.iter().any(|w| w.is(r))) {
            // A CIDR that moved to another node is replaced below instead.
            if want.iter().any(|w| w.pod_cidr == r.pod_cidr) {
                continue;
            }
            match self.handle.route().del(message(r)).execute().await {
                Ok(()) => done.changed += 1,
                Err(e) => done.failed.push((r.clone(), e)),
            }
        }
        for r in want.iter().filter(|w| !have.iter().any(|h| w.is(h))) {
            match self
                .handle
                .route()
                .add(message(r))
                .replace()
                .execute()
                .await
            {
                Ok(()) => done.changed += 1,
                Err(e) => done.failed.push((r.clone(), e)),
            }
        }
        Ok(done)
    }
}

/// What one [`Routes::sync`] did.
#[derive(Debug, Default)]
pub struct Synced {
    /// Routes added, replaced or removed.
    pub changed: usize,
    /// Routes the kernel would not add (or remove), with its answer.
    pub failed: Vec<(NodeRoute, rtnetlink::Error)>,
}

fn message(r: &NodeRoute) -> RouteMessage {
    let b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.pod_cidr.network(), r.pod_cidr.prefix_len())
        .gateway(r.via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    match r.dev {
        Some(dev) => b.output_interface(dev).onlink().build(),
        None => b.build(),
    }
}
