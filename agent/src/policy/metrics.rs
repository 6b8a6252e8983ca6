//! The policy verdict counters on `/metrics`: new flows allowed and denied
//! per local pod and direction, read from the datapath's per-slot counters.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use agent_ebpf_common::{self as abi, PolicyCounters};
use aya::maps::{Map, MapData, PerCpuArray};
use kit::metrics::{Family, Kind};

/// The local pods with a counter slot, as (namespace, name) by slot; the
/// engine republishes it whenever slots change.
static SLOTS: Mutex<BTreeMap<u32, (String, String)>> = Mutex::new(BTreeMap::new());

/// Records which pod each counter slot belongs to now.
pub fn publish(slots: &BTreeMap<(String, String), u32>) {
    let by_slot = slots.iter().map(|(pod, s)| (*s, pod.clone())).collect();
    if let Ok(mut s) = SLOTS.lock() {
        *s = by_slot;
    }
}

/// The per-pod counters, when the maps in `pins` can be read (they cannot
/// before the datapath is loaded).
pub fn families(pins: &Path) -> Vec<Family> {
    let Ok(data) = MapData::from_pin(pins.join(abi::POLICY_COUNTERS_MAP)) else {
        return Vec::new();
    };
    let Ok(counters) = PerCpuArray::<MapData, PolicyCounters>::try_from(Map::PerCpuArray(data))
    else {
        return Vec::new();
    };
    let slots = match SLOTS.lock() {
        Ok(s) => s.clone(),
        Err(_) => return Vec::new(),
    };
    let mut rows = Vec::with_capacity(slots.len());
    for (slot, pod) in slots {
        let Ok(per_cpu) = counters.get(&slot, 0) else {
            continue;
        };
        let mut sum = PolicyCounters::default();
        for c in per_cpu.iter() {
            sum.ingress_allowed += c.ingress_allowed;
            sum.ingress_denied += c.ingress_denied;
            sum.egress_allowed += c.egress_allowed;
            sum.egress_denied += c.egress_denied;
        }
        rows.push((pod, sum));
    }
    [
        (
            "kestrel_policy_denied_flows_total",
            "New flows a NetworkPolicy denied, by local pod and direction.",
            (|c: &PolicyCounters| (c.ingress_denied, c.egress_denied)) as fn(&_) -> _,
        ),
        (
            "kestrel_policy_allowed_flows_total",
            "New flows to or from an isolated local pod that a NetworkPolicy allowed.",
            |c: &PolicyCounters| (c.ingress_allowed, c.egress_allowed),
        ),
    ]
    .into_iter()
    .map(|(name, help, pick)| Family {
        name,
        help,
        kind: Kind::Counter,
        samples: rows
            .iter()
            .flat_map(|((ns, pod), c)| {
                let (ingress, egress) = pick(c);
                [("ingress", ingress), ("egress", egress)].map(|(direction, n)| {
                    (
                        vec![
                            ("namespace", ns.clone()),
                            ("pod", pod.clone()),
                            ("direction", direction.to_string()),
                        ],
                        n,
                    )
                })
            })
            .collect(),
    })
    .collect()
}
