//! Writing [`Entries`] into the pinned policy maps: only the difference
//! from what was written last, so a change touches a few entries and the
//! programs never see a half-empty map.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use agent_ebpf_common::{
    self as abi, PolicyCidrKey, PolicyCounters, PolicyEndpoint, PolicyRuleKey,
};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues};

use super::encode::Entries;
use crate::ebpf::Error;

/// The policy maps pinned in one bpffs directory, and what was written to
/// them.
pub struct PolicyMaps {
    pin_dir: PathBuf,
    written: Entries,
    /// Endpoint slots of local pods, by (namespace, name).
    pub slots: BTreeMap<(String, String), u32>,
}

fn open(pin_dir: &Path, name: &str) -> Result<MapData, MapError> {
    MapData::from_pin(pin_dir.join(name))
}

type Hash<K, V> = aya::maps::HashMap<MapData, K, V>;

impl PolicyMaps {
    /// Takes over the maps in `pin_dir`. What an earlier agent wrote is
    /// cleared on the first [`apply`](Self::apply), entry by entry.
    pub fn open(pin_dir: &Path) -> Result<Self, MapError> {
        let mut written = Entries::default();
        let ids: Hash<u32, u32> =
            Hash::try_from(Map::HashMap(open(pin_dir, abi::POLICY_IDENTITIES_MAP)?))?;
        for item in ids.iter() {
            let (k, v) = item?;
            written.identities.insert(k, v);
        }
        let eps: Hash<u32, PolicyEndpoint> =
            Hash::try_from(Map::HashMap(open(pin_dir, abi::POLICY_ENDPOINTS_MAP)?))?;
        for item in eps.iter() {
            let (k, v) = item?;
            written.endpoints.insert(k, v);
        }
        let rules: LpmTrie<MapData, PolicyRuleKey, u32> =
            LpmTrie::try_from(Map::LpmTrie(open(pin_dir, abi::POLICY_RULES_MAP)?))?;
        for key in rules.keys() {
            let key = key?;
            written.rules.insert((key.prefix_len(), key.data()));
        }
        let cidrs: LpmTrie<MapData, PolicyCidrKey, u32> =
            LpmTrie::try_from(Map::LpmTrie(open(pin_dir, abi::POLICY_CIDRS_MAP)?))?;
        for item in cidrs.iter() {
            let (key, v) = item?;
            written.cidrs.insert((key.prefix_len(), key.data()), v);
        }
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            written,
            slots: BTreeMap::new(),
        })
    }

    /// Gives every pod in `pods` a slot (keeping existing ones) and frees
    /// the slots of pods not in it; a new slot starts with zero counters.
    pub fn assign_slots(&mut self, pods: &[(String, String)]) -> Result<(), Error> {
        self.slots.retain(|k, _| pods.contains(k));
        let mut used: Vec<u32> = self.slots.values().copied().collect();
        used.sort_unstable();
        for pod in pods {
            if self.slots.contains_key(pod) {
                continue;
            }
            let Some(free) =
                (0..abi::MAX_POLICY_ENDPOINTS).find(|s| used.binary_search(s).is_err())
            else {
                tracing::warn!(pod = ?pod, "no policy slot left for the pod");
                continue;
            };
            self.reset_counters(free)?;
            used.insert(used.partition_point(|s| *s < free), free);
            self.slots.insert(pod.clone(), free);
        }
        Ok(())
    }

    fn reset_counters(&self, slot: u32) -> Result<(), Error> {
        let mut counters: PerCpuArray<MapData, PolicyCounters> = PerCpuArray::try_from(
            Map::PerCpuArray(open(&self.pin_dir, abi::POLICY_COUNTERS_MAP)?),
        )?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zero = PerCpuValues::try_from(vec![PolicyCounters::default(); cpus])?;
        Ok(counters.set(slot, zero, 0)?)
    }

    /// Writes `next`: new and changed entries first (rules before the
    /// endpoints that use them), then removes what is gone.
    pub fn apply(&mut self, next: Entries) -> Result<(), MapError> {
        let old = &self.written;
        let changed = next.rules != old.rules
            || next.cidrs != old.cidrs
            || next.identities != old.identities
            || next.endpoints != old.endpoints;
        let mut rules: LpmTrie<MapData, PolicyRuleKey, u32> =
            LpmTrie::try_from(Map::LpmTrie(open(&self.pin_dir, abi::POLICY_RULES_MAP)?))?;
        let mut cidrs: LpmTrie<MapData, PolicyCidrKey, u32> =
            LpmTrie::try_from(Map::LpmTrie(open(&self.pin_dir, abi::POLICY_CIDRS_MAP)?))?;
        let mut ids: Hash<u32, u32> = Hash::try_from(Map::HashMap(open(
            &self.pin_dir,
            abi::POLICY_IDENTITIES_MAP,
        )?))?;
        let mut eps: Hash<u32, PolicyEndpoint> = Hash::try_from(Map::HashMap(open(
            &self.pin_dir,
            abi::POLICY_ENDPOINTS_MAP,
        )?))?;
        for (bits, key) in next.rules.difference(&old.rules) {
            rules.insert(&Key::new(*bits, *key), 1, 0)?;
        }
        upsert(&next.cidrs, &old.cidrs, |(bits, key), v| {
            cidrs.insert(&Key::new(*bits, *key), v, 0)
        })?;
        upsert(&next.identities, &old.identities, |k, v| {
            ids.insert(k, v, 0)
        })?;
        upsert(&next.endpoints, &old.endpoints, |k, v| eps.insert(k, v, 0))?;
        for k in old
            .endpoints
            .keys()
            .filter(|k| !next.endpoints.contains_key(k))
        {
            gone(eps.remove(k))?;
        }
        for k in old
            .identities
            .keys()
            .filter(|k| !next.identities.contains_key(k))
        {
            gone(ids.remove(k))?;
        }
        for (bits, key) in old.cidrs.keys().filter(|k| !next.cidrs.contains_key(k)) {
            gone(cidrs.remove(&Key::new(*bits, *key)))?;
        }
        for (bits, key) in old.rules.difference(&next.rules) {
            gone(rules.remove(&Key::new(*bits, *key)))?;
        }
        self.written = next;
        if changed {
            self.bump_generation()?;
        }
        Ok(())
    }

    /// Moves the datapath to a new policy generation, after the entries
    /// of a change are written: flows it remembers from before are checked
    /// against the new entries on their next packet, and those no longer
    /// allowed stop there.
    fn bump_generation(&self) -> Result<(), MapError> {
        let mut generation: Array<MapData, u32> =
            Array::try_from(Map::Array(open(&self.pin_dir, abi::POLICY_GENERATION_MAP)?))?;
        let now = generation.get(&0, 0)?;
        generation.set(0, now.wrapping_add(1), 0)
    }
}

fn upsert<K: Eq + std::hash::Hash, V: PartialEq + Copy>(
    next: &HashMap<K, V>,
    old: &HashMap<K, V>,
    mut put: impl FnMut(&K, V) -> Result<(), MapError>,
) -> Result<(), MapError> {
    for (k, v) in next {
        if old.get(k) != Some(v) {
            put(k, *v)?;
        }
    }
    Ok(())
}

/// A removal of an entry already gone is fine.
fn gone(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// One local pod's policy as the maps hold it, for `agent bpf policy`.
#[derive(Debug, Default)]
pub struct Shown {
    pub ip: Option<Ipv4Addr>,
    pub endpoint: PolicyEndpoint,
    pub counters: PolicyCounters,
    /// (direction, peer, protocol, first port, last port), sorted.
    pub rules: Vec<(u8, u32, u8, u16, u16)>,
    /// (direction, CIDR, slots).
    pub cidrs: Vec<(u8, String, u32)>,
}

/// Reads the policy maps pinned in `pin_dir`: each local pod's entry,
/// rules and counters, and every known identity.
pub fn read(pin_dir: &Path) -> Result<(Vec<Shown>, BTreeMap<Ipv4Addr, u32>), Error> {
    let maps = PolicyMaps::open(pin_dir)?;
    let counters: PerCpuArray<MapData, PolicyCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, abi::POLICY_COUNTERS_MAP)?))?;
    let mut out = Vec::new();
    for (ip, ep) in &maps.written.endpoints {
        let mut shown = Shown {
            ip: Some(Ipv4Addr::from(ip.to_ne_bytes())),
            endpoint: *ep,
            ..Default::default()
        };
        for c in counters.get(&ep.id, 0)?.iter() {
            shown.counters.ingress_allowed += c.ingress_allowed;
            shown.counters.ingress_denied += c.ingress_denied;
            shown.counters.egress_allowed += c.egress_allowed;
            shown.counters.egress_denied += c.egress_denied;
        }
        for (bits, k) in maps
            .written
            .rules
            .iter()
            .filter(|(_, k)| k.endpoint == ep.id)
        {
            let port_bits = bits - abi::POLICY_RULE_FIXED_BITS;
            let first = u16::from_be_bytes(k.port);
            let span = (1u32 << (16 - port_bits)) - 1;
            let last = (u32::from(first) + span).min(65535) as u16;
            shown
                .rules
                .push((k.direction, k.peer, k.proto, first, last));
        }
        shown.rules.sort_unstable();
        for ((bits, k), slots) in maps
            .written
            .cidrs
            .iter()
            .filter(|((_, k), _)| k.endpoint == ep.id)
        {
            let len = bits - abi::POLICY_CIDR_FIXED_BITS;
            let net = format!("{}/{len}", Ipv4Addr::from(k.addr.to_ne_bytes()));
            shown.cidrs.push((k.direction as u8, net, *slots));
        }
        shown.cidrs.sort();
        out.push(shown);
    }
    out.sort_by_key(|s| s.ip);
    let ids = maps
        .written
        .identities
        .iter()
        .map(|(k, v)| (Ipv4Addr::from(k.to_ne_bytes()), *v))
        .collect();
    Ok((out, ids))
}
