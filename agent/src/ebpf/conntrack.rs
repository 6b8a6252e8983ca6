//! The conntrack collector: the programs treat an expired entry as absent
//! when they meet it, and this removes the ones nobody meets again, both
//! directions of a flow together, and recounts each pod's live masquerade
//! flows (the count the programs hold a pod's new flows against).

use std::collections::HashMap as StdHashMap;
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, Map, MapData};

use super::abi::{self, Config, NatKey, NatValue, NodePortFlow, NodePortReply};
use super::Error;

/// Lifetimes and limits of the datapath's conntrack, written to the
/// programs' settings; defaults as upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A TCP flow that has seen no reply yet.
    pub tcp_syn: Duration,
    /// A TCP flow past its handshake.
    pub tcp_established: Duration,
    /// A TCP flow after a FIN or RST either way.
    pub tcp_closing: Duration,
    /// UDP and ICMP, after their last packet.
    pub other: Duration,
    /// Live masqueraded flows one pod may hold.
    pub max_flows_per_pod: u32,
    /// How often the collector sweeps the maps.
    pub gc_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(abi::CT_TCP_SYN_SECS.into()),
            tcp_established: Duration::from_secs(abi::CT_TCP_ESTABLISHED_SECS.into()),
            tcp_closing: Duration::from_secs(abi::CT_TCP_CLOSING_SECS.into()),
            other: Duration::from_secs(abi::CT_OTHER_SECS.into()),
            max_flows_per_pod: abi::CT_MAX_FLOWS_PER_POD,
            gc_interval: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Writes these settings into `cfg`; lifetimes are whole seconds, at
    /// least one.
    pub fn apply(&self, cfg: &mut Config) {
        let secs = |d: Duration| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        cfg.ct_tcp_syn_secs = secs(self.tcp_syn);
        cfg.ct_tcp_established_secs = secs(self.tcp_established);
        cfg.ct_tcp_closing_secs = secs(self.tcp_closing);
        cfg.ct_other_secs = secs(self.other);
        cfg.ct_max_flows_per_pod = self.max_flows_per_pod;
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    // SAFETY: a zeroed timespec for the kernel to fill.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Masqueraded flows (both directions) and node port flows removed.
    pub nat_flows: usize,
    pub node_port_flows: usize,
    /// Reply entries whose flow was gone already (LRU evictions).
    pub orphans: usize,
}

fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &str,
    lru: bool,
) -> Result<HashMap<MapData, K, V>, Error> {
    let data = MapData::from_pin(dir.join(name))?;
    let map = if lru {
        Map::LruHashMap(data)
    } else {
        Map::HashMap(data)
    };
    Ok(HashMap::try_from(map)?)
}

fn entries<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    // An entry removed between listing its key and reading it is skipped.
    map.iter().filter_map(Result::ok).collect()
}

fn gone(r: Result<(), aya::maps::MapError>) -> Result<(), Error> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sweeps the conntrack maps pinned in `dir` once, at `now` (monotonic
/// nanoseconds), with the lifetimes the programs are configured with.
pub fn sweep(dir: &Path, now: u64) -> Result<Swept, Error> {
    let cfg: Config = {
        let data = MapData::from_pin(dir.join(abi::CONFIG_MAP))?;
        Array::<_, Config>::try_from(Map::Array(data))?.get(&0, 0)?
    };
    let mut swept = Swept::default();

    let mut out: HashMap<_, NatKey, NatValue> = open(dir, abi::SNAT_OUT_MAP, true)?;
    let mut inn: HashMap<_, NatKey, NatValue> = open(dir, abi::SNAT_IN_MAP, true)?;
    let mut live_per_pod: StdHashMap<u32, u32> = StdHashMap::new();
    let mut live = StdHashMap::new();
    for (k, v) in entries(&out) {
        if abi::ct_expired(&cfg, k.proto, v.flags, v.last_seen, now) {
            gone(out.remove(&k))?;
            let reply = NatKey {
                src: k.dst,
                dst: v.addr,
                sport: k.dport,
                dport: v.port,
                proto: k.proto,
                pad: [0; 3],
            };
            gone(inn.remove(&reply))?;
            swept.nat_flows += 1;
        } else {
            *live_per_pod.entry(k.src).or_default() += 1;
            live.insert(k, v.port);
        }
    }
    for (k, back) in entries(&inn) {
        let flow = NatKey {
            src: back.addr,
            dst: k.src,
            sport: back.port,
            dport: k.sport,
            proto: k.proto,
            pad: [0; 3],
        };
        // A reply entry is written just before its flow's: a young one
        // may be a flow being opened right now.
        let young = now.saturating_sub(back.last_seen) < 1_000_000_000;
        if !young
            && live.get(&flow) != Some(&k.dport)
            && out.get(&flow, 0).map(|v| v.port).ok() != Some(k.dport)
        {
            gone(inn.remove(&k))?;
            swept.orphans += 1;
        }
    }
    let mut counts: HashMap<_, u32, u32> = open(dir, abi::NAT_POD_FLOWS_MAP, false)?;
    for (pod, _) in entries(&counts) {
        if !live_per_pod.contains_key(&pod) {
            gone(counts.remove(&pod))?;
        }
    }
    for (pod, n) in live_per_pod {
        counts.insert(pod, n, 0)?;
    }

    let mut flows: HashMap<_, NatKey, NodePortFlow> = open(dir, abi::NODEPORT_FLOWS_MAP, true)?;
    let mut replies: HashMap<_, NatKey, NodePortReply> =
        open(dir, abi::NODEPORT_REPLIES_MAP, true)?;
    for (k, v) in entries(&flows) {
        if abi::ct_expired(&cfg, k.proto, v.flags as u16, v.last_seen, now) {
            gone(flows.remove(&k))?;
            let remote = v.nat_port != 0;
            let reply = NatKey {
                src: v.backend_ip,
                dst: if remote { k.dst } else { k.src },
                sport: v.backend_port,
                dport: if remote { v.nat_port } else { k.sport },
                proto: k.proto,
                pad: [0; 3],
            };
            gone(replies.remove(&reply))?;
            swept.node_port_flows += 1;
        }
    }
    for (k, r) in entries(&replies) {
        let client = NatKey {
            src: r.client_ip,
            dst: cfg.node_ip,
            sport: r.client_port,
            dport: r.node_port,
            proto: k.proto,
            pad: [0; 3],
        };
        let owner = flows.get(&client, 0).ok();
        if owner.is_none_or(|f| f.backend_ip != k.src) {
            gone(replies.remove(&k))?;
            swept.orphans += 1;
        }
    }
    Ok(swept)
}

/// Conntrack flags of `agent run`; the defaults are upstream's, shorter
/// values are for tests that watch flows expire.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Seconds a TCP flow that has seen no reply lives.
    #[arg(long, default_value_t = abi::CT_TCP_SYN_SECS)]
    pub conntrack_tcp_syn_timeout: u32,
    /// Seconds an idle established TCP flow lives.
    #[arg(long, default_value_t = abi::CT_TCP_ESTABLISHED_SECS)]
    pub conntrack_tcp_established_timeout: u32,
    /// Seconds a TCP flow lives after a FIN or RST.
    #[arg(long, default_value_t = abi::CT_TCP_CLOSING_SECS)]
    pub conntrack_tcp_closing_timeout: u32,
    /// Seconds an idle UDP or ICMP flow lives.
    #[arg(long, default_value_t = abi::CT_OTHER_SECS)]
    pub conntrack_other_timeout: u32,
    /// Live masqueraded flows one pod may hold; more are dropped.
    #[arg(long, default_value_t = abi::CT_MAX_FLOWS_PER_POD)]
    pub conntrack_max_flows_per_pod: u32,
    /// Seconds between sweeps of expired conntrack entries.
    #[arg(long, default_value_t = 30)]
    pub conntrack_gc_interval: u32,
}

impl Args {
    pub fn settings(&self) -> Settings {
        let secs = |s: u32| Duration::from_secs(s.max(1).into());
        Settings {
            tcp_syn: secs(self.conntrack_tcp_syn_timeout),
            tcp_established: secs(self.conntrack_tcp_established_timeout),
            tcp_closing: secs(self.conntrack_tcp_closing_timeout),
            other: secs(self.conntrack_other_timeout),
            max_flows_per_pod: self.conntrack_max_flows_per_pod,
            gc_interval: secs(self.conntrack_gc_interval),
        }
    }
}
