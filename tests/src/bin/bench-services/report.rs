//! The Markdown tables and the chart's panels.

use harness::netbench::chart::{Bar, Panel};
use harness::netbench::{median, median_of, median_ratio};

use crate::{
    Args, Changes, Paired, Sample, Samples, CHANGES, IPTABLES, NFTABLES, OURS, PATHS, POD_IP, VETH,
};

/// A ratio row: what, the value, and its target (bound, whether it is a
/// floor rather than a ceiling).
type Row = (String, f64, Option<(f64, bool)>);

/// Picks one number out of a sample.
type Field = fn(&Sample) -> f64;

/// The `p`th percentile (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn render_changes(a: &Args, changes: &[Changes]) -> String {
    let mut out = format!(
        "\n## Endpoint changes\n\n{CHANGES} times at each size, filler `f0`'s EndpointSlice is \
         replaced with its third endpoint moved, and timed from the API's answer until the \
         node's maps hold the new backend (the agent's watch, its model and the map writes). \
         The baselines' column is what loading their whole rule set for as many services took, \
         once (kube-proxy's full resync); a change costs them at least a restore of the chains \
         it touches. With one service there is no filler to change (–).\n\n\
         | services | change to maps p50 ms | max ms | iptables-restore of the set ms | nft -f of the set ms | iptables ÷ ours (p50) |\n\
         |---:|---:|---:|---:|---:|---:|\n"
    );
    for (n, c) in a.sizes.iter().zip(changes) {
        let mut v = c.lags_ms.clone();
        v.sort_by(f64::total_cmp);
        let (p50, max) = if v.is_empty() {
            ("–".to_string(), "–".to_string())
        } else {
            (
                format!("{:.1}", percentile(&v, 50.0)),
                format!("{:.1}", percentile(&v, 100.0)),
            )
        };
        let times = if v.is_empty() {
            "–".to_string()
        } else {
            format!("{:.0}", c.iptables_s * 1e3 / percentile(&v, 50.0))
        };
        out.push_str(&format!(
            "| {n} | {p50} | {max} | {:.0} | {:.0} | {times} |\n",
            c.iptables_s * 1e3,
            c.nft_s * 1e3
        ));
    }
    out
}

pub(crate) fn render(a: &Args, s: &Samples, busy: (f64, f64), rr_cpu: Option<usize>) -> String {
    let mut out = String::from("# Services: ClusterIP cost by service count\n\n");
    out.push_str(&format!(
        "One node (a network namespace) on one machine ({} CPUs). Medians of {} round(s) of {} s per \
         measurement. connect: the connect() calls of TCP_CRR (`netperf-rr`), median and 99th \
         percentile; TCP_RR: 1-byte request/response on one connection; throughput: iperf3, one \
         stream, and what a gigabit of it cost in CPU cycles (both iperf3 processes, the softirq \
         work done on their behalf and the ksoftirqd threads, times the CPU clock). Ours: the client pod's namespace, in the agent's cgroup subtree, to the measured \
         Service's ClusterIP (its only endpoint the server pod on the same node); filler Services \
         have 3 endpoints each. Baselines: veth pairs, the client's namespace holding kube-proxy's \
         rules for as many services, the measured one in the middle of KUBE-SERVICES. {}.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.rounds,
        a.duration,
        match rr_cpu {
            Some(cpu) => format!("TCP_RR and TCP_CRR have both ends on CPU {cpu}"),
            None => "The scheduler places TCP_RR and TCP_CRR".into(),
        }
    ));
    out.push_str(
        "| services | path | connect p50 µs | connect p99 µs | TCP_CRR /s | TCP_RR /s | Gbit/s | Mcycles/Gbit |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (z, n) in a.sizes.iter().enumerate() {
        for (p, (title, _, _)) in PATHS.iter().enumerate() {
            let v = &s[z][p];
            out.push_str(&format!(
                "| {n} | {title} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {:.0} |\n",
                median_of(v, |x| x.connect_p50_us),
                median_of(v, |x| x.connect_p99_us),
                median_of(v, |x| x.crr),
                median_of(v, |x| x.rr),
                median_of(v, |x| x.gbps),
                median_of(v, |x| x.mcycles),
            ));
        }
    }
    let first = 0;
    let last = a.sizes.len() - 1;
    let growth = |p: usize| {
        median_of(&s[last][p], |x| x.connect_p50_us) / median_of(&s[first][p], |x| x.connect_p50_us)
    };
    out.push_str("\n| ratio | measured | target | met |\n|---|---:|---:|---|\n");
    let mut rows: Vec<Row> = Vec::new();
    for (z, n) in a.sizes.iter().enumerate() {
        rows.push((
            format!("throughput at {n} services: ClusterIP ÷ pod IP"),
            median_ratio(&s[z][OURS], &s[z][POD_IP], |x| x.gbps),
            Some((0.98, true)),
        ));
        rows.push((
            format!("CPU cycles per gigabit at {n} services: ClusterIP ÷ pod IP"),
            median_ratio(&s[z][OURS], &s[z][POD_IP], |x| x.mcycles),
            Some((1.03, false)),
        ));
    }
    let (lo, hi) = (a.sizes[first], a.sizes[last]);
    rows.push((
        format!("connect p50, {hi} ÷ {lo} services: ClusterIP"),
        growth(OURS),
        Some((1.10, false)),
    ));
    rows.push((
        format!("connect p50, {hi} ÷ {lo} services: iptables"),
        growth(IPTABLES),
        None,
    ));
    rows.push((
        format!("connect p50, {hi} ÷ {lo} services: nftables"),
        growth(NFTABLES),
        None,
    ));
    for (z, n) in a.sizes.iter().enumerate() {
        rows.push((
            format!("TCP_CRR at {n} services: ClusterIP ÷ iptables"),
            median_ratio(&s[z][OURS], &s[z][IPTABLES], |x| x.crr),
            (*n == 5000).then_some((1.2, true)),
        ));
        rows.push((
            format!("TCP_CRR at {n} services: ClusterIP ÷ nftables"),
            median_ratio(&s[z][OURS], &s[z][NFTABLES], |x| x.crr),
            None,
        ));
        rows.push((
            format!("TCP_CRR at {n} services: pod IP ÷ plain veth"),
            median_ratio(&s[z][POD_IP], &s[z][VETH], |x| x.crr),
            None,
        ));
    }
    for (what, r, target) in rows {
        let (t, met) = match target {
            Some((t, true)) => (format!("≥ {t:.2}"), if r >= t { "yes" } else { "**no**" }),
            Some((t, false)) => (format!("≤ {t:.2}"), if r <= t { "yes" } else { "**no**" }),
            None => ("–".into(), ""),
        };
        out.push_str(&format!("| {what} | {r:.3} | {t} | {met} |\n"));
    }
    out.push_str(&format!(
        "\nTargets: ClusterIP throughput ≥ 98% of going straight to the pod; connect latency \
         grows ≤ 10% from the fewest to the most services; a gigabit through the ClusterIP \
         costs ≤ 3% more CPU than to the pod IP; TCP_CRR ≥ 1.2× the iptables baseline \
         at 5,000 services. The CPUs were {:.0}% busy in the 2 s before measuring and {:.0}% in \
         the 2 s after (the idle testbed included).\n",
        busy.0, busy.1
    ));
    out
}

/// The back-to-back pairs: per size, the median and range of the
/// ClusterIP ÷ pod IP ratios of the pairs' throughput and CPU cost.
pub(crate) fn render_pairs(a: &Args, pairs: &[Vec<Paired>]) -> String {
    if a.pairs == 0 {
        return String::new();
    }
    let mut out = format!(
        "\n## ClusterIP against the pod IP, back to back\n\n\
         At each size, {} pairs of {} s iperf3 runs, one stream each, the pod IP's and the \
         ClusterIP's run one right after the other, the leader alternating. Each pair gives one \
         ratio; the table shows their median and, in brackets, the lowest and highest. For \
         throughput above 1 is better, for CPU cycles per gigabit below 1 is.\n\n\
         | services | throughput, ClusterIP ÷ pod IP | Mcycles/Gbit, ClusterIP ÷ pod IP | pod IP Gbit/s | ClusterIP Gbit/s | pod IP Mcycles/Gbit | ClusterIP Mcycles/Gbit |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        a.pairs, a.duration
    );
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.3} ({lo:.3}–{hi:.3})", median(v))
    };
    for (n, runs) in a.sizes.iter().zip(pairs) {
        let gbps: Vec<f64> = runs.iter().map(|p| p.cluster_ip.0 / p.pod_ip.0).collect();
        let cost: Vec<f64> = runs.iter().map(|p| p.cluster_ip.1 / p.pod_ip.1).collect();
        out.push_str(&format!(
            "| {n} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
            spread(&gbps),
            spread(&cost),
            median_of(runs, |p| p.pod_ip.0),
            median_of(runs, |p| p.cluster_ip.0),
            median_of(runs, |p| p.pod_ip.1),
            median_of(runs, |p| p.cluster_ip.1),
        ));
    }
    out
}

fn size_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

pub(crate) fn panels(a: &Args, s: &Samples) -> Vec<Panel> {
    let metrics: [(&str, Field); 3] = [
        ("connect() median, µs (lower is better)", |x| {
            x.connect_p50_us
        }),
        ("TCP_CRR, transactions/s", |x| x.crr),
        ("TCP throughput, Gbit/s", |x| x.gbps),
    ];
    metrics
        .iter()
        .map(|(title, f)| {
            let mut bars = Vec::new();
            for p in [POD_IP, VETH, OURS, IPTABLES, NFTABLES] {
                // The rule-less paths do not change with the count: their
                // first size stands for all.
                let sizes: Vec<usize> = if p == POD_IP || p == VETH {
                    vec![0]
                } else {
                    (0..a.sizes.len()).collect()
                };
                for z in sizes {
                    let v: Vec<f64> = s[z][p].iter().map(f).collect();
                    let label = if p == POD_IP || p == VETH {
                        PATHS[p].1.to_string()
                    } else {
                        format!("{} {}", PATHS[p].1, size_label(a.sizes[z]))
                    };
                    bars.push(Bar {
                        label,
                        family: PATHS[p].2,
                        value: median(&v),
                        low: v.iter().copied().fold(f64::INFINITY, f64::min),
                        high: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    });
                }
            }
            Panel {
                title: title.to_string(),
                bars,
            }
        })
        .collect()
}
