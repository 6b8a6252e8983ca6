//! A small Prometheus text registry: counters, gauges and histograms kept
//! in atomics, and families read from elsewhere at each scrape, rendered
//! on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations in seconds, bucketed.
pub struct Histogram {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in nanoseconds, so it fits an atomic integer.
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            if s <= *b {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The type of a collected family.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Labels of one sample, in the order written.
pub type Labels = Vec<(&'static str, String)>;

/// A metric family read at scrape time: counts kept outside the process's
/// own atomics (a kernel map, say).
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Written in order; a sample without labels is written bare.
    pub samples: Vec<(Labels, u64)>,
}

type Collect = Box<dyn Fn() -> Vec<Family> + Send + Sync>;

enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
    /// Families of any names, given by a function at each scrape.
    Collected(Collect),
}

/// Every metric of one process, rendered in the order registered.
#[derive(Default)]
pub struct Registry {
    metrics: Mutex<Vec<(String, String, Metric)>>,
}

/// Latency buckets from 1 ms to 1 min.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Registry {
    pub fn counter(&self, name: &str, help: &str) -> Arc<Counter> {
        let c = Arc::new(Counter::default());
        self.push(name, help, Metric::Counter(c.clone()));
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> Arc<Gauge> {
        let g = Arc::new(Gauge::default());
        self.push(name, help, Metric::Gauge(g.clone()));
        g
    }

    pub fn histogram(&self, name: &str, help: &str, bounds: &[f64]) -> Arc<Histogram> {
        let h = Arc::new(Histogram::new(bounds));
        self.push(name, help, Metric::Histogram(h.clone()));
        h
    }

    /// Families `collect` gives at each scrape, written where it was
    /// registered; it gives none of those it cannot read, and those are
    /// left out. It runs with the registry locked, so it must not use the
    /// registry itself.
    pub fn collector(&self, collect: impl Fn() -> Vec<Family> + Send + Sync + 'static) {
        self.push("", "", Metric::Collected(Box::new(collect)));
    }

    fn push(&self, name: &str, help: &str, m: Metric) {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.into(), help.into(), m));
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for (name, help, m) in metrics.iter() {
            if let Metric::Collected(collect) = m {
                for family in collect() {
                    render_family(&mut out, &family);
                }
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {help}");
            match m {
                Metric::Collected(_) => {}
                Metric::Counter(c) => {
                    let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", c.get());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", g.get());
                }
                Metric::Histogram(h) => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    for (b, n) in h.bounds.iter().zip(&h.buckets) {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{le=\"{b}\"}} {}",
                            n.load(Ordering::Relaxed)
                        );
                    }
                    let count = h.count.load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
                    let _ = writeln!(
                        out,
                        "{name}_sum {}",
                        h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
                    );
                    let _ = writeln!(out, "{name}_count {count}");
                }
            }
        }
        out
    }
}

fn render_family(out: &mut String, f: &Family) {
    let name = f.name;
    let kind = match f.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", f.help);
    for (labels, v) in &f.samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
            continue;
        }
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let r = Registry::default();
        r.counter("binds_total", "Binds.").add(3);
        let h = r.histogram("latency_seconds", "Latency.", &[0.01, 0.1]);
        h.observe(std::time::Duration::from_millis(5));
        h.observe(std::time::Duration::from_millis(50));
        let text = r.render();
        assert!(text.contains("# TYPE binds_total counter\nbinds_total 3\n"));
        assert!(text.contains("latency_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("latency_seconds_bucket{le=\"0.1\"} 2\n"));
        assert!(text.contains("latency_seconds_count 2\n"));
    }

    #[test]
    fn collected_families_render_where_registered() {
        let r = Registry::default();
        r.gauge("first", "First.").set(1);
        r.collector(|| {
            vec![
                Family {
                    name: "bare",
                    help: "Bare.",
                    kind: Kind::Gauge,
                    samples: vec![(vec![], 7)],
                },
                Family {
                    name: "flows_total",
                    help: "Flows.",
                    kind: Kind::Counter,
                    samples: vec![(
                        vec![("pod", "a\"b\\c\nd".into()), ("direction", "in".into())],
                        2,
                    )],
                },
            ]
        });
        r.collector(Vec::new);
        r.counter("last_total", "Last.").inc();
        assert_eq!(
            r.render(),
            "# HELP first First.\n# TYPE first gauge\nfirst 1\n\
             # HELP bare Bare.\n# TYPE bare gauge\nbare 7\n\
             # HELP flows_total Flows.\n# TYPE flows_total counter\n\
             flows_total{pod=\"a\\\"b\\\\c\\nd\",direction=\"in\"} 2\n\
             # HELP last_total Last.\n# TYPE last_total counter\nlast_total 1\n"
        );
    }
}
