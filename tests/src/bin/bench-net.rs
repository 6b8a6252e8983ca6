//! `bench-net`: throughput and request/response rates of the pod network,
//! against the machine's limit and against the reference bridge plugin.
//!
//! It builds eleven paths, each between network namespaces of its own:
//! a plain veth pair (nothing but the link: the limit), node to node over
//! the segment bridge the nodes share (the limit of any path across
//! nodes) and through a VXLAN tunnel between them (the limit of any
//! tunnelled path), pod to pod on one node and across two nodes with the real agent
//! and its eBPF datapath (nodes as namespaces on a segment bridge, as in
//! the end-to-end tests), the same two with agents held to 64 KiB
//! aggregates (what BIG TCP brings), two nodes whose agents tunnel with
//! VXLAN (their programs wrapping what pods send) and two whose kernel
//! VXLAN devices wrap it, and pod to pod on one node and across two with Debian's CNI
//! `bridge` plugin (`host-local` IPAM, a bridge per node, routes between
//! the nodes). On each it measures one
//! iperf3 TCP stream, eight parallel streams, one UDP stream, TCP_RR (with
//! its 99th percentile) and TCP_CRR (`netperf-rr`), and the CPU cycles
//! each gigabit of the bulk transfers cost; it repeats that in rounds that
//! interleave the paths, and reports the medians and the ratios of paths
//! as Markdown tables (stdout and `target/bench/net.md`) and a bar chart
//! (`target/bench/net.png`). Every namespace, process, mount, cgroup and
//! bpffs directory is removed at the end, also on error.
//!
//! `cargo xtask bench net [OPTIONS]` builds the release binaries and runs
//! this; it needs root.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;

use harness::netbench::chart::{self, Bar, Panel};
use harness::netbench::testbed::{
    self, counters, Case, BRIDGE_CROSS, BRIDGE_SAME, COUNTERS, LEGACY_CROSS, LEGACY_SAME,
    NODE_TO_NODE, NODE_TO_NODE_VXLAN, OURS_CROSS, OURS_SAME, VETH, VXLAN_CROSS, VXLAN_DEVICE_CROSS,
};
use harness::netbench::{
    background_busy, catch_interrupts, check_interrupted, median, reachable, rr_cpu, tune_client,
    Metric, Runner, Sample, StdoutToStderr,
};

#[derive(Parser, Debug)]
#[command(
    name = "bench-net",
    about = "Benchmark pod to pod throughput (TCP, 8 streams, UDP), TCP_RR and TCP_CRR: plain veth, the eBPF datapath, the CNI bridge plugin"
)]
struct Args {
    /// Seconds each measurement runs (iperf3 adds one second of warm-up
    /// that it leaves out).
    #[arg(long, default_value_t = 2)]
    duration: u64,
    /// How often every measurement is repeated; the table shows the median
    /// and the range. At most 10, or 30 with `--paths`.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Leave TCP_RR and TCP_CRR to the scheduler instead of running both
    /// their ends on one CPU.
    #[arg(long)]
    no_pin: bool,
    /// Measure only these paths, by their row in the table (1 to 11), e.g.
    /// `9,11` for the programs' VXLAN against the device's in more rounds
    /// in the same time; all by default. Ratios and targets of paths left
    /// out show –.
    #[arg(long, value_delimiter = ',')]
    paths: Vec<usize>,
    /// Measure only these: tcp, streams, udp, rr, crr; all by default.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(METRIC_NAMES))]
    metrics: Vec<String>,
    /// Directory of the release binaries (agent, control-plane,
    /// netperf-rr); default: the directory of this program.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// What the report says besides the measurements.
struct RunInfo {
    /// CPU busy percent before and after measuring.
    busy: (f64, f64),
    /// Seconds of measuring.
    wall: f64,
    /// The eBPF counters' increase over the measurements, per [`COUNTERS`].
    counted: Vec<u64>,
}

/// samples[case][metric]: one sample per round.
type Samples = Vec<Vec<Vec<Sample>>>;

fn measure_all(a: &Args, runner: &Runner, cases: &[Case]) -> Result<Samples> {
    let mut samples: Samples = cases
        .iter()
        .map(|_| Metric::ALL.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=a.rounds {
        for (m, metric) in Metric::ALL.into_iter().enumerate() {
            if !a.metrics.is_empty() && !a.metrics.iter().any(|x| x == METRIC_NAMES[m]) {
                continue;
            }
            // Paths interleave, so a burst of load from elsewhere on the
            // machine spreads over all of them rather than one.
            for (c, case) in cases.iter().enumerate() {
                if !a.paths.is_empty() && !a.paths.contains(&(c + 1)) {
                    continue;
                }
                check_interrupted()?;
                let v = match runner.sample(metric, &case.pair) {
                    Ok(v) => v,
                    Err(e) => {
                        check_interrupted()?;
                        eprintln!("    {}: {e:#}; once more", case.title);
                        runner.sample(metric, &case.pair)?
                    }
                };
                let extra = match (v.mcycles_per_gbit, v.p99_us) {
                    (Some(c), _) => format!(", {} Mcycles/Gbit", fmt(c)),
                    (_, Some(p)) => format!(", p99 {} µs", fmt(p)),
                    _ => String::new(),
                };
                eprintln!(
                    "  round {round}/{}: {}: {}: {}{extra}",
                    a.rounds,
                    metric.title(),
                    case.title,
                    fmt(v.value)
                );
                samples[c][m].push(v);
            }
        }
    }
    Ok(samples)
}

/// `--metrics` names, in the order of [`Metric::ALL`].
const METRIC_NAMES: [&str; 5] = ["tcp", "streams", "udp", "rr", "crr"];

/// How many paths the testbed builds (`--paths` numbers them from 1).
const PATHS: usize = VXLAN_DEVICE_CROSS + 1;

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() > 1 {
        format!("{} ({}–{})", fmt(median(v)), fmt(lo), fmt(hi))
    } else {
        fmt(median(v))
    }
}

fn rounds(n: usize) -> String {
    if n == 1 {
        "1 round".into()
    } else {
        format!("{n} rounds")
    }
}

/// One number a path gets per round: a metric's value, its CPU cost or
/// its tail latency.
#[derive(Clone, Copy)]
struct Quantity {
    title: &'static str,
    metric: Metric,
    pick: fn(&Sample) -> Option<f64>,
    /// Latency and cost: a ratio below 1 is the better one.
    lower_is_better: bool,
}

const fn quantity(
    title: &'static str,
    metric: Metric,
    pick: fn(&Sample) -> Option<f64>,
    lower_is_better: bool,
) -> Quantity {
    Quantity {
        title,
        metric,
        pick,
        lower_is_better,
    }
}

fn value(s: &Sample) -> Option<f64> {
    Some(s.value)
}

fn cost(s: &Sample) -> Option<f64> {
    s.mcycles_per_gbit
}

fn p99(s: &Sample) -> Option<f64> {
    s.p99_us
}

/// The columns of the main table.
const RATES: [Quantity; 6] = [
    quantity("TCP, Gbit/s", Metric::Throughput, value, false),
    quantity("8 TCP streams, Gbit/s", Metric::Streams, value, false),
    quantity("UDP, Gbit/s", Metric::Udp, value, false),
    quantity("TCP_RR, trans./s", Metric::Rr, value, false),
    quantity("TCP_RR p99, µs", Metric::Rr, p99, true),
    quantity("TCP_CRR, trans./s", Metric::Crr, value, false),
];

/// The columns of the cost table.
const COSTS: [Quantity; 3] = [
    quantity("TCP, Mcycles/Gbit", Metric::Throughput, cost, true),
    quantity("8 TCP streams, Mcycles/Gbit", Metric::Streams, cost, true),
    quantity("UDP, Mcycles/Gbit", Metric::Udp, cost, true),
];

/// The pairs of paths the ratio table compares, numerator first.
const COMPARED: [(&str, usize, usize); 11] = [
    ("same node ÷ plain veth", OURS_SAME, VETH),
    ("two nodes ÷ node to node", OURS_CROSS, NODE_TO_NODE),
    ("same node ÷ bridge plugin", OURS_SAME, BRIDGE_SAME),
    ("two nodes ÷ bridge plugin", OURS_CROSS, BRIDGE_CROSS),
    ("64 KiB, same node ÷ plain veth", LEGACY_SAME, VETH),
    (
        "64 KiB, two nodes ÷ node to node",
        LEGACY_CROSS,
        NODE_TO_NODE,
    ),
    ("same node ÷ same node at 64 KiB", OURS_SAME, LEGACY_SAME),
    ("two nodes ÷ two nodes at 64 KiB", OURS_CROSS, LEGACY_CROSS),
    ("VXLAN, two nodes ÷ node to node", VXLAN_CROSS, NODE_TO_NODE),
    (
        "VXLAN, two nodes ÷ node to node over VXLAN",
        VXLAN_CROSS,
        NODE_TO_NODE_VXLAN,
    ),
    (
        "VXLAN wrapped by the programs ÷ by the device",
        VXLAN_CROSS,
        VXLAN_DEVICE_CROSS,
    ),
];

/// Targets: (what, quantity, numerator, denominator, at least).
const TARGETS: [(&str, Quantity, usize, usize, f64); 6] = [
    (
        "TCP: eBPF same node ÷ plain veth",
        RATES[0],
        OURS_SAME,
        VETH,
        0.97,
    ),
    (
        "TCP: eBPF two nodes ÷ node to node",
        RATES[0],
        OURS_CROSS,
        NODE_TO_NODE,
        0.97,
    ),
    (
        "TCP: eBPF two nodes over VXLAN ÷ node to node",
        RATES[0],
        VXLAN_CROSS,
        NODE_TO_NODE,
        0.90,
    ),
    (
        "TCP_RR: eBPF same node ÷ bridge plugin same node",
        RATES[3],
        OURS_SAME,
        BRIDGE_SAME,
        1.2,
    ),
    (
        "TCP_RR: eBPF two nodes ÷ bridge plugin two nodes",
        RATES[3],
        OURS_CROSS,
        BRIDGE_CROSS,
        1.2,
    ),
    (
        "TCP_CRR: eBPF same node ÷ bridge plugin same node",
        RATES[5],
        OURS_SAME,
        BRIDGE_SAME,
        1.1,
    ),
];

fn metric_index(m: Metric) -> usize {
    Metric::ALL
        .iter()
        .position(|x| *x == m)
        .expect("every metric is in ALL")
}

/// The rounds' values of `q` on path `case`.
fn values(s: &Samples, case: usize, q: &Quantity) -> Vec<f64> {
    s[case][metric_index(q.metric)]
        .iter()
        .filter_map(q.pick)
        .collect()
}

/// The median over rounds of `num ÷ den` within each round: paths of one
/// round run seconds apart, so the ratio cancels load that lasted the
/// round, and the median drops a round a burst spoilt.
fn ratio(s: &Samples, q: &Quantity, num: usize, den: usize) -> Option<f64> {
    let i = metric_index(q.metric);
    let per_round: Vec<f64> = s[num][i]
        .iter()
        .zip(&s[den][i])
        .filter_map(|(n, d)| Some((q.pick)(n)? / (q.pick)(d)?))
        .filter(|r| r.is_finite())
        .collect();
    (!per_round.is_empty()).then(|| median(&per_round))
}

fn path_table(out: &mut String, cases: &[Case], s: &Samples, columns: &[Quantity]) {
    out.push_str("| path | ");
    out.push_str(
        &columns
            .iter()
            .map(|q| q.title)
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" |\n|---|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    for (c, case) in cases.iter().enumerate() {
        let cells: Vec<String> = columns
            .iter()
            .map(|q| {
                let v = values(s, c, q);
                if v.is_empty() {
                    "–".into()
                } else {
                    cell(&v)
                }
            })
            .collect();
        // A path `--paths` left out has no row.
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        out.push_str(&format!("| {} | {} |\n", case.title, cells.join(" | ")));
    }
}

fn render(a: &Args, cases: &[Case], s: &Samples, info: &RunInfo, rr_cpu: Option<usize>) -> String {
    let mut out = String::from("# Pod network: throughput and request/response rates\n\n");
    out.push_str(&format!(
        "Nodes are network namespaces on one machine ({} CPUs). Medians of {} of {} s, \
         lowest–highest round in brackets. Throughput: iperf3, one TCP stream, {} TCP streams at \
         once, and one UDP stream sent without a rate limit (what arrives counts). TCP_RR: 1-byte \
         request and response on one connection, with the 99th percentile of a transaction; \
         TCP_CRR: connect, 1-byte request and response, close (`netperf-rr`). Client and server \
         run in the pods' network namespaces; {}.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rounds(a.rounds),
        a.duration,
        harness::netbench::PARALLEL_STREAMS,
        match rr_cpu {
            Some(cpu) => format!(
                "TCP_RR and TCP_CRR have both ends on CPU {cpu}, so that a transaction costs \
                 the CPU time of both stacks and the path rather than wake-ups of idle vCPUs"
            ),
            None => "the scheduler places them".into(),
        }
    ));
    path_table(&mut out, cases, s, &RATES);
    out.push_str(
        "\nWhat a gigabit costs: the CPU time of both iperf3 processes (which includes the \
         softirq work done on their behalf) and of the ksoftirqd threads, times the CPU clock, \
         per gigabit received. It counts only the measuring processes, so other load on the \
         machine does not inflate it.\n\n",
    );
    path_table(&mut out, cases, s, &COSTS);
    out.push_str(
        "\nRatios side by side: the median over rounds of the ratio within each round. For \
         rates above 1 is better; for latency and cost (†) below 1 is.\n\n| quantity | ",
    );
    // Comparisons of paths `--paths` left out have no column.
    let compared: Vec<_> = COMPARED
        .iter()
        .filter(|(_, n, d)| {
            RATES
                .iter()
                .chain(&COSTS)
                .any(|q| ratio(s, q, *n, *d).is_some())
        })
        .collect();
    out.push_str(
        &compared
            .iter()
            .map(|(t, _, _)| *t)
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" |\n|---|");
    out.push_str(&"---:|".repeat(compared.len()));
    out.push('\n');
    for q in RATES.iter().chain(&COSTS) {
        let cells: Vec<String> = compared
            .iter()
            .map(|(_, n, d)| ratio(s, q, *n, *d).map_or("–".into(), |r| format!("{r:.3}")))
            .collect();
        let mark = if q.lower_is_better { " †" } else { "" };
        out.push_str(&format!("| {}{mark} | {} |\n", q.title, cells.join(" | ")));
    }
    out.push_str("\n| target | measured | at least | met |\n|---|---:|---:|---|\n");
    for (what, q, num, den, at_least) in TARGETS {
        let (r, met) = match ratio(s, &q, num, den) {
            Some(r) if r >= at_least => (format!("{r:.3}"), "yes"),
            Some(r) => (format!("{r:.3}"), "**no**"),
            None => ("–".into(), "not measured"),
        };
        out.push_str(&format!("| {what} | {r} | {at_least:.2} | {met} |\n"));
    }
    out.push_str(&format!(
        "\nMeasuring took {:.0} s. The eBPF programs counted {} frames delivered to a pod on the \
         same node, {} sent to the other node and {} received from it. Other load: the CPUs were \
         {:.0}% busy in the 2 s before measuring and {:.0}% in the 2 s after (the idle testbed \
         included); a busy machine makes the numbers noisier.\n",
        info.wall, info.counted[0], info.counted[1], info.counted[2], info.busy.0, info.busy.1
    ));
    out
}

fn chart_panels(cases: &[Case], s: &Samples) -> Vec<Panel> {
    Metric::ALL
        .iter()
        .enumerate()
        .map(|(m, metric)| Panel {
            title: metric.title().to_string(),
            bars: cases
                .iter()
                .enumerate()
                // Paths and metrics `--paths` and `--metrics` left out.
                .filter(|(c, _)| !s[*c][m].is_empty())
                .map(|(c, case)| {
                    let v: Vec<f64> = s[c][m].iter().map(|x| x.value).collect();
                    let v = &v;
                    Bar {
                        label: case.short.to_string(),
                        family: case.family,
                        value: median(v),
                        low: v.iter().copied().fold(f64::INFINITY, f64::min),
                        high: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    }
                })
                .collect(),
        })
        .filter(|p| !p.bars.is_empty())
        .collect()
}

fn main_inner(a: Args) -> Result<()> {
    harness::require_root("it builds network namespaces and runs the agent");
    catch_interrupts();
    ensure!(
        (1..=60).contains(&a.duration),
        "--duration must be 1 to 60 s"
    );
    // Bounded in time: ten rounds of every path take about 25 minutes; a
    // few paths may take more rounds in less.
    let most = if a.paths.is_empty() { 10 } else { 30 };
    ensure!(
        (1..=most).contains(&a.rounds),
        "--rounds must be 1 to 10, or 1 to 30 with --paths"
    );
    ensure!(
        a.paths.iter().all(|p| (1..=PATHS).contains(p)),
        "--paths are rows of the table, 1 to {PATHS}"
    );
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .to_path_buf(),
    };
    for b in ["agent", "control-plane", "netperf-rr"] {
        ensure!(
            bin_dir.join(b).exists(),
            "{} is missing: build with `cargo build --release --workspace --bins` \
             (which `cargo xtask bench net` does) or pass --bin-dir",
            bin_dir.join(b).display()
        );
    }
    ensure!(
        harness::netbench::run_bounded(
            Command::new("iperf3").arg("--version"),
            None,
            Duration::from_secs(5)
        )
        .is_ok(),
        "iperf3 is not installed: run `cargo xtask setup`"
    );
    harness::netbench::bridge_cni::plugin_dir()?;
    // The harness starts agents and the control plane from here. Set
    // before any thread exists.
    std::env::set_var("KESTREL_BIN_DIR", &bin_dir);

    let started = Instant::now();
    let (table, panels) = {
        let _quiet = StdoutToStderr::new()?;
        eprintln!("building the paths");
        let bed = testbed::build()?;
        check_interrupted()?;
        for case in &bed.cases {
            reachable(&case.pair).with_context(|| case.title)?;
            tune_client(&case.pair.client_ns)?;
        }
        eprintln!(
            "ready after {:.0} s; measuring",
            started.elapsed().as_secs_f64()
        );
        let rr_cpu = if a.no_pin { None } else { rr_cpu() };
        let runner = Runner {
            rr_bin: bin_dir.join("netperf-rr"),
            duration: a.duration,
            rr_cpu,
        };
        let before = background_busy();
        let counted0 = counters(&bed.nodes)?;
        let t0 = Instant::now();
        let samples = measure_all(&a, &runner, &bed.cases)?;
        let wall = t0.elapsed().as_secs_f64();
        let counted: Vec<u64> = counters(&bed.nodes)?
            .iter()
            .zip(&counted0)
            .map(|(after, before)| after.saturating_sub(*before))
            .collect();
        let after = background_busy();
        // Traffic that bypassed the programs would make the eBPF rows
        // measure something else. (A subset of paths need not cross them.)
        for ((_, name), n) in COUNTERS.iter().zip(&counted) {
            ensure!(
                !a.paths.is_empty() || *n > 0,
                "the eBPF counter {name} did not move: the pod traffic bypassed the programs"
            );
        }
        let info = RunInfo {
            busy: (before, after),
            wall,
            counted,
        };
        let table = render(&a, &bed.cases, &samples, &info, rr_cpu);
        let panels = chart_panels(&bed.cases, &samples);
        drop(bed);
        (table, panels)
    };
    eprintln!(
        "cleaned up; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );

    chart::write_report(
        "net",
        &table,
        &format!(
            "Pod network: median of {} of {} s (bars), lowest to highest round (lines)",
            rounds(a.rounds),
            a.duration
        ),
        &panels,
    )?;
    Ok(())
}

fn main() {
    let a = Args::parse();
    if let Err(e) = main_inner(a) {
        eprintln!("bench-net: {e:#}");
        std::process::exit(1);
    }
}
