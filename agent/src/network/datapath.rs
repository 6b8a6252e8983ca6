//! The pod datapath in the kernel: the `from_pod` and `from_uplink` TC
//! programs, their pinned endpoint map and their pinned links.
//!
//! Maps and links are pinned under the agent's own bpffs directory, so the
//! programs keep forwarding while the agent is down and a restarted agent
//! takes them over: it swaps its freshly loaded programs into the pinned
//! links atomically (`bpf_link_update`), never detaching in between.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::links::PinnedLink;
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;

use super::vxlan;
use crate::ebpf::abi::{self, Config, CtConfig, Endpoint, NatKey, SnatFlow, Tunnel};
use crate::ebpf::{self, Error, MapPins};

/// The loaded routing programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Datapath {
    /// Loads the programs from `object`, reusing the maps pinned in `pin_dir`
    /// by an earlier agent (or pinning new ones there).
    pub fn load(object: &[u8], pin_dir: &Path) -> Result<Self, Error> {
        // Counters pinned by an older agent with fewer slots than this one
        // has are started afresh: the programs would skip the new ones.
        let stats_pin = pin_dir.join(abi::STATS_MAP);
        if let Ok(info) = aya::maps::MapInfo::from_pin(&stats_pin) {
            if info.max_entries() < abi::STATS_CAPACITY {
                std::fs::remove_file(&stats_pin)?;
            }
        }
        drop_incompatible_pins(pin_dir)?;
        let mut ebpf = ebpf::load(object, MapPins::Dir(pin_dir))?;
        std::fs::create_dir_all(pin_dir.join("links"))?;
        for name in [abi::FROM_POD_PROGRAM, abi::FROM_UPLINK_PROGRAM] {
            ebpf::program::<SchedClassifier>(&mut ebpf, name)?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Writes the node-wide settings the programs read.
    pub fn configure(
        &mut self,
        node_ip: Ipv4Addr,
        cluster: ipnet::Ipv4Net,
        masquerade: bool,
    ) -> Result<(), Error> {
        let cfg = Config {
            node_ip: key(node_ip),
            cluster_net: key(cluster.network()),
            cluster_mask: key(cluster.netmask()),
            flags: if masquerade {
                abi::CONFIG_MASQUERADE
            } else {
                0
            },
        };
        self.set_only(abi::CONFIG_MAP, cfg)
    }

    /// Writes the node's tunnel for the programs: the VXLAN device at
    /// `device`, which the programs wrap pod traffic for when `wrap` says so
    /// (the device does otherwise). None says there is no tunnel, which
    /// matters as much: the map is pinned, and an agent started without a
    /// tunnel must not find the last one's there.
    pub fn configure_tunnel(&mut self, device: Option<u32>, wrap: bool) -> Result<(), Error> {
        let t = match device {
            Some(ifindex) => Tunnel {
                // The receiving side's early exit goes by the port alone.
                ifindex: if wrap { ifindex } else { 0 },
                port: vxlan::PORT.to_be(),
                pad: 0,
                vni: vxlan::VNI,
            },
            None => Tunnel::default(),
        };
        self.set_only(abi::TUNNEL_MAP, t)
    }

    /// Writes the conntrack settings the programs read: the most
    /// masqueraded flows one pod may hold (0: no limit).
    pub fn configure_conntrack(&mut self, pod_limit: u32) -> Result<(), Error> {
        self.set_only(abi::CT_CONFIG_MAP, CtConfig { pod_limit, pad: 0 })
    }

    /// Writes the one entry of the single-entry array `name`.
    fn set_only<T: aya::Pod>(&mut self, name: &str, value: T) -> Result<(), Error> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Missing(format!("map {name}")))?;
        aya::maps::Array::<_, T>::try_from(map)?.set(0, value, 0)?;
        Ok(())
    }

    fn link_pin(&self, iface: &str) -> PathBuf {
        self.pin_dir.join("links").join(iface)
    }

    /// Attaches `program` at ingress of `iface`, replacing in place the link
    /// a previous agent pinned there, and pins the result.
    fn attach(&mut self, program: &str, iface: &str) -> Result<(), Error> {
        let pin = self.link_pin(iface);
        let prog = ebpf::program::<SchedClassifier>(&mut self.ebpf, program)?;
        let old = PinnedLink::from_pin(&pin).ok();
        let id = match old {
            Some(old) => {
                // The pin goes, the link stays (we hold its fd) and is
                // re-pinned below with the new program in it.
                let fd = old.unpin()?;
                match SchedClassifierLink::try_from(fd) {
                    Ok(link) => prog.attach_to_link(link)?,
                    // Not a live TCX link (its interface went away): start over.
                    Err(_) => prog.attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )?,
                }
            }
            None => prog.attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?,
        };
        ebpf::pin_link(prog.take_link(id)?, &pin)
    }

    /// Takes traffic arriving on the node's uplink for local pods and node
    /// ports. The uplink forwards: the programs route node port flows to
    /// other nodes by FIB lookups, which the kernel answers only for an
    /// interface that forwards (every Kubernetes node forwards; this turns
    /// it on for the uplink alone, not for the whole node).
    pub fn attach_uplink(&mut self, iface: &str) -> Result<(), Error> {
        let switch = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
        std::fs::write(&switch, "1")
            .map_err(|e| Error::Io(std::io::Error::other(format!("writing 1 to {switch}: {e}"))))?;
        self.attach(abi::FROM_UPLINK_PROGRAM, iface)
    }

    /// Makes a pod reachable through the datapath and routes what it sends.
    pub fn add_endpoint(&mut self, ip: Ipv4Addr, ep: &kestrel_cni::Endpoint) -> Result<(), Error> {
        let entry = Endpoint {
            ifindex: ep.host_ifindex,
            pod_mac: ep.pod_mac,
            host_mac: ep.host_mac,
        };
        // The map entry first: once the program runs on the veth, replies
        // to the pod must already find it.
        self.endpoints_mut()?.insert(key(ip), entry, 0)?;
        self.attach(abi::FROM_POD_PROGRAM, &ep.host_ifname)
    }

    /// Forgets a pod: its map entry and its link's pin (the link itself dies
    /// with the veth).
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr, host_ifname: &str) -> Result<(), Error> {
        match self.endpoints_mut()?.remove(&key(ip)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
        match std::fs::remove_file(self.link_pin(host_ifname)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn endpoints_mut(&mut self) -> Result<HashMap<&mut MapData, u32, Endpoint>, Error> {
        let map = self
            .ebpf
            .map_mut(abi::ENDPOINTS_MAP)
            .ok_or_else(|| Error::Missing(format!("map {}", abi::ENDPOINTS_MAP)))?;
        Ok(HashMap::try_from(map)?)
    }

    /// Every endpoint in the map.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, Error> {
        read_endpoints(&self.pin_dir)
    }

    /// Pins left for interfaces the caller does not know: veths of pods
    /// that are gone.
    pub fn stale_links(&self, keep: &[String]) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.pin_dir.join("links")) else {
            return Vec::new();
        };
        dir.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(n))
            .collect()
    }
}

/// Removes conntrack maps an older agent pinned with another type or
/// value layout (LRUs, values without their conntrack state): the programs
/// would misread them. Their flows are lost; connections start afresh.
fn drop_incompatible_pins(pin_dir: &Path) -> Result<(), Error> {
    use aya::maps::MapType;
    use std::mem::size_of;
    let expected = [
        (abi::SNAT_OUT_MAP, size_of::<SnatFlow>()),
        (abi::SNAT_IN_MAP, size_of::<abi::NatValue>()),
        (abi::INBOUND_FLOWS_MAP, size_of::<abi::CtState>()),
        (abi::NODEPORT_FLOWS_MAP, size_of::<abi::NodePortFlow>()),
        (abi::NODEPORT_REPLIES_MAP, size_of::<abi::NodePortReply>()),
    ];
    for (name, value_size) in expected {
        let pin = pin_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
            continue;
        };
        let same = matches!(info.map_type(), Ok(MapType::Hash))
            && info.value_size() as usize == value_size;
        if !same {
            tracing::info!(map = name, "replacing a conntrack map of an older layout");
            std::fs::remove_file(&pin)?;
        }
    }
    Ok(())
}

fn key(ip: Ipv4Addr) -> u32 {
    // The programs compare with the address as read from the IP header.
    u32::from_ne_bytes(ip.octets())
}

/// Reads the pinned endpoint map in `pin_dir` (for `agent bpf`).
pub fn read_endpoints(pin_dir: &Path) -> Result<Vec<(Ipv4Addr, Endpoint)>, Error> {
    let data = MapData::from_pin(pin_dir.join(abi::ENDPOINTS_MAP))?;
    let map = aya::maps::Map::HashMap(data);
    let map: HashMap<_, u32, Endpoint> = HashMap::try_from(map)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (k, v) = item?;
        out.push((Ipv4Addr::from(k.to_ne_bytes()), v));
    }
    out.sort_by_key(|(ip, _)| *ip);
    Ok(out)
}

/// Reads the pinned decision counters in `pin_dir`, summed over CPUs, in
/// the order of [`abi::Stat::ALL`].
pub fn read_stats(pin_dir: &Path) -> Result<Vec<(&'static str, u64)>, Error> {
    let data = MapData::from_pin(pin_dir.join(abi::STATS_MAP))?;
    let map = aya::maps::Map::PerCpuArray(data);
    let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    let mut out = Vec::new();
    for stat in abi::Stat::ALL {
        let per_cpu = counts.get(&stat.index(), 0)?;
        out.push((stat.name(), per_cpu.iter().sum()));
    }
    Ok(out)
}

/// Removes every pin under `pin_dir`: links (detaching the programs) and
/// maps. For `agent reset`.
pub fn remove_pins(pin_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One masqueraded flow, as `agent bpf status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatFlow {
    pub pod: Ipv4Addr,
    pub pod_port: u16,
    pub remote: Ipv4Addr,
    pub remote_port: u16,
    pub proto: u8,
    pub node_port: u16,
}

/// Masqueraded flows in `pin_dir`'s conntrack.
pub fn read_nat(pin_dir: &Path) -> Result<Vec<NatFlow>, Error> {
    let data = MapData::from_pin(pin_dir.join(abi::SNAT_OUT_MAP))?;
    let map = aya::maps::Map::HashMap(data);
    let map: HashMap<_, NatKey, SnatFlow> = HashMap::try_from(map)?;
    let mut out = Vec::new();
    // The sweep may remove an entry between two steps of the walk: skip it.
    for (k, v) in map.iter().filter_map(Result::ok) {
        out.push(NatFlow {
            pod: Ipv4Addr::from(k.src.to_ne_bytes()),
            pod_port: k.sport,
            remote: Ipv4Addr::from(k.dst.to_ne_bytes()),
            remote_port: k.dport,
            proto: k.proto,
            node_port: v.port,
        });
    }
    out.sort();
    Ok(out)
}
