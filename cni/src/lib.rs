//! Pod networking for kestrel: an address from the node's pod CIDR, a veth
//! pair between the node and the pod, and routes through a link-local
//! gateway. No bridge: the node routes to each pod over its own veth, and
//! both sides carry permanent neighbour entries so nothing ever ARPs.
//!
//! The node agent calls [`add`], [`del`] and [`check`] in-process; the
//! `kestrel-cni` binary wraps them in the CNI plugin protocol.
//!
//! "The node" is the network namespace of the thread that calls these
//! functions (the agent may itself run inside a namespace). They must be
//! called from within a tokio runtime with I/O enabled; they never move a
//! runtime thread into another namespace.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use netlink_packet_route::route::RouteScope;
use sha2::{Digest, Sha256};

mod check;
pub mod config;
mod error;
mod ipam;
mod netlink;
mod netns;

pub use check::check;
pub use error::Error;
pub use ipnet;

use check::check_in;
use error::{check_failed, io_err};

use ipam::Pool;
use netlink::{Netlink, Route};
use netns::{run_in, NetnsFd};

/// The link-local gateway every pod routes through. It exists as an address
/// nowhere: the pod reaches it through a permanent neighbour entry that
/// points at the host end of its veth.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// One pod network on one node.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// Network name; leases live under `data_dir/<name>/`.
    pub name: String,
    /// The node's pod CIDR. `.1` is left to the node.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    /// The largest TCP aggregate the pod's veth sends and receives whole.
    /// Above [`LEGACY_GSO_MAX_SIZE`] this is BIG TCP: the same bytes cross
    /// the datapath as fewer, larger frames, each paying the per-frame
    /// cost of the programs and the veth once.
    pub gso_max_size: u32,
    pub data_dir: PathBuf,
}

/// The aggregate size every interface starts with, and the most an IPv4
/// packet can say in its length field.
pub const LEGACY_GSO_MAX_SIZE: u32 = 65_536;

/// The largest aggregate the kernel builds (its `GSO_MAX_SIZE`).
pub const MAX_GSO_MAX_SIZE: u32 = 524_280;

/// Where a pod's interface goes.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    /// The pod's network namespace: /run/netns/X, /proc/PID/ns/net or a
    /// bind mount of one.
    pub netns: PathBuf,
    /// Interface name inside the pod, usually eth0.
    pub ifname: String,
}

/// What [`add`] built, and what the datapath needs to reach the pod.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub pod_mac: [u8; 6],
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub mtu: u32,
}

/// The host end's name: "kst" and 11 hex digits of sha256(container id).
/// Deterministic, so DEL finds it from the container id alone, and 14 bytes,
/// within the kernel's 15.
pub fn host_ifname(container_id: &str) -> String {
    let digest = Sha256::digest(container_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("kst{}", &hex[..11])
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn validate_conf(conf: &NetConf) -> Result<(), Error> {
    let invalid = |field: &str, reason: String| Error::InvalidConfig {
        field: field.into(),
        reason,
    };
    // The name becomes a directory under data_dir.
    if conf.name.is_empty()
        || conf.name == "."
        || conf.name == ".."
        || !conf.name.chars().all(valid_name_char)
    {
        return Err(invalid(
            "name",
            format!(
                "{:?} must be non-empty and use only letters, digits, '_', '-' and '.'",
                conf.name
            ),
        ));
    }
    if conf.subnet != conf.subnet.trunc() {
        return Err(invalid(
            "subnet",
            format!(
                "{} has host bits set (the network is {})",
                conf.subnet,
                conf.subnet.trunc()
            ),
        ));
    }
    if ipam::assignable(&conf.subnet).is_none() {
        return Err(invalid(
            "subnet",
            format!(
                "{} is too small: a pod CIDR needs at least a /30",
                conf.subnet
            ),
        ));
    }
    if !(LEGACY_GSO_MAX_SIZE..=MAX_GSO_MAX_SIZE).contains(&conf.gso_max_size) {
        return Err(invalid(
            "gsoMaxSize",
            format!(
                "{} is outside {LEGACY_GSO_MAX_SIZE}..={MAX_GSO_MAX_SIZE}",
                conf.gso_max_size
            ),
        ));
    }
    if !(68..=65535).contains(&conf.mtu) {
        return Err(invalid(
            "mtu",
            format!("{} is outside 68..=65535", conf.mtu),
        ));
    }
    if !conf.data_dir.is_absolute() {
        return Err(invalid(
            "dataDir",
            format!("{} is not an absolute path", conf.data_dir.display()),
        ));
    }
    Ok(())
}

fn invalid_arg(name: &str, reason: String) -> Error {
    Error::InvalidArgument {
        name: name.into(),
        reason,
    }
}

fn validate_container_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || !id.chars().all(valid_name_char) {
        return Err(invalid_arg(
            "CNI_CONTAINERID",
            format!("{id:?} must be non-empty and use only letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

fn validate_ifname(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid_arg(
            "CNI_IFNAME",
            format!(
                "{name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"
            ),
        ));
    }
    Ok(())
}

/// Opens the pod's namespace and makes sure it is one, and not the node's.
fn open_pod_netns(path: &Path, node: &NetnsFd) -> Result<NetnsFd, Error> {
    if path.as_os_str().is_empty() {
        return Err(invalid_arg("CNI_NETNS", "is empty".into()));
    }
    let ns = NetnsFd::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            Error::NoSuchNetns {
                path: path.to_path_buf(),
                source,
            }
        } else {
            Error::Io {
                op: format!("opening {}", path.display()),
                source,
            }
        }
    })?;
    if !ns.is_netns() {
        return Err(invalid_arg(
            "CNI_NETNS",
            format!("{} is not a network namespace", path.display()),
        ));
    }
    // Wiring the node to itself would put eth0 and its routes on the node.
    if ns
        .same_as(node)
        .map_err(io_err("comparing network namespaces"))?
    {
        return Err(invalid_arg(
            "CNI_NETNS",
            format!("{} is the node's own network namespace", path.display()),
        ));
    }
    Ok(ns)
}

fn node_netns() -> Result<NetnsFd, Error> {
    NetnsFd::current().map_err(io_err("opening the node's network namespace"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(join_error(e)))
}

fn join_error(e: tokio::task::JoinError) -> Error {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    Error::Io {
        op: "the operation was cancelled by the runtime shutting down".into(),
        source: io::Error::other(e),
    }
}

/// Runs `fut` as its own task: dropping the caller's future (a timeout, a
/// cancelled request) must not stop an ADD between creating things and
/// rolling them back.
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(fut)
        .await
        .unwrap_or_else(|e| Err(join_error(e)))
}

/// Wires a pod: leases an address and builds the veth pair, addresses,
/// routes and neighbour entries. On failure it removes whatever it built and
/// releases the lease. For a container that is already wired as asked it
/// returns the existing endpoint; a half-wired one is rebuilt.
pub async fn add(conf: &NetConf, att: &Attachment) -> Result<Endpoint, Error> {
    validate_conf(conf)?;
    validate_container_id(&att.container_id)?;
    validate_ifname(&att.ifname)?;
    let node = node_netns()?;
    let pod = open_pod_netns(&att.netns, &node)?;
    let (conf, att) = (conf.clone(), att.clone());
    detached(async move { add_in(&conf, &att, &node, &pod).await }).await
}

async fn add_in(
    conf: &NetConf,
    att: &Attachment,
    node: &NetnsFd,
    pod: &NetnsFd,
) -> Result<Endpoint, Error> {
    let pool = Pool::new(conf)?;
    let id = att.container_id.clone();
    if let Some(ip) = blocking(move || pool.lookup(&id)).await? {
        if let Ok(ep) = check_in(conf, att, node, pod, ip).await {
            return Ok(ep);
        }
    }
    let pool = Pool::new(conf)?;
    let id = att.container_id.clone();
    let ip = blocking(move || pool.allocate(&id)).await?;
    match build(conf, att, node, pod, ip).await {
        Ok(ep) => Ok(ep),
        Err(e) => {
            // The veth's peer dies with it, and the routes and neighbour
            // entries with their devices, so this is all there is to undo.
            // A failure here is not reported over the original error: the
            // runtime follows a failed ADD with a DEL, which retries both.
            let host = host_ifname(&att.container_id);
            if let Ok(nl) = Netlink::connect(node).await {
                let _ = nl.delete_link(&host).await;
            }
            let pool = Pool::new(conf)?;
            let id = att.container_id.clone();
            let _ = blocking(move || pool.release(&id)).await;
            Err(e)
        }
    }
}

async fn build(
    conf: &NetConf,
    att: &Attachment,
    node: &NetnsFd,
    pod: &NetnsFd,
    ip: Ipv4Addr,
) -> Result<Endpoint, Error> {
    let host_name = host_ifname(&att.container_id);
    let pod_path = format!("pod netns {}", att.netns.display());
    let node_nl = Netlink::connect(node)
        .await
        .map_err(io_err("opening a netlink socket in the node namespace"))?;
    let pod_nl = Netlink::connect(pod)
        .await
        .map_err(io_err(format!("opening a netlink socket in {pod_path}")))?;

    // A leftover of an earlier attempt for this container, cut short before
    // it could roll back or found broken by the retry; its pod end goes
    // with it, which frees the interface name in the pod.
    node_nl
        .delete_link(&host_name)
        .await
        .map_err(io_err(format!("removing a stale {host_name}")))?;
    if pod_nl
        .link(&att.ifname)
        .await
        .map_err(io_err(format!("looking up {} in {pod_path}", att.ifname)))?
        .is_some()
    {
        return Err(invalid_arg(
            "CNI_IFNAME",
            format!("{} already exists in {pod_path}", att.ifname),
        ));
    }
    node_nl
        .add_veth(&host_name, &att.ifname, pod, conf.mtu, conf.gso_max_size)
        .await
        .map_err(io_err(format!(
            "creating the veth pair {host_name} / {} in {pod_path}",
            att.ifname
        )))?;

    let host = node_nl
        .link(&host_name)
        .await
        .map_err(io_err(format!("looking up {host_name}")))?
        .ok_or_else(|| vanished(host_name.clone()))?;
    let eth = pod_nl
        .link(&att.ifname)
        .await
        .map_err(io_err(format!("looking up {} in {pod_path}", att.ifname)))?
        .ok_or_else(|| vanished(format!("{} in {pod_path}", att.ifname)))?;

    // Pod side. Routes need their device up, and the default route needs
    // the gateway reachable on-link first.
    let in_pod = |what: &str| io_err(format!("{what} in {pod_path}"));
    pod_nl
        .add_address(eth.index, ip, 32)
        .await
        .map_err(in_pod(&format!("adding {ip}/32 to {}", att.ifname)))?;
    pod_nl
        .set_up(eth.index)
        .await
        .map_err(in_pod(&format!("setting {} up", att.ifname)))?;
    pod_nl
        .replace_route(&gateway_route(eth.index))
        .await
        .map_err(in_pod(&format!("adding the route to {GATEWAY}")))?;
    pod_nl
        .replace_route(&default_route(eth.index))
        .await
        .map_err(in_pod(&format!("adding the default route via {GATEWAY}")))?;
    pod_nl
        .set_neighbour(eth.index, GATEWAY, &host.mac)
        .await
        .map_err(in_pod(&format!("adding the neighbour entry for {GATEWAY}")))?;

    // Node side.
    node_nl
        .set_up(host.index)
        .await
        .map_err(io_err(format!("setting {host_name} up")))?;
    node_nl
        .replace_route(&host_route(ip, host.index))
        .await
        .map_err(io_err(format!("adding the route {ip}/32 dev {host_name}")))?;
    node_nl
        .set_neighbour(host.index, ip, &eth.mac)
        .await
        .map_err(io_err(format!(
            "adding the neighbour entry for {ip} on {host_name}"
        )))?;
    set_forwarding(node, &host_name).await?;

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

/// Someone else deleted a link between its creation and its first lookup.
fn vanished(what: String) -> Error {
    Error::Io {
        op: format!("{what} vanished right after it was created"),
        source: io::ErrorKind::NotFound.into(),
    }
}

fn gateway_route(eth: u32) -> Route {
    Route {
        dst: GATEWAY,
        prefix: 32,
        gateway: None,
        oif: Some(eth),
        scope: RouteScope::Link,
    }
}

fn default_route(eth: u32) -> Route {
    Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        gateway: Some(GATEWAY),
        oif: Some(eth),
        scope: RouteScope::Universe,
    }
}

fn host_route(ip: Ipv4Addr, host: u32) -> Route {
    Route {
        dst: ip,
        prefix: 32,
        gateway: None,
        oif: Some(host),
        scope: RouteScope::Link,
    }
}

fn forwarding_path(host_name: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{host_name}/forwarding")
}

/// Lets the node route what the pod sends (to other pods, or out). Only the
/// host end's own switch: the global ones would turn every interface of the
/// node into a router. /proc/sys/net shows the namespace of the thread that
/// opens it, hence the helper thread.
async fn set_forwarding(node: &NetnsFd, host_name: &str) -> Result<(), Error> {
    let path = forwarding_path(host_name);
    run_in(node, {
        let path = path.clone();
        move || std::fs::write(&path, "1")
    })
    .await
    .map_err(io_err(format!("writing 1 to {path}")))
}

async fn read_forwarding(node: &NetnsFd, host_name: &str) -> Result<String, Error> {
    let path = forwarding_path(host_name);
    run_in(node, {
        let path = path.clone();
        move || std::fs::read_to_string(&path)
    })
    .await
    .map(|s| s.trim().to_string())
    .map_err(io_err(format!("reading {path}")))
}

/// Unwires a pod: removes its host veth (the pod end goes with it), its host
/// route and its lease. Whatever is already gone, including the pod's
/// namespace, counts as done.
pub async fn del(conf: &NetConf, att: &Attachment) -> Result<(), Error> {
    validate_conf(conf)?;
    validate_container_id(&att.container_id)?;
    let node = node_netns()?;
    let (conf, att) = (conf.clone(), att.clone());
    detached(async move { del_in(&conf, &att, &node).await }).await
}

async fn del_in(conf: &NetConf, att: &Attachment, node: &NetnsFd) -> Result<(), Error> {
    let host_name = host_ifname(&att.container_id);
    let pool = Pool::new(conf)?;
    let id = att.container_id.clone();
    let leased = blocking(move || pool.lookup(&id)).await?;
    let nl = Netlink::connect(node)
        .await
        .map_err(io_err("opening a netlink socket in the node namespace"))?;
    if let Some(host) = nl
        .link(&host_name)
        .await
        .map_err(io_err(format!("looking up {host_name}")))?
    {
        if let Some(ip) = leased {
            nl.delete_route(&host_route(ip, host.index))
                .await
                .map_err(io_err(format!(
                    "removing the route {ip}/32 dev {host_name}"
                )))?;
        }
        nl.delete_link(&host_name)
            .await
            .map_err(io_err(format!("removing {host_name}")))?;
    }
    let pool = Pool::new(conf)?;
    let id = att.container_id.clone();
    blocking(move || pool.release(&id)).await?;
    Ok(())
}

/// Every lease of the network, as (address, container id), in address
/// order. Includes leases outside the current subnet, should it have
/// changed since they were made.
pub fn leases(conf: &NetConf) -> Result<Vec<(Ipv4Addr, String)>, Error> {
    validate_conf(conf)?;
    Pool::new(conf)?.list()
}

#[cfg(test)]
mod tests;
