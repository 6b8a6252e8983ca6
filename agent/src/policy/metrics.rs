//! The policy verdict counters on `/metrics`: new flows allowed and denied
//! per local pod and direction, read from the datapath's per-slot counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::Mutex;

use agent_ebpf_common::{self as abi, PolicyCounters};
use aya::maps::{Map, MapData, PerCpuArray};

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

/// Appends the per-pod counters to `out`, when the maps in `pins` can be
/// read (they cannot before the datapath is loaded).
pub fn render(out: &mut String, pins: &Path) {
    let Ok(data) = MapData::from_pin(pins.join(abi::POLICY_COUNTERS_MAP)) else {
        return;
    };
    let Ok(counters) = PerCpuArray::<MapData, PolicyCounters>::try_from(Map::PerCpuArray(data))
    else {
        return;
    };
    let slots = match SLOTS.lock() {
        Ok(s) => s.clone(),
        Err(_) => return,
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
    for (name, help, pick) in [
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
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((ns, pod), c) in &rows {
            let (ingress, egress) = pick(c);
            for (direction, n) in [("ingress", ingress), ("egress", egress)] {
                let _ = writeln!(
                    out,
                    "{name}{{namespace=\"{}\",pod=\"{}\",direction=\"{direction}\"}} {n}",
                    escape(ns),
                    escape(pod)
                );
            }
        }
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
