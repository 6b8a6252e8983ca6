//! The load balancer in the kernel: loading the cgroup sock_addr programs,
//! attaching them with links pinned in the agent's bpffs directory, and the
//! pinned maps they read.
//!
//! The links outlive the agent, so connections to services keep being
//! balanced while it restarts. A new agent attaches its freshly loaded
//! programs next to the old ones before removing the old links: at no
//! moment does a connect pass unbalanced. While both run, the second sees
//! the backend address the first chose, which is no frontend, and leaves
//! it alone.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};

use crate::ebpf::abi::{
    self, AffinityKey, AffinityValue, Backend, FlowKey, NatKey, NodePortFlow, ReverseKey,
    ReverseValue, ServiceKey, ServiceValue,
};
use crate::ebpf::{self, Error, MapPins};

use super::table::Maps;

/// Directory of the load balancer's pinned links, inside the agent's
/// bpffs directory (apart from the datapath's per-interface `links/`).
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("lb-links")
}

/// The service and backend maps, as the agent writes them.
pub struct KernelMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), Error> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Maps for KernelMaps {
    fn put_row(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error> {
        Ok(self.services.insert(key, value, 0)?)
    }
    fn del_row(&mut self, key: ServiceKey) -> Result<(), Error> {
        ignore_missing(self.services.remove(&key))
    }
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<(), Error> {
        Ok(self.backends.insert(id, backend, 0)?)
    }
    fn del_backend(&mut self, id: u32) -> Result<(), Error> {
        ignore_missing(self.backends.remove(&id))
    }
    fn rows(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error> {
        Ok(self.services.iter().collect::<Result<_, _>>()?)
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, Error> {
        Ok(self.backends.iter().collect::<Result<_, _>>()?)
    }
}

/// Loads the load balancer from `object` with the maps pinned in
/// `pin_dir`, attaches its programs at the cgroup v2 group `cgroup`, pins
/// the links, and returns the maps to write.
pub fn attach(object: &[u8], pin_dir: &Path, cgroup: &Path) -> Result<KernelMaps, Error> {
    let mut ebpf = ebpf::load(object, MapPins::Dir(pin_dir))?;
    let links = links_dir(pin_dir);
    std::fs::create_dir_all(&links)?;
    let group = std::fs::File::open(cgroup)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cgroup {}: {e}", cgroup.display())))?;
    for name in abi::LB_PROGRAMS {
        let prog = ebpf::program::<CgroupSockAddr>(&mut ebpf, name)?;
        // A cgroup link takes no flags ("Single" sends none) and always
        // runs next to the other links of its hook: ours beside a previous
        // agent's until that one's pin goes below.
        let id = prog.attach(&group, CgroupAttachMode::Single)?;
        ebpf::pin_link(prog.take_link(id)?, &links.join(name))?;
    }
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| Error::Missing(format!("map {name}")))
    };
    let services = HashMap::try_from(take(abi::LB_SERVICES_MAP)?)?;
    let backends = HashMap::try_from(take(abi::LB_BACKENDS_MAP)?)?;
    Ok(KernelMaps { services, backends })
}

fn pinned(pin_dir: &Path, name: &str) -> Result<MapData, Error> {
    Ok(MapData::from_pin(pin_dir.join(name))?)
}

/// The backends `fe` sends new connections to, read from the maps pinned
/// in `pin_dir` (None when the frontend is not there).
pub fn lookup(
    pin_dir: &Path,
    fe: &super::model::Frontend,
) -> Result<Option<Vec<super::model::Target>>, Error> {
    let services: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, abi::LB_SERVICES_MAP)?))?;
    let backends: HashMap<_, u32, Backend> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, abi::LB_BACKENDS_MAP)?))?;
    let head = match services.get(&super::table::key(fe, 0), 0) {
        Ok(v) => v,
        Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for slot in 1..=head.count {
        let row = services.get(&super::table::key(fe, slot), 0)?;
        out.push(super::table::target(&backends.get(&row.backend_id, 0)?));
    }
    out.sort();
    Ok(Some(out))
}

/// What `agent bpf lb` shows: everything the load balancer holds.
pub struct Snapshot {
    pub rows: Vec<(ServiceKey, ServiceValue)>,
    pub backends: Vec<(u32, Backend)>,
    pub reverse: Vec<(ReverseKey, ReverseValue)>,
    pub flows: Vec<(FlowKey, u32)>,
    pub affinity: Vec<(AffinityKey, AffinityValue)>,
    /// Node port connections (the uplink program's conntrack); empty when
    /// the routing programs never ran here.
    pub node_port_flows: Vec<(NatKey, NodePortFlow)>,
    pub stats: Vec<(&'static str, u64)>,
    /// Names of the pinned program links.
    pub links: Vec<String>,
}

/// Reads the pinned load balancer in `pin_dir`.
pub fn snapshot(pin_dir: &Path) -> Result<Snapshot, Error> {
    let services: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, abi::LB_SERVICES_MAP)?))?;
    let backends: HashMap<_, u32, Backend> =
        HashMap::try_from(Map::HashMap(pinned(pin_dir, abi::LB_BACKENDS_MAP)?))?;
    let reverse: HashMap<_, ReverseKey, ReverseValue> =
        HashMap::try_from(Map::LruHashMap(pinned(pin_dir, abi::LB_REVERSE_MAP)?))?;
    let flows: HashMap<_, FlowKey, u32> =
        HashMap::try_from(Map::LruHashMap(pinned(pin_dir, abi::LB_FLOWS_MAP)?))?;
    let affinity: HashMap<_, AffinityKey, AffinityValue> =
        HashMap::try_from(Map::LruHashMap(pinned(pin_dir, abi::LB_AFFINITY_MAP)?))?;
    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(pinned(pin_dir, abi::LB_STATS_MAP)?))?;
    let mut counters = Vec::new();
    for stat in abi::LbStat::ALL {
        counters.push((stat.name(), stats.get(&stat.index(), 0)?.iter().sum()));
    }
    let node_port_flows = match pinned(pin_dir, abi::NODEPORT_FLOWS_MAP) {
        Ok(data) => {
            let map: HashMap<_, NatKey, NodePortFlow> = HashMap::try_from(Map::HashMap(data))?;
            map.iter().filter_map(Result::ok).collect()
        }
        Err(_) => Vec::new(),
    };
    let mut links: Vec<String> = std::fs::read_dir(links_dir(pin_dir))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    links.sort();
    Ok(Snapshot {
        rows: services.iter().collect::<Result<_, _>>()?,
        backends: backends.iter().collect::<Result<_, _>>()?,
        // LRU entries can be evicted while iterating; skip the ones that go.
        reverse: reverse.iter().filter_map(Result::ok).collect(),
        flows: flows.iter().filter_map(Result::ok).collect(),
        affinity: affinity.iter().filter_map(Result::ok).collect(),
        node_port_flows,
        stats: counters,
        links,
    })
}
