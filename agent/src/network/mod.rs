//! Pod networking on this node: addresses and veths through the `cni`
//! crate, routes to the other nodes' pods, and the eBPF datapath that
//! forwards between them.
//!
//! This is the seam between pods and the network: a pod worker asks for an
//! attachment when its sandbox exists and gives it back on teardown; what
//! carries the packets is the business of this module alone.

pub mod conntrack;
pub mod datapath;
pub mod peers;
pub mod routes;
pub mod vxlan;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
pub use kestrel_cni::Endpoint;
use kube::api::{Api, Patch, PatchParams};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;

use datapath::Datapath;
pub use peers::sync_routes;
use routes::Routes;

/// Network flags of `agent run`.
#[derive(Clone, Debug, clap::Args)]
pub struct NetworkArgs {
    /// This node's pod CIDR. Without it the agent waits for the one the
    /// controller-manager assigns (Node spec.podCIDR); with it, it records
    /// it in the Node when none is set.
    #[arg(long)]
    pub pod_cidr: Option<Ipv4Net>,
    /// The interface other nodes are reached through (default: the one
    /// holding the node's InternalIP).
    #[arg(long)]
    pub uplink: Option<String>,
    /// MTU of pod interfaces (default: the uplink's).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// The largest TCP aggregate a pod's veth carries whole, in bytes.
    /// Above 65536 this is BIG TCP. Default: 196608 when the uplink takes
    /// aggregates that large and traffic is routed natively, else 65536.
    /// Every interface pod traffic leaves by must take this size.
    #[arg(long, value_parser = clap::value_parser!(u32).range(
        kestrel_cni::LEGACY_GSO_MAX_SIZE as i64..=kestrel_cni::MAX_GSO_MAX_SIZE as i64
    ))]
    pub gso_max_size: Option<u32>,
    /// Where this agent pins its eBPF maps and links (default:
    /// /sys/fs/bpf/kestrel/NODE-NAME).
    #[arg(long)]
    pub bpffs_dir: Option<PathBuf>,
    /// The whole cluster's pod network: traffic inside it keeps pod
    /// addresses, traffic leaving it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// Masquerade pod traffic that leaves the cluster to the node's
    /// address (eBPF SNAT with its own conntrack); `false` leaves pod
    /// addresses visible outside, for networks that route pod CIDRs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// How pod traffic crosses between nodes: `none` routes it natively
    /// (nodes on one L2 segment), `vxlan` encapsulates it (any IP network
    /// between nodes; pod MTU 50 bytes below the uplink's).
    #[arg(long, value_enum, default_value_t = Tunnel::None)]
    pub tunnel: Tunnel,
    /// Who wraps pod traffic in VXLAN with `--tunnel vxlan`: `program`,
    /// the eBPF programs themselves (the device's transmit path skipped),
    /// or `device`, the kernel's VXLAN device, for NICs or underlays the
    /// programs' packets do not suit. Receiving is the device's either way.
    #[arg(long, value_enum, default_value_t = VxlanEncap::Program)]
    pub vxlan_encap: VxlanEncap,
    #[command(flatten)]
    pub conntrack: conntrack::ConntrackArgs,
}

/// Who encapsulates with `--tunnel vxlan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VxlanEncap {
    Program,
    Device,
}

/// Cross-node encapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tunnel {
    None,
    Vxlan,
}

/// The node's pod network.
pub struct Network {
    conf: kestrel_cni::NetConf,
    datapath: Mutex<Datapath>,
    pub pod_cidr: Ipv4Net,
    /// The whole cluster's pod network (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Net,
    pub pin_dir: PathBuf,
    /// The VXLAN device's index in tunnel mode.
    pub tunnel: Option<u32>,
}

/// The default bpffs directory of node `name`.
pub fn default_pin_dir(name: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/kestrel").join(name)
}

impl Network {
    /// Finds the pod CIDR, loads the datapath and attaches it to the uplink.
    pub async fn start(
        client: &kube::Client,
        node_name: &str,
        node_ip: Ipv4Addr,
        args: &NetworkArgs,
        state_dir: &Path,
    ) -> anyhow::Result<Arc<Self>> {
        let pod_cidr = pod_cidr(client, node_name, args.pod_cidr).await?;
        tracing::info!(%pod_cidr, "pod CIDR");
        // Netlink answers in microseconds; a dump that never ends must not
        // leave the agent silently stuck.
        let up = tokio::time::timeout(
            Duration::from_secs(15),
            uplink(node_ip, args.uplink.as_deref()),
        )
        .await
        .context("no answer from netlink about the uplink in 15 s")??;
        let (uplink, uplink_index, uplink_mtu) = (up.name, up.index, up.mtu);
        tracing::info!(%uplink, mtu = uplink_mtu, tso_max_size = up.tso_max_size, "uplink");
        let gso_max_size = args
            .gso_max_size
            .unwrap_or_else(|| big_tcp(args.tunnel, up.tso_max_size));
        if gso_max_size > up.gso_max_size {
            // The kernel segments in software whatever a device is sent
            // above its own GSO size: a pod's aggregate must leave as it is
            // or BIG TCP costs more than it saves. What it was is kept for
            // `agent reset`.
            remember_uplink(state_dir, &uplink, up.index, up.gso_max_size)?;
            tokio::time::timeout(
                Duration::from_secs(15),
                take_aggregates(up.index, gso_max_size),
            )
            .await
            .context("no answer from netlink about the uplink in 15 s")?
            .with_context(|| {
                format!("letting {uplink} send {gso_max_size}-byte aggregates (--gso-max-size)")
            })?;
        }
        let pod_mtu = match args.tunnel {
            Tunnel::None => uplink_mtu,
            Tunnel::Vxlan => uplink_mtu - vxlan::OVERHEAD,
        };
        let tunnel = match args.tunnel {
            Tunnel::None => None,
            Tunnel::Vxlan => {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                let task = tokio::spawn(conn);
                let index = vxlan::ensure_device(&handle, uplink_index, node_ip, pod_mtu).await;
                task.abort();
                Some(index.context("creating the VXLAN device")?)
            }
        };
        let pin_dir = args
            .bpffs_dir
            .clone()
            .unwrap_or_else(|| default_pin_dir(node_name));
        let object = crate::ebpf::object(None)?;
        tracing::info!(pins = %pin_dir.display(), "loading the datapath");
        let mut dp = Datapath::load(&object, &pin_dir)
            .with_context(|| format!("loading the datapath (pins in {})", pin_dir.display()))?;
        dp.configure(node_ip, args.cluster_cidr, args.masquerade)?;
        dp.configure_conntrack(args.conntrack.conntrack_pod_limit)?;
        dp.configure_tunnel(tunnel, args.vxlan_encap == VxlanEncap::Program)?;
        tokio::spawn(conntrack::run(
            pin_dir.clone(),
            conntrack::Timeouts::from_args(&args.conntrack),
            args.conntrack.conntrack_gc_interval,
        ));
        dp.attach_uplink(&uplink)
            .with_context(|| format!("attaching to the uplink {uplink}"))?;
        if tunnel.is_some() {
            // Decapsulated traffic for local pods arrives on the tunnel.
            dp.attach_uplink(vxlan::DEVICE)
                .context("attaching to the VXLAN device")?;
        }
        tracing::info!(%pod_cidr, %uplink, tunnel = ?args.tunnel, mtu = pod_mtu, gso_max_size, "pod network ready");
        Ok(Arc::new(Self {
            conf: kestrel_cni::NetConf {
                name: "kestrel".into(),
                subnet: pod_cidr,
                mtu: args.mtu.unwrap_or(pod_mtu),
                gso_max_size,
                data_dir: state_dir.join("cni"),
            },
            datapath: Mutex::new(dp),
            pod_cidr,
            cluster_cidr: args.cluster_cidr,
            pin_dir,
            tunnel,
        }))
    }

    fn attachment(id: &str, netns: &Path) -> kestrel_cni::Attachment {
        kestrel_cni::Attachment {
            container_id: id.to_string(),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
        }
    }

    /// Gives the pod `id` (whose network namespace is `netns`) its address
    /// and veth, and puts it in the datapath.
    pub async fn attach(&self, id: &str, netns: &Path) -> anyhow::Result<Endpoint> {
        let att = Self::attachment(id, netns);
        let ep = kestrel_cni::add(&self.conf, &att).await?;
        let added = self.datapath().add_endpoint(ep.ip, &ep);
        if let Err(e) = added {
            let _ = kestrel_cni::del(&self.conf, &att).await;
            return Err(e.into());
        }
        Ok(ep)
    }

    /// Puts an endpoint a previous agent made back into the datapath (the
    /// programs it loaded are swapped for ours).
    pub fn readopt(&self, ep: &Endpoint) -> anyhow::Result<()> {
        Ok(self.datapath().add_endpoint(ep.ip, ep)?)
    }

    /// Releases what `attach` made. Safe to repeat.
    pub async fn detach(&self, id: &str, netns: &Path, ep: Option<&Endpoint>) {
        self.forget(id, ep);
        if let Err(e) = kestrel_cni::del(&self.conf, &Self::attachment(id, netns)).await {
            tracing::warn!("releasing the network of {id}: {e}");
        }
    }

    /// Takes the pod out of the datapath (by its saved endpoint, or by its
    /// lease when the endpoint was never saved).
    fn forget(&self, id: &str, ep: Option<&Endpoint>) {
        let name = kestrel_cni::host_ifname(id);
        let ips: Vec<Ipv4Addr> = match ep {
            Some(ep) => vec![ep.ip],
            None => kestrel_cni::leases(&self.conf)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, owner)| owner == id)
                .map(|(ip, _)| ip)
                .collect(),
        };
        let mut dp = self.datapath();
        for ip in ips {
            if let Err(e) = dp.remove_endpoint(ip, &name) {
                tracing::warn!("removing {ip} from the datapath: {e}");
            }
        }
    }

    fn datapath(&self) -> std::sync::MutexGuard<'_, Datapath> {
        // A panic while holding the lock leaves the map as the kernel has
        // it, which is still consistent.
        self.datapath.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pod CIDR: from the flag (recorded in the Node if it has none), or
/// the one the controller-manager assigns, waited for.
async fn pod_cidr(
    client: &kube::Client,
    node_name: &str,
    flag: Option<Ipv4Net>,
) -> anyhow::Result<Ipv4Net> {
    let api: Api<Node> = Api::all(client.clone());
    let mut waited = false;
    loop {
        // A request the API server never answers must not stall the agent
        // for good: ask again.
        let node = match tokio::time::timeout(Duration::from_secs(5), api.get(node_name)).await {
            Ok(n) => n?,
            Err(_) => {
                tracing::warn!(
                    "no answer from the API server about this Node in 5 s; asking again"
                );
                continue;
            }
        };
        let assigned = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
        match (assigned, flag) {
            (Some(c), Some(f)) if c != f.to_string() => {
                anyhow::bail!("--pod-cidr {f} differs from the Node's spec.podCIDR {c}")
            }
            (Some(c), _) => {
                return c
                    .parse()
                    .with_context(|| format!("the Node's spec.podCIDR {c:?} is not an IPv4 CIDR"))
            }
            (None, Some(f)) => {
                let patch = serde_json::json!({"spec": {"podCIDR": f.to_string(), "podCIDRs": [f.to_string()]}});
                api.patch(node_name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                return Ok(f);
            }
            (None, None) => {
                if !waited {
                    tracing::info!(
                        "waiting for the controller-manager to assign this node a pod CIDR"
                    );
                    waited = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The interface other nodes are reached through.
struct Uplink {
    name: String,
    index: u32,
    mtu: u32,
    /// The largest aggregate the device segments itself.
    tso_max_size: u32,
    /// The largest IPv4 aggregate it is sent whole now.
    gso_max_size: u32,
}

/// Raises the IPv4 aggregate sizes of link `index` to `size`.
async fn take_aggregates(index: u32, size: u32) -> anyhow::Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let msg = rtnetlink::LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(size))
        .append_extra_attribute(LinkAttribute::GroIpv4MaxSize(size))
        .build();
    let result = handle.link().set(msg).execute().await;
    task.abort();
    Ok(result?)
}

/// Where the agent keeps the uplink's aggregate size from before it raised
/// it: "INDEX NAME SIZE".
const UPLINK_FILE: &str = "uplink-aggregates";

/// Notes the uplink's aggregate size before the first raise; a restarted
/// agent finds it raised already and keeps the first note.
fn remember_uplink(state_dir: &Path, name: &str, index: u32, size: u32) -> anyhow::Result<()> {
    let path = state_dir.join(UPLINK_FILE);
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(state_dir)?;
    std::fs::write(&path, format!("{index} {name} {size}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Gives the uplink back the aggregate size it had before the agent first
/// raised it (for `agent reset`). An uplink that went, or whose index now
/// names another interface, is left alone.
pub async fn restore_uplink(state_dir: &Path) -> anyhow::Result<()> {
    let path = state_dir.join(UPLINK_FILE);
    let Ok(note) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut f = note.split_whitespace();
    let (Some(index), Some(name), Some(size)) = (
        f.next().and_then(|i| i.parse::<u32>().ok()),
        f.next(),
        f.next().and_then(|s| s.parse::<u32>().ok()),
    ) else {
        anyhow::bail!("{}: not \"INDEX NAME SIZE\": {note:?}", path.display());
    };
    // The same interface still: found by its name, at the index noted.
    let same = uplink(Ipv4Addr::UNSPECIFIED, Some(name))
        .await
        .is_ok_and(|up| up.index == index);
    if same {
        tokio::time::timeout(Duration::from_secs(15), take_aggregates(index, size))
            .await
            .context("no answer from netlink about the uplink in 15 s")?
            .with_context(|| format!("giving {name} back its {size}-byte aggregates"))?;
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

/// The BIG TCP size Cilium and the kernel's own tests settle on.
const BIG_TCP_SIZE: u32 = 196_608;

/// The pod veths' aggregate size when none is asked for: BIG TCP when every
/// aggregate a pod sends can leave the node as it is. Tunnels keep the
/// legacy size. Linux 6.18's VXLAN device offers more (`tso_max_size`
/// 512 KiB), but an aggregate that reaches the other node whole, as over a
/// veth, arrives cut short (the receiving VXLAN device counted every
/// packet but half the bytes sent, as if held to the outer UDP header's
/// 16-bit length): two namespaces with VXLAN over a veth pair at 192 KiB
/// moved 0.31 Gbit/s with 81,524 retransmits in 3 s, against 13.3 Gbit/s
/// at 64 KiB.
fn big_tcp(tunnel: Tunnel, uplink_tso_max_size: u32) -> u32 {
    match tunnel {
        Tunnel::Vxlan => kestrel_cni::LEGACY_GSO_MAX_SIZE,
        Tunnel::None => uplink_tso_max_size.clamp(kestrel_cni::LEGACY_GSO_MAX_SIZE, BIG_TCP_SIZE),
    }
}

/// The uplink and what it takes: `name` when given, else the interface
/// that holds `node_ip`.
async fn uplink(node_ip: Ipv4Addr, name: Option<&str>) -> anyhow::Result<Uplink> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let result = async {
        let index = match name {
            Some(n) => {
                let links: Vec<_> = handle
                    .link()
                    .get()
                    .match_name(n.to_string())
                    .execute()
                    .try_collect()
                    .await
                    .with_context(|| format!("--uplink {n}"))?;
                links
                    .first()
                    .map(|l| l.header.index)
                    .with_context(|| format!("--uplink {n}: no such interface"))?
            }
            None => {
                let addrs: Vec<_> = handle.address().get().execute().try_collect().await?;
                addrs
                    .iter()
                    .find(|a| {
                        a.attributes.iter().any(|x| {
                            matches!(x, AddressAttribute::Address(std::net::IpAddr::V4(v)) if *v == node_ip)
                        })
                    })
                    .map(|a| a.header.index)
                    .with_context(|| {
                        format!("no interface holds the node address {node_ip}; pass --uplink")
                    })?
            }
        };
        let links: Vec<_> = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await?;
        let link = links.first().context("the uplink vanished")?;
        let mut ifname = None;
        let mut mtu = 1500;
        // Kernels before 5.18 do not say; they take no more than this.
        let mut tso_max_size = kestrel_cni::LEGACY_GSO_MAX_SIZE;
        let mut gso_max_size = kestrel_cni::LEGACY_GSO_MAX_SIZE;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => ifname = Some(n.clone()),
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::TsoMaxSize(t) => tso_max_size = *t,
                LinkAttribute::GsoIpv4MaxSize(g) => gso_max_size = *g,
                _ => {}
            }
        }
        Ok(Uplink {
            name: ifname.context("the uplink has no name")?,
            index,
            mtu,
            tso_max_size,
            gso_max_size,
        })
    }
    .await;
    task.abort();
    result
}

/// A human description of the datapath pinned in `pin_dir`, for
/// `agent bpf status`.
pub async fn describe(pin_dir: &Path) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(out, "datapath pinned in {}", pin_dir.display())?;
    writeln!(out, "\nprograms (TC ingress, TCX links):")?;
    let mut links: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .with_context(|| format!("{}: no datapath pinned here", pin_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    links.sort();
    let endpoints = datapath::read_endpoints(pin_dir)?;
    for l in &links {
        let c = std::ffi::CString::new(l.as_str())?;
        // SAFETY: a valid C string.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        let prog = if endpoints
            .iter()
            .any(|(_, e)| e.ifindex == index && index != 0)
        {
            crate::ebpf::abi::FROM_POD_PROGRAM
        } else {
            crate::ebpf::abi::FROM_UPLINK_PROGRAM
        };
        let state = if index == 0 {
            "interface gone".to_string()
        } else {
            format!("ifindex {index}")
        };
        writeln!(out, "  {l:<16} {prog:<12} {state}")?;
    }
    writeln!(out, "\npod endpoints ({}):", endpoints.len())?;
    writeln!(
        out,
        "  {:<16} {:<8} {:<18} {:<18}",
        "IP", "IFINDEX", "POD MAC", "HOST MAC"
    )?;
    for (ip, e) in &endpoints {
        writeln!(
            out,
            "  {:<16} {:<8} {:<18} {:<18}",
            ip.to_string(),
            e.ifindex,
            mac(&e.pod_mac),
            mac(&e.host_mac)
        )?;
    }
    writeln!(out, "\nconntrack entries:")?;
    for (table, n) in conntrack::table_sizes(pin_dir)? {
        writeln!(out, "  {table:<22} {n}")?;
    }
    writeln!(out, "\nmasqueraded flows per pod:")?;
    for (pod, n) in conntrack::pod_flows(pin_dir)? {
        writeln!(out, "  {:<22} {n}", pod.to_string())?;
    }
    let nat = datapath::read_nat(pin_dir)?;
    writeln!(out, "\nmasqueraded flows ({}):", nat.len())?;
    for f in nat.iter().take(50) {
        let proto = match f.proto {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            _ => "?",
        };
        writeln!(
            out,
            "  {proto:<4} {}:{} -> {}:{} as node port {}",
            f.pod, f.pod_port, f.remote, f.remote_port, f.node_port
        )?;
    }
    writeln!(out, "\ncounters:")?;
    for (name, n) in datapath::read_stats(pin_dir)? {
        writeln!(out, "  {name:<22} {n}")?;
    }
    writeln!(
        out,
        "\nroutes to other nodes' pods (proto {}):",
        routes::ROUTE_PROTOCOL
    )?;
    for r in Routes::new()?.current().await? {
        writeln!(out, "  {} via {}", r.pod_cidr, r.via)?;
    }
    Ok(out)
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_tcp_only_where_every_aggregate_leaves_whole() {
        // A veth or a NIC with BIG TCP support takes 512 KiB aggregates.
        assert_eq!(big_tcp(Tunnel::None, 524_280), BIG_TCP_SIZE);
        assert_eq!(big_tcp(Tunnel::None, 262_144), BIG_TCP_SIZE);
        // A NIC without it, or a kernel that does not say.
        assert_eq!(big_tcp(Tunnel::None, 65_536), 65_536);
        assert_eq!(big_tcp(Tunnel::None, 16_384), 65_536);
        assert_eq!(big_tcp(Tunnel::Vxlan, 524_280), 65_536);
    }
}
