//! CHECK: the kernel state of a wired pod compared with what ADD builds.

use std::net::Ipv4Addr;

use crate::ipam::Pool;
use crate::netlink::{Netlink, Route};
use crate::netns::NetnsFd;
use crate::{
    blocking, check_failed, default_route, gateway_route, host_ifname, host_route, io_err,
    node_netns, open_pod_netns, read_forwarding, validate_conf, validate_container_id,
    validate_ifname, Attachment, Endpoint, Error, NetConf, GATEWAY,
};

/// Verifies that the pod is wired as [`add`] left it, and returns its
/// endpoint. The error names the first thing found missing or different.
pub async fn check(conf: &NetConf, att: &Attachment) -> Result<Endpoint, Error> {
    validate_conf(conf)?;
    validate_container_id(&att.container_id)?;
    validate_ifname(&att.ifname)?;
    let node = node_netns()?;
    let pod = open_pod_netns(&att.netns, &node)?;
    let pool = Pool::new(conf)?;
    let id = att.container_id.clone();
    let ip = blocking(move || pool.lookup(&id)).await?.ok_or_else(|| {
        check_failed(format!(
            "no address of {} in network {} is leased to container {}",
            conf.subnet, conf.name, att.container_id
        ))
    })?;
    check_in(conf, att, &node, &pod, ip).await
}

fn mac_str(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(crate) async fn check_in(
    conf: &NetConf,
    att: &Attachment,
    node: &NetnsFd,
    pod: &NetnsFd,
    ip: Ipv4Addr,
) -> Result<Endpoint, Error> {
    let host_name = host_ifname(&att.container_id);
    let ifname = &att.ifname;
    let pod_path = format!("pod netns {}", att.netns.display());
    let node_nl = Netlink::connect(node)
        .await
        .map_err(io_err("opening a netlink socket in the node namespace"))?;
    let pod_nl = Netlink::connect(pod)
        .await
        .map_err(io_err(format!("opening a netlink socket in {pod_path}")))?;
    let q = |what: String| io_err(format!("querying {what}"));

    let eth = pod_nl
        .link(ifname)
        .await
        .map_err(q(format!("{ifname} in {pod_path}")))?
        .ok_or_else(|| check_failed(format!("{pod_path} has no interface {ifname}")))?;
    let host = node_nl
        .link(&host_name)
        .await
        .map_err(q(host_name.clone()))?
        .ok_or_else(|| check_failed(format!("the host interface {host_name} does not exist")))?;
    if eth.peer_index != Some(host.index) || host.peer_index != Some(eth.index) {
        return Err(check_failed(format!(
            "{ifname} in {pod_path} is not the veth peer of {host_name}"
        )));
    }
    if !host.up {
        return Err(check_failed(format!(
            "the host interface {host_name} is down"
        )));
    }
    if !eth.up {
        return Err(check_failed(format!("{ifname} in {pod_path} is down")));
    }
    for (name, link) in [(host_name.as_str(), &host), (ifname.as_str(), &eth)] {
        if link.mtu != conf.mtu {
            return Err(check_failed(format!(
                "{name} has MTU {}, the network configuration says {}",
                link.mtu, conf.mtu
            )));
        }
    }

    let addrs = pod_nl
        .addresses(eth.index)
        .await
        .map_err(q(format!("the addresses in {pod_path}")))?;
    if !addrs.contains(&(ip, 32)) {
        return Err(check_failed(format!(
            "{ifname} in {pod_path} does not have its address {ip}/32"
        )));
    }
    let pod_routes = pod_nl
        .routes()
        .await
        .map_err(q(format!("the routes in {pod_path}")))?;
    let has = |routes: &[Route], want: &Route| {
        routes.iter().any(|r| {
            r.dst == want.dst
                && r.prefix == want.prefix
                && r.gateway == want.gateway
                && r.oif == want.oif
        })
    };
    if !has(&pod_routes, &gateway_route(eth.index)) {
        return Err(check_failed(format!(
            "{pod_path} has no route to {GATEWAY} dev {ifname}"
        )));
    }
    if !has(&pod_routes, &default_route(eth.index)) {
        return Err(check_failed(format!(
            "{pod_path} has no default route via {GATEWAY} dev {ifname}"
        )));
    }
    let gw_mac = pod_nl
        .permanent_neighbour(eth.index, GATEWAY)
        .await
        .map_err(q(format!("the neighbours in {pod_path}")))?;
    if gw_mac.as_deref() != Some(&host.mac[..]) {
        return Err(check_failed(format!(
            "{pod_path} has no permanent neighbour entry {GATEWAY} -> {} on {ifname}",
            mac_str(&host.mac)
        )));
    }

    let node_routes = node_nl
        .routes()
        .await
        .map_err(q("the node's routes".into()))?;
    if !has(&node_routes, &host_route(ip, host.index)) {
        return Err(check_failed(format!(
            "the node has no route {ip}/32 dev {host_name}"
        )));
    }
    let pod_mac = node_nl
        .permanent_neighbour(host.index, ip)
        .await
        .map_err(q("the node's neighbours".into()))?;
    if pod_mac.as_deref() != Some(&eth.mac[..]) {
        return Err(check_failed(format!(
            "the node has no permanent neighbour entry {ip} -> {} on {host_name}",
            mac_str(&eth.mac)
        )));
    }
    if read_forwarding(node, &host_name).await? != "1" {
        return Err(check_failed(format!(
            "IPv4 forwarding is off on {host_name}"
        )));
    }

    Ok(Endpoint {
        ip,
        gateway: GATEWAY,
        pod_mac: eth.mac,
        host_ifname: host_name,
        host_ifindex: host.index,
        host_mac: host.mac,
        mtu: conf.mtu,
    })
}
