//! The agent's Prometheus metrics, served on the node API's `/metrics`:
//! pod start latency, image pull time, pods running, how full the
//! datapath's maps are, and NetworkPolicy verdicts per pod.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds in seconds, shared by the histograms here.
const BOUNDS: [f64; 12] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A histogram of durations in lock-free counters.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, n) in BOUNDS.iter().zip(&self.buckets) {
            if s <= *b {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, n) in BOUNDS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// From a pod's creation to all its containers running, as this agent saw it.
pub static POD_START: Histogram = Histogram::new();
/// Image pulls from a registry, successful ones.
pub static IMAGE_PULL: Histogram = Histogram::new();
/// Pods this agent runs right now.
pub static PODS: AtomicU64 = AtomicU64::new(0);
/// Events the recorder's queue had no room for.
pub static EVENTS_DROPPED: std::sync::LazyLock<std::sync::Arc<kit::metrics::Counter>> =
    std::sync::LazyLock::new(Default::default);

/// The text of `/metrics`; `pins` is the datapath's bpffs directory, whose
/// maps are counted when present.
pub fn render(pins: Option<&std::path::Path>) -> String {
    let mut out = String::new();
    POD_START.render(
        &mut out,
        "kestrel_agent_pod_start_duration_seconds",
        "Time from a pod's creation to all its containers running.",
    );
    IMAGE_PULL.render(
        &mut out,
        "kestrel_agent_image_pull_duration_seconds",
        "Time to pull an image from a registry.",
    );
    let _ = writeln!(
        out,
        "# HELP kestrel_agent_pods Pods this agent runs.\n# TYPE kestrel_agent_pods gauge\nkestrel_agent_pods {}",
        PODS.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP kestrel_agent_events_dropped_total Events dropped because the recorder's queue was full.\n# TYPE kestrel_agent_events_dropped_total counter\nkestrel_agent_events_dropped_total {}",
        EVENTS_DROPPED.get()
    );
    if let Some(pins) = pins {
        if let Ok(eps) = crate::network::datapath::read_endpoints(pins) {
            let _ = writeln!(
                out,
                "# HELP kestrel_datapath_endpoints Pods in the eBPF endpoint map.\n# TYPE kestrel_datapath_endpoints gauge\nkestrel_datapath_endpoints {}",
                eps.len()
            );
        }
        if let Ok(nat) = crate::network::datapath::read_nat(pins) {
            let _ = writeln!(
                out,
                "# HELP kestrel_datapath_masqueraded_flows Flows in the masquerade conntrack.\n# TYPE kestrel_datapath_masqueraded_flows gauge\nkestrel_datapath_masqueraded_flows {}",
                nat.len()
            );
        }
        if let Ok(tables) = crate::network::conntrack::table_sizes(pins) {
            let _ = writeln!(
                out,
                "# HELP kestrel_datapath_conntrack_entries Entries in each conntrack map.\n# TYPE kestrel_datapath_conntrack_entries gauge"
            );
            for (table, n) in tables {
                let _ = writeln!(
                    out,
                    "kestrel_datapath_conntrack_entries{{table=\"{table}\"}} {n}"
                );
            }
        }
        if let Ok(stats) = crate::network::datapath::read_stats(pins) {
            let _ = writeln!(
                out,
                "# HELP kestrel_datapath_decisions_total Routing decisions of the eBPF programs.\n# TYPE kestrel_datapath_decisions_total counter"
            );
            for (name, n) in stats {
                let _ = writeln!(
                    out,
                    "kestrel_datapath_decisions_total{{decision=\"{name}\"}} {n}"
                );
            }
        }
        crate::policy::metrics::render(&mut out, pins);
    }
    out
}
