//! `bench-services`: what a ClusterIP costs, against going straight to
//! the pod and against kube-proxy's iptables and nftables modes, as the
//! number of services grows.
//!
//! Our side is the real control plane and one agent (a node namespace)
//! with a client pod and a server pod; the measured Service has the server
//! as its only endpoint, and the others (3 endpoints each, at addresses
//! that need not exist) are made through the API until there are 1, 1,000,
//! 5,000 and 10,000. The client runs in the client pod's network namespace
//! and in the agent's cgroup subtree, where the socket programs apply.
//! The baselines are plain veth pairs: one with no rule at all (the
//! limit), one whose client namespace holds the rules kube-proxy's
//! iptables mode writes for as many services, one with its nftables mode's
//! table; the measured service sits in the middle of the iptables chain.
//! At every size, in rounds that interleave the paths, it measures TCP_CRR
//! with the latency of each connect() (the first packet of a connection is
//! the one that has to find the service), TCP_RR and one iperf3 stream
//! with the CPU cycles each of its gigabits cost. Then, at every size, it
//! sets the ClusterIP against the pod IP in back-to-back pairs of iperf3
//! runs (the two in turn leading), so that each ratio compares two runs
//! seconds apart rather than two paths over a whole round.
//! It also times endpoint changes: one filler's EndpointSlice is replaced
//! again and again, each time from the API's answer until the node's maps
//! hold the new backend, against what loading the whole rule set costs
//! the baselines (`iptables-restore`, `nft -f`) at the same size.
//! Medians go to a Markdown table (stdout and `target/bench/services.md`)
//! and a chart (`target/bench/services.png`). Everything it creates is
//! removed at the end, also on error.
//!
//! `cargo xtask bench services [OPTIONS]` builds the release binaries and
//! runs this; it needs root.

mod report;
mod testbed;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;

use harness::netbench::chart::{self, Family};
use harness::netbench::{
    background_busy, catch_interrupts, check_interrupted, reachable, rr_cpu, tune_client,
    use_bin_dir, Metric, Runner, StdoutToStderr,
};

#[derive(Parser, Debug)]
#[command(
    name = "bench-services",
    about = "Benchmark ClusterIPs: eBPF socket load balancing against the pod IP and kube-proxy's iptables and nftables rules, by service count"
)]
struct Args {
    /// Service counts to measure at, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,5000,10000")]
    sizes: Vec<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 2)]
    duration: u64,
    /// How often every measurement is repeated at each size.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Back-to-back pairs of iperf3 runs, pod IP and ClusterIP, at each
    /// size (0: none).
    #[arg(long, default_value_t = 6)]
    pairs: usize,
    /// Leave TCP_RR and TCP_CRR to the scheduler instead of running both
    /// their ends on one CPU.
    #[arg(long)]
    no_pin: bool,
    /// Directory of the release binaries (agent, control-plane,
    /// netperf-rr); default: the directory of this program.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The measured paths, in table order.
const PATHS: [(&str, &str, Family); 5] = [
    ("pod IP (no service)", "pod IP", Family::Veth),
    ("ClusterIP, eBPF socket LB", "ours", Family::Ours),
    ("plain veth pair (no rule)", "veth", Family::Veth),
    ("kube-proxy iptables rules", "iptables", Family::Iptables),
    ("kube-proxy nftables rules", "nftables", Family::Nftables),
];
const POD_IP: usize = 0;
const OURS: usize = 1;
const VETH: usize = 2;
const IPTABLES: usize = 3;
const NFTABLES: usize = 4;

/// The address the baselines' measured service answers on.
const BASELINE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 250, 1);

/// One round's numbers on one path.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    connect_p50_us: f64,
    connect_p99_us: f64,
    crr: f64,
    rr: f64,
    gbps: f64,
    /// CPU cycles per gigabit of the iperf3 stream, in millions.
    mcycles: f64,
}

/// One back-to-back pair: the pod IP's iperf3 run and the ClusterIP's,
/// as (Gbit/s, Mcycles/Gbit).
#[derive(Clone, Copy, Debug)]
struct Paired {
    pod_ip: (f64, f64),
    cluster_ip: (f64, f64),
}

/// samples[size][path]: one per round.
type Samples = Vec<Vec<Vec<Sample>>>;

/// How many times the endpoint change is timed at each size.
const CHANGES: usize = 20;

/// At one size: endpoint change to maps, in ms, one per change (none at
/// a size without fillers), and the seconds the baselines took to load
/// their whole rule set.
#[derive(Clone, Debug, Default)]
struct Changes {
    lags_ms: Vec<f64>,
    iptables_s: f64,
    nft_s: f64,
}

fn measure_size(a: &Args, runner: &Runner, bed: &testbed::Testbed) -> Result<Vec<Vec<Sample>>> {
    let mut out = vec![Vec::new(); PATHS.len()];
    for round in 1..=a.rounds {
        for (i, pair) in bed.pairs.iter().enumerate() {
            check_interrupted()?;
            let s = once_more(PATHS[i].0, || {
                let crr = runner.crr(pair)?;
                let rr = runner.measure(Metric::Rr, pair)?;
                let (gbps, mcycles) = stream(runner, pair)?;
                Ok(Sample {
                    connect_p50_us: crr.connect_p50_us,
                    connect_p99_us: crr.connect_p99_us,
                    crr: crr.per_second,
                    rr,
                    gbps,
                    mcycles,
                })
            })?;
            eprintln!(
                "    round {round}/{}: {}: connect {:.1} µs, TCP_CRR {:.0}/s, TCP_RR {:.0}/s, {:.2} Gbit/s, {:.0} Mcycles/Gbit",
                a.rounds, PATHS[i].0, s.connect_p50_us, s.crr, s.rr, s.gbps, s.mcycles
            );
            out[i].push(s);
        }
    }
    Ok(out)
}

/// `f`, and once more if it fails (a measuring tool's hiccup), unless
/// the run was interrupted.
fn once_more<T>(what: &str, f: impl Fn() -> Result<T>) -> Result<T> {
    f().or_else(|e| {
        check_interrupted()?;
        eprintln!("    {what}: {e:#}; once more");
        f()
    })
}

/// One iperf3 stream on `pair`: Gbit/s and Mcycles/Gbit.
fn stream(runner: &Runner, pair: &harness::netbench::Pair) -> Result<(f64, f64)> {
    let s = runner.sample(Metric::Throughput, pair)?;
    Ok((s.value, s.mcycles_per_gbit.unwrap_or(f64::NAN)))
}

/// `--pairs` back-to-back iperf3 runs on the pod IP and the ClusterIP.
/// The leader alternates, so that a trend over a pair (a neighbour's load
/// fading in, the CPU's clock) favours each path equally often.
fn measure_pairs(a: &Args, runner: &Runner, bed: &testbed::Testbed) -> Result<Vec<Paired>> {
    let mut out = Vec::with_capacity(a.pairs);
    for k in 0..a.pairs {
        check_interrupted()?;
        let run = |p: usize| once_more(PATHS[p].0, || stream(runner, &bed.pairs[p]));
        let (pod_ip, cluster_ip) = if k % 2 == 0 {
            let p = run(POD_IP)?;
            (p, run(OURS)?)
        } else {
            let c = run(OURS)?;
            (run(POD_IP)?, c)
        };
        eprintln!(
            "    pair {}/{}: pod IP {:.2} Gbit/s, {:.0} Mcycles/Gbit; ClusterIP {:.2} Gbit/s, {:.0} Mcycles/Gbit",
            k + 1,
            a.pairs,
            pod_ip.0,
            pod_ip.1,
            cluster_ip.0,
            cluster_ip.1
        );
        out.push(Paired { pod_ip, cluster_ip });
    }
    Ok(out)
}

fn main_inner(a: Args) -> Result<()> {
    catch_interrupts();
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "bench-services needs root (network namespaces, eBPF, cgroups)"
    );
    ensure!(
        !a.sizes.is_empty() && a.sizes.windows(2).all(|w| w[0] < w[1]) && a.sizes[0] >= 1,
        "--sizes must be increasing counts of at least 1"
    );
    ensure!(
        a.rounds >= 1 && a.duration >= 1,
        "--rounds and --duration must be at least 1"
    );
    let bin_dir = use_bin_dir(a.bin_dir.as_deref())?;
    let rt = tokio::runtime::Runtime::new()?;
    let _entered = rt.enter();

    let started = Instant::now();
    let (table, charts) = {
        let _quiet = StdoutToStderr::new()?;
        eprintln!("building the paths");
        let bed = testbed::build(&rt)?;
        for pair in &bed.pairs {
            reachable(pair)?;
            tune_client(&pair.client_ns)?;
        }
        eprintln!(
            "ready after {:.0} s; the measured ClusterIP is {}",
            started.elapsed().as_secs_f64(),
            bed.vip
        );
        let rr_cpu = if a.no_pin { None } else { rr_cpu() };
        let runner = Runner {
            rr_bin: bin_dir.join("netperf-rr"),
            duration: a.duration,
            rr_cpu,
        };
        let before = background_busy();
        let mut samples: Samples = Vec::new();
        let mut pairs: Vec<Vec<Paired>> = Vec::new();
        let mut changes: Vec<Changes> = Vec::new();
        let mut have = 1;
        for &n in &a.sizes {
            let (iptables_s, nft_s) = testbed::grow(&rt, &bed, have, n)?;
            have = n;
            eprintln!("  measuring at {n} services");
            samples.push(measure_size(&a, &runner, &bed)?);
            pairs.push(measure_pairs(&a, &runner, &bed)?);
            // The measured Service is the only one at a size of 1.
            let lags_ms = if n > 1 {
                rt.block_on(testbed::endpoint_changes(&bed))?
            } else {
                Vec::new()
            };
            if let Some(worst) = lags_ms.iter().copied().reduce(f64::max) {
                eprintln!("  {CHANGES} endpoint changes at {n} services: worst {worst:.1} ms");
            }
            changes.push(Changes {
                lags_ms,
                iptables_s,
                nft_s,
            });
        }
        let after = background_busy();
        let mut table = report::render(&a, &samples, (before, after), rr_cpu);
        table.push_str(&report::render_pairs(&a, &pairs));
        table.push_str(&report::render_changes(&a, &changes));
        let charts = report::panels(&a, &samples);
        drop(bed);
        (table, charts)
    };
    eprintln!(
        "cleaned up; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    chart::write_report(
        "services",
        &table,
        &format!(
            "ClusterIPs by service count: median of {} round(s) of {} s (bars), lowest to highest (lines)",
            a.rounds, a.duration
        ),
        &charts,
    )?;
    Ok(())
}

fn main() {
    let a = Args::parse();
    if let Err(e) = main_inner(a) {
        eprintln!("bench-services: {e:#}");
        std::process::exit(1);
    }
}
