//! Conntrack of the translated flows (masquerade and node ports): the
//! programs record when each flow was last seen and how far a TCP flow
//! got; this sweep, run every `--conntrack-gc-interval`, removes the flows
//! that ended or went idle, both directions together, and gives their
//! pods' flow counts back.
//!
//! A flow's forward entry goes before its reply entry: a port of the NAT
//! range is free again only when its reply entry is gone, and by then
//! nothing translates to it any more.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};

use crate::ebpf::abi::{
    self, CtStage, CtState, NatKey, NatValue, NodePortFlow, NodePortReply, SnatFlow,
};
use crate::ebpf::Error;

/// Conntrack flags of `agent run`. Durations take `ms`, `s`, `m` or `h`
/// (a bare number is seconds).
#[derive(Clone, Debug, clap::Args)]
pub struct ConntrackArgs {
    /// How long an established TCP flow may stay idle.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub conntrack_tcp_timeout: Duration,
    /// How long a TCP flow may wait for its handshake to finish.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub conntrack_tcp_opening_timeout: Duration,
    /// How long a TCP flow is kept after FIN from both sides or a RST.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub conntrack_tcp_closing_timeout: Duration,
    /// How long a UDP flow may stay idle.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub conntrack_udp_timeout: Duration,
    /// How long an ICMP echo flow may stay idle.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub conntrack_icmp_timeout: Duration,
    /// How often the sweep runs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub conntrack_gc_interval: Duration,
    /// How many masqueraded flows one pod may hold at once (0: no limit);
    /// new flows beyond it are dropped and counted, so one pod cannot
    /// fill the table the others share.
    #[arg(long, default_value_t = abi::CT_DEFAULT_POD_LIMIT)]
    pub conntrack_pod_limit: u32,
}

/// Parses `90`, `500ms`, `30s`, `5m` or `6h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// The idle time after which a flow goes, by its stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_opening: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Timeouts {
    /// The timeouts the flags give.
    pub fn from_args(a: &ConntrackArgs) -> Self {
        Self {
            tcp_opening: a.conntrack_tcp_opening_timeout,
            tcp_established: a.conntrack_tcp_timeout,
            tcp_closing: a.conntrack_tcp_closing_timeout,
            udp: a.conntrack_udp_timeout,
            icmp: a.conntrack_icmp_timeout,
        }
    }

    /// Whether a flow of `proto` in state `st` is over at `now_ns`.
    pub fn expired(&self, st: &CtState, proto: u8, now_ns: u64) -> bool {
        let limit = match st.stage(proto) {
            CtStage::TcpOpening => self.tcp_opening,
            CtStage::TcpEstablished => self.tcp_established,
            CtStage::TcpClosing => self.tcp_closing,
            CtStage::Udp => self.udp,
            CtStage::Icmp => self.icmp,
        };
        now_ns.saturating_sub(st.last_seen) >= limit.as_nanos() as u64
    }
}

/// The clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pinned(pin_dir: &Path, name: &str) -> Result<Map, Error> {
    Ok(Map::HashMap(MapData::from_pin(pin_dir.join(name))?))
}

fn gone_ok(r: Result<(), MapError>) -> Result<bool, Error> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The sweep over one agent's pinned conntrack. It remembers reply entries
/// it found without a forward entry, and removes them only when the next
/// sweep finds them so still: a new flow writes its reply entry just
/// before its forward entry.
pub struct Sweeper {
    pin_dir: PathBuf,
    timeouts: Timeouts,
    orphans: HashSet<(&'static str, NatKey)>,
}

impl Sweeper {
    pub fn new(pin_dir: &Path, timeouts: Timeouts) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            timeouts,
            orphans: HashSet::new(),
        }
    }

    /// Removes the flows over at `now_ns`; returns how many (both
    /// directions of a flow count once) and adds them to the
    /// `conntrack_swept` counter.
    pub fn sweep(&mut self, now_ns: u64) -> Result<u64, Error> {
        let mut closed: BTreeMap<u32, u64> = BTreeMap::new();
        let mut removed = self.sweep_snat(now_ns, &mut closed)?;
        removed += self.sweep_inbound(now_ns)?;
        removed += self.sweep_node_ports(now_ns)?;
        self.give_back(&closed)?;
        if removed > 0 {
            add_swept(&self.pin_dir, removed)?;
        }
        Ok(removed)
    }

    fn sweep_snat(&mut self, now: u64, closed: &mut BTreeMap<u32, u64>) -> Result<u64, Error> {
        let mut out: HashMap<_, NatKey, SnatFlow> =
            HashMap::try_from(pinned(&self.pin_dir, abi::SNAT_OUT_MAP)?)?;
        let mut back: HashMap<_, NatKey, NatValue> =
            HashMap::try_from(pinned(&self.pin_dir, abi::SNAT_IN_MAP)?)?;
        let over: Vec<NatKey> = out
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| self.timeouts.expired(&v.ct, k.proto, now))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for k in over {
            // Looked at again: a packet may have come since the walk.
            let Ok(v) = out.get(&k, 0) else { continue };
            if !self.timeouts.expired(&v.ct, k.proto, now) || !gone_ok(out.remove(&k))? {
                continue;
            }
            gone_ok(back.remove(&snat_reply_key(&k, &v)))?;
            if v.ct.owner != 0 {
                *closed.entry(v.ct.owner).or_default() += 1;
            }
            removed += 1;
        }
        let replies: Vec<(NatKey, NatValue)> = back.iter().filter_map(Result::ok).collect();
        let mut orphans = Vec::new();
        for (k, v) in replies {
            let fwd = NatKey {
                src: v.addr,
                dst: k.src,
                sport: v.port,
                dport: k.sport,
                proto: k.proto,
                pad: [0; 3],
            };
            // Orphaned also when the forward entry took another port since.
            if !out.get(&fwd, 0).is_ok_and(|f| f.port == k.dport) {
                orphans.push(k);
            }
        }
        self.drop_orphans(abi::SNAT_IN_MAP, orphans, |k| gone_ok(back.remove(k)))?;
        Ok(removed)
    }

    fn sweep_inbound(&mut self, now: u64) -> Result<u64, Error> {
        let mut inbound: HashMap<_, NatKey, CtState> =
            HashMap::try_from(pinned(&self.pin_dir, abi::INBOUND_FLOWS_MAP)?)?;
        let over: Vec<NatKey> = inbound
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| self.timeouts.expired(v, k.proto, now))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for k in over {
            let Ok(v) = inbound.get(&k, 0) else { continue };
            if self.timeouts.expired(&v, k.proto, now) && gone_ok(inbound.remove(&k))? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn sweep_node_ports(&mut self, now: u64) -> Result<u64, Error> {
        let mut flows: HashMap<_, NatKey, NodePortFlow> =
            HashMap::try_from(pinned(&self.pin_dir, abi::NODEPORT_FLOWS_MAP)?)?;
        let mut replies: HashMap<_, NatKey, NodePortReply> =
            HashMap::try_from(pinned(&self.pin_dir, abi::NODEPORT_REPLIES_MAP)?)?;
        let all: Vec<(NatKey, NodePortFlow)> = flows.iter().filter_map(Result::ok).collect();
        let mut live = HashSet::new();
        let mut removed = 0;
        for (k, v) in all {
            let reply = node_port_reply_key(&k, &v);
            if !self.timeouts.expired(&v.ct, k.proto, now) {
                live.insert(reply);
                continue;
            }
            let still = flows
                .get(&k, 0)
                .is_ok_and(|v| self.timeouts.expired(&v.ct, k.proto, now));
            if !still || !gone_ok(flows.remove(&k))? {
                live.insert(reply);
                continue;
            }
            gone_ok(replies.remove(&reply))?;
            removed += 1;
        }
        let orphans: Vec<NatKey> = replies
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(k))
            .collect();
        self.drop_orphans(abi::NODEPORT_REPLIES_MAP, orphans, |k| {
            gone_ok(replies.remove(k))
        })?;
        Ok(removed)
    }

    /// Removes the reply entries of `table` found orphaned by this sweep
    /// and the one before.
    fn drop_orphans(
        &mut self,
        table: &'static str,
        now: Vec<NatKey>,
        mut remove: impl FnMut(&NatKey) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let before = std::mem::take(&mut self.orphans);
        for k in now {
            if before.contains(&(table, k)) {
                remove(&k)?;
            } else {
                self.orphans.insert((table, k));
            }
        }
        // Keep the other table's candidates for its own turn.
        self.orphans
            .extend(before.into_iter().filter(|(t, _)| *t != table));
        Ok(())
    }

    /// Adds the flows removed per pod to the pods' closed counters.
    fn give_back(&self, closed: &BTreeMap<u32, u64>) -> Result<(), Error> {
        if closed.is_empty() {
            return Ok(());
        }
        let data = MapData::from_pin(self.pin_dir.join(abi::CT_POD_CLOSED_MAP))?;
        let mut map: HashMap<_, u32, u64> = HashMap::try_from(Map::HashMap(data))?;
        for (pod, n) in closed {
            let had = map.get(pod, 0).unwrap_or(0);
            map.insert(pod, had.wrapping_add(*n), 0)?;
        }
        Ok(())
    }
}

/// The reply entry of a masqueraded flow.
fn snat_reply_key(k: &NatKey, v: &SnatFlow) -> NatKey {
    NatKey {
        src: k.dst,
        dst: v.addr,
        sport: k.dport,
        dport: v.port,
        proto: k.proto,
        pad: [0; 3],
    }
}

/// The reply entry of a node port flow (as `nodeport::open` writes it).
fn node_port_reply_key(k: &NatKey, v: &NodePortFlow) -> NatKey {
    if v.nat_port == 0 {
        NatKey {
            src: v.backend_ip,
            dst: k.src,
            sport: v.backend_port,
            dport: k.sport,
            proto: k.proto,
            pad: [0; 3],
        }
    } else {
        NatKey {
            src: v.backend_ip,
            dst: k.dst,
            sport: v.backend_port,
            dport: v.nat_port,
            proto: k.proto,
            pad: [0; 3],
        }
    }
}

/// Adds `n` to the `conntrack_swept` counter (its first CPU's slot: the
/// programs never write this one).
fn add_swept(pin_dir: &Path, n: u64) -> Result<(), Error> {
    let data = MapData::from_pin(pin_dir.join(abi::STATS_MAP))?;
    let mut stats: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    let index = abi::Stat::CtSwept.index();
    let mut values: Vec<u64> = stats.get(&index, 0)?.to_vec();
    if let Some(first) = values.first_mut() {
        *first = first.wrapping_add(n);
    }
    stats.set(index, PerCpuValues::try_from(values)?, 0)?;
    Ok(())
}

/// Entries in each conntrack table of `pin_dir`, for `agent bpf status`.
pub fn table_sizes(pin_dir: &Path) -> Result<Vec<(&'static str, usize)>, Error> {
    fn count<V: aya::Pod>(pin_dir: &Path, name: &str) -> Result<usize, Error> {
        let map: HashMap<_, NatKey, V> = HashMap::try_from(pinned(pin_dir, name)?)?;
        Ok(map.keys().filter_map(Result::ok).count())
    }
    Ok(vec![
        (
            abi::SNAT_OUT_MAP,
            count::<SnatFlow>(pin_dir, abi::SNAT_OUT_MAP)?,
        ),
        (
            abi::SNAT_IN_MAP,
            count::<NatValue>(pin_dir, abi::SNAT_IN_MAP)?,
        ),
        (
            abi::INBOUND_FLOWS_MAP,
            count::<CtState>(pin_dir, abi::INBOUND_FLOWS_MAP)?,
        ),
        (
            abi::NODEPORT_FLOWS_MAP,
            count::<NodePortFlow>(pin_dir, abi::NODEPORT_FLOWS_MAP)?,
        ),
        (
            abi::NODEPORT_REPLIES_MAP,
            count::<NodePortReply>(pin_dir, abi::NODEPORT_REPLIES_MAP)?,
        ),
    ])
}

/// Masqueraded flows each pod holds now (opened minus swept), for
/// `agent bpf status`.
pub fn pod_flows(pin_dir: &Path) -> Result<Vec<(std::net::Ipv4Addr, u64)>, Error> {
    let read = |name: &str| -> Result<BTreeMap<u32, u64>, Error> {
        let data = MapData::from_pin(pin_dir.join(name))?;
        let map: HashMap<_, u32, u64> = HashMap::try_from(Map::HashMap(data))?;
        Ok(map.iter().filter_map(Result::ok).collect())
    };
    let opened = read(abi::CT_POD_OPENED_MAP)?;
    let closed = read(abi::CT_POD_CLOSED_MAP)?;
    let mut out: Vec<_> = opened
        .iter()
        .map(|(pod, n)| {
            let held = n.wrapping_sub(closed.get(pod).copied().unwrap_or(0));
            (std::net::Ipv4Addr::from(pod.to_ne_bytes()), held)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    out.sort();
    Ok(out)
}

/// Sweeps `pin_dir` every `interval` for as long as the agent runs.
pub async fn run(pin_dir: PathBuf, timeouts: Timeouts, interval: Duration) {
    let mut sweeper = Sweeper::new(&pin_dir, timeouts);
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A walk of 64k entries takes a while: off the async threads.
        let result = tokio::task::spawn_blocking(move || {
            let r = sweeper.sweep(monotonic_ns());
            (sweeper, r)
        })
        .await;
        match result {
            Ok((s, r)) => {
                sweeper = s;
                match r {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "conntrack sweep"),
                    Err(e) => tracing::warn!("conntrack sweep: {e}"),
                }
            }
            Err(e) => {
                tracing::error!("conntrack sweep panicked: {e}");
                sweeper = Sweeper::new(&pin_dir, timeouts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn tcp_flows_age_by_stage() {
        let t = Timeouts {
            tcp_opening: Duration::from_secs(60),
            tcp_established: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            icmp: Duration::from_secs(5),
        };
        let s = 1_000_000_000;
        let at = |flags| CtState {
            last_seen: 0,
            flags,
            owner: 0,
        };
        let syn = at(abi::CT_SEEN_FORWARD);
        assert!(!t.expired(&syn, 6, 59 * s));
        assert!(t.expired(&syn, 6, 60 * s));
        let est = at(abi::CT_SEEN_FORWARD | abi::CT_SEEN_REPLY | abi::CT_TCP_NON_SYN);
        assert!(!t.expired(&est, 6, 3599 * s));
        // One FIN is a half-close: still established.
        let half = at(est.flags | abi::CT_TCP_FIN_FORWARD);
        assert!(!t.expired(&half, 6, 600 * s));
        let closed = at(half.flags | abi::CT_TCP_FIN_REPLY);
        assert!(t.expired(&closed, 6, 10 * s));
        assert!(t.expired(&at(est.flags | abi::CT_TCP_RST), 6, 10 * s));
        assert!(t.expired(&at(abi::CT_SEEN_FORWARD), 17, 30 * s));
        assert!(!t.expired(&at(abi::CT_SEEN_FORWARD), 17, 29 * s));
        assert!(t.expired(&at(abi::CT_SEEN_FORWARD), 1, 5 * s));
    }
}
