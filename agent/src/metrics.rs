//! The agent's Prometheus metrics, served on the node API's `/metrics`:
//! pod start latency, image pull time, pods running, how full the
//! datapath's maps are, and NetworkPolicy verdicts per pod.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use kit::metrics::{Counter, Family, Gauge, Histogram, Kind, Registry};

/// Bucket bounds in seconds, shared by the histograms here.
const BOUNDS: [f64; 12] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The agent's own metrics, each in the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// From a pod's creation to all its containers running, as this agent
    /// saw it.
    pub pod_start: Arc<Histogram>,
    /// Image pulls from a registry, successful ones.
    pub image_pull: Arc<Histogram>,
    /// Pods this agent runs right now.
    pub pods: Arc<Gauge>,
    /// Events the recorder's queue had no room for.
    pub events_dropped: Arc<Counter>,
}

/// One set per process: pod workers and the recorder count from anywhere.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::default();
    Metrics {
        pod_start: registry.histogram(
            "kestrel_agent_pod_start_duration_seconds",
            "Time from a pod's creation to all its containers running.",
            &BOUNDS,
        ),
        image_pull: registry.histogram(
            "kestrel_agent_image_pull_duration_seconds",
            "Time to pull an image from a registry.",
            &BOUNDS,
        ),
        pods: registry.gauge("kestrel_agent_pods", "Pods this agent runs."),
        events_dropped: registry.counter(
            "kestrel_agent_events_dropped_total",
            "Events dropped because the recorder's queue was full.",
        ),
        registry,
    }
});

/// Adds the datapath's maps, pinned in `pins`, to `/metrics`: each family
/// is read at every scrape, and left out while its map cannot be read
/// (before the datapath is loaded). Called once, when the datapath is
/// known.
pub fn read_datapath(pins: PathBuf) {
    METRICS.registry.collector(move || datapath(&pins));
}

fn datapath(pins: &std::path::Path) -> Vec<Family> {
    let mut out = Vec::new();
    if let Ok(eps) = crate::network::datapath::read_endpoints(pins) {
        out.push(Family {
            name: "kestrel_datapath_endpoints",
            help: "Pods in the eBPF endpoint map.",
            kind: Kind::Gauge,
            samples: vec![(vec![], eps.len() as u64)],
        });
    }
    if let Ok(nat) = crate::network::datapath::read_nat(pins) {
        out.push(Family {
            name: "kestrel_datapath_masqueraded_flows",
            help: "Flows in the masquerade conntrack.",
            kind: Kind::Gauge,
            samples: vec![(vec![], nat.len() as u64)],
        });
    }
    if let Ok(tables) = crate::network::conntrack::table_sizes(pins) {
        out.push(Family {
            name: "kestrel_datapath_conntrack_entries",
            help: "Entries in each conntrack map.",
            kind: Kind::Gauge,
            samples: tables
                .into_iter()
                .map(|(table, n)| (vec![("table", table.to_string())], n as u64))
                .collect(),
        });
    }
    if let Ok(stats) = crate::network::datapath::read_stats(pins) {
        out.push(Family {
            name: "kestrel_datapath_decisions_total",
            help: "Routing decisions of the eBPF programs.",
            kind: Kind::Counter,
            samples: stats
                .into_iter()
                .map(|(name, n)| (vec![("decision", name.to_string())], n))
                .collect(),
        });
    }
    out.extend(crate::policy::metrics::families(pins));
    out
}

/// The text of `/metrics`.
pub fn render() -> String {
    METRICS.registry.render()
}
