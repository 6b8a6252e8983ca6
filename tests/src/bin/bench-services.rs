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
//! the one that has to find the service), TCP_RR and one iperf3 stream.
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

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};

use harness::cluster::ControlPlane;
use harness::net::{veth_between, Netns};
use harness::netbench::chart::{self, Bar, Family, Panel};
use harness::netbench::kube_proxy;
use harness::netbench::testbed::{pod_endpoint, pod_yaml};
use harness::netbench::{
    background_busy, catch_interrupts, check_interrupted, median, reachable, rr_cpu, tune_client,
    Metric, Pair, Runner, StdoutToStderr, IPERF_PORT, RR_PORT,
};
use harness::node::Node;
use kestrel_agent::services::model::{Frontend, Proto};

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

/// A ratio row: what, the value, and its target (bound, whether it is a
/// floor rather than a ceiling).
type Row = (String, f64, Option<(f64, bool)>);

/// Picks one number out of a sample.
type Field = fn(&Sample) -> f64;

/// A cgroup directory removed on drop (once the clients in it are gone).
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

/// Everything the paths are made of, removed on drop in field order.
struct Testbed {
    // Empty once the measurements are over; it goes before the agent's
    // reset removes the subtree it is in.
    _client_cgroup: Cgroup,
    node: Node,
    cp: ControlPlane,
    /// The veth pairs of the rule-less, iptables and nftables paths.
    veths: Vec<(Netns, Netns)>,
    pairs: Vec<Pair>,
    /// The measured Service's ClusterIP.
    vip: Ipv4Addr,
}

/// A client and a server namespace on one veth pair, 10.98.`subnet`.0/24.
fn veth_pair(tag: &str, subnet: u8) -> Result<((Netns, Netns), Pair)> {
    let a = Netns::new(&format!("{tag}c"))?;
    let b = Netns::new(&format!("{tag}s"))?;
    let (in_a, in_b) = veth_between(&a, &b, tag)?;
    a.addr_up(&in_a, &format!("10.98.{subnet}.1/24"))?;
    b.addr_up(&in_b, &format!("10.98.{subnet}.2/24"))?;
    // A node has a default route; the service addresses need one to get
    // as far as the nat table.
    a.exec(&["ip", "route", "add", "default", "dev", &in_a])?;
    let server: Ipv4Addr = format!("10.98.{subnet}.2").parse()?;
    let pair = Pair::new(a.path(), b.path(), server);
    Ok(((a, b), pair))
}

fn build(rt: &tokio::runtime::Runtime) -> Result<Testbed> {
    eprintln!("  plain veth pairs");
    let mut veths = Vec::new();
    let mut baseline = Vec::new();
    for (tag, subnet) in [("sv", 10), ("si", 11), ("sn", 12)] {
        let (ns, pair) = veth_pair(tag, subnet)?;
        veths.push(ns);
        baseline.push(pair);
    }
    eprintln!("  control plane, one agent, a client and a server pod");
    let cp = ControlPlane::start_networked(&[])?;
    let node = Node::start(&cp);
    let k = cp.kubectl();
    let yaml = pod_yaml("client", &node.name) + &pod_yaml("server", &node.name);
    let out = k.run_stdin(&["apply", "-f", "-"], &yaml)?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (client_ns, _) = pod_endpoint(&k, "client", &node)?;
    let (server_ns, server_ip) = pod_endpoint(&k, "server", &node)?;
    let vip = rt.block_on(measured_service(&cp, server_ip))?;
    let mount = kestrel_agent::services::cgroup::v2_mount()
        .context("no cgroup v2 hierarchy: the socket programs need one")?;
    let dir =
        kestrel_agent::services::cgroup::group_dir(&mount, &node.cgroup_root).join("bench-client");
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let client_cgroup = Cgroup(dir.clone());
    let direct = Pair::new(client_ns, server_ns, server_ip);
    let mut ours = direct.clone();
    ours.connect_ip = Some(vip);
    ours.client_cgroup = Some(dir);
    let mut pairs = vec![direct, ours, baseline[0].clone()];
    for mut p in baseline.drain(1..) {
        p.connect_ip = Some(BASELINE_VIP);
        pairs.push(p);
    }
    Ok(Testbed {
        node,
        cp,
        _client_cgroup: client_cgroup,
        veths,
        pairs,
        vip,
    })
}

fn client(cp: &ControlPlane) -> Result<kube::Client> {
    Ok(kube::Client::try_from(kube::Config::new(
        cp.url().parse()?,
    ))?)
}

/// The Service in front of the server pod, on the two ports the
/// measurements use, with an EndpointSlice naming the pod; returns its
/// ClusterIP.
async fn measured_service(cp: &ControlPlane, server: Ipv4Addr) -> Result<Ipv4Addr> {
    let c = client(cp)?;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "measured"},
        "spec": {"ports": [
            {"name": "rr", "port": RR_PORT, "targetPort": RR_PORT},
            {"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT},
        ]},
    }))?;
    let svc = Api::<Service>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "measured-x", "labels": {"kubernetes.io/service-name": "measured"}},
        "addressType": "IPv4",
        "ports": [
            {"name": "rr", "port": RR_PORT, "protocol": "TCP"},
            {"name": "iperf", "port": IPERF_PORT, "protocol": "TCP"},
        ],
        "endpoints": [{"addresses": [server.to_string()], "conditions": {"ready": true}}],
    }))?;
    Api::<EndpointSlice>::namespaced(c, "default")
        .create(&PostParams::default(), &slice)
        .await?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service got no ClusterIP")?;
    Ok(ip.parse()?)
}

/// Adds filler Services (3 endpoints each) `from..to` through the API;
/// returns the ClusterIP of the last one.
async fn add_fillers(cp: &ControlPlane, from: usize, to: usize) -> Result<Option<Ipv4Addr>> {
    let c = client(cp)?;
    let services: Api<Service> = Api::namespaced(c.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c, "default");
    let made: Vec<Result<String>> = futures::stream::iter(from..to)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let svc: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("f{i}")},
                    "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
                }))?;
                let svc = services.create(&PostParams::default(), &svc).await?;
                let ips: Vec<String> = (0..3)
                    .map(|j| {
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 160, 0, 0)) + i as u32 * 3 + j)
                            .to_string()
                    })
                    .collect();
                let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("f{i}-x"), "labels": {"kubernetes.io/service-name": format!("f{i}")}},
                    "addressType": "IPv4",
                    "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                    "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
                }))?;
                slices.create(&PostParams::default(), &slice).await?;
                svc.spec
                    .and_then(|s| s.cluster_ip)
                    .context("a Service got no ClusterIP")
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut last = None;
    for r in made {
        last = Some(r?.parse()?);
    }
    Ok(last)
}

/// Brings every path to `n` services: fillers through the API until the
/// agent has programmed the last, and the baselines' rule sets; returns
/// the seconds `iptables-restore` and `nft -f` took to load theirs.
fn grow(rt: &tokio::runtime::Runtime, bed: &Testbed, have: usize, n: usize) -> Result<(f64, f64)> {
    let t = Instant::now();
    if n > have {
        // The measured Service is one of the n.
        let last = rt.block_on(add_fillers(&bed.cp, have.max(1) - 1, n - 1))?;
        if let Some(vip) = last {
            let fe = Frontend {
                vip,
                port: 80,
                proto: Proto::Tcp,
            };
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                check_interrupted()?;
                let programmed = kestrel_agent::services::bpf::lookup(&bed.node.bpffs_dir, &fe)
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.len() == 3);
                if programmed {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the agent did not program {n} services in 300 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let ours = t.elapsed();
    let server = |p: &Pair, port: u16| kube_proxy::Service {
        vip: BASELINE_VIP,
        port,
        endpoints: vec![(p.server_ip, port)],
    };
    let ipt = &bed.pairs[IPTABLES];
    let set = kube_proxy::services(n, &[server(ipt, RR_PORT), server(ipt, IPERF_PORT)]);
    let t = Instant::now();
    load(
        &bed.veths[1].0,
        "iptables-restore",
        &kube_proxy::iptables(&set),
    )?;
    let ipt_took = t.elapsed();
    let nft = &bed.pairs[NFTABLES];
    let set = kube_proxy::services(n, &[server(nft, RR_PORT), server(nft, IPERF_PORT)]);
    let t = Instant::now();
    load(&bed.veths[2].0, "nft -f", &kube_proxy::nftables(&set))?;
    let nft_took = t.elapsed();
    eprintln!(
        "  {n} services: programmed by the agent in {:.1} s, iptables-restore {:.1} s, nft {:.1} s",
        ours.as_secs_f64(),
        ipt_took.as_secs_f64(),
        nft_took.as_secs_f64()
    );
    Ok((ipt_took.as_secs_f64(), nft_took.as_secs_f64()))
}

/// Times `CHANGES` endpoint changes of filler `f0`: each replaces its
/// slice with the third endpoint at a new address and waits until the
/// node's maps hold it; milliseconds from the API's answer, in order.
async fn endpoint_changes(bed: &Testbed) -> Result<Vec<f64>> {
    let c = client(&bed.cp)?;
    let vip: Ipv4Addr = Api::<Service>::namespaced(c.clone(), "default")
        .get("f0")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("f0 got no ClusterIP")?
        .parse()?;
    let fe = Frontend {
        vip,
        port: 80,
        proto: Proto::Tcp,
    };
    let slices: Api<EndpointSlice> = Api::namespaced(c, "default");
    let mut lags = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        check_interrupted()?;
        let mut slice = slices.get("f0-x").await?;
        let moved = Ipv4Addr::new(10, 251, 0, k as u8 + 1);
        let third = slice
            .endpoints
            .get_mut(2)
            .context("f0's slice lost its third endpoint")?;
        third.addresses = vec![moved.to_string()];
        slices
            .replace("f0-x", &PostParams::default(), &slice)
            .await?;
        let written = Instant::now();
        let deadline = written + Duration::from_secs(30);
        loop {
            let seen = kestrel_agent::services::bpf::lookup(&bed.node.bpffs_dir, &fe)
                .ok()
                .flatten()
                .is_some_and(|b| b.len() == 3 && b.iter().any(|t| t.ip == moved));
            if seen {
                break;
            }
            if Instant::now() > deadline {
                bail!("endpoint change {k} did not reach the maps in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(written.elapsed().as_secs_f64() * 1e3);
    }
    Ok(lags)
}

/// Feeds `input` to `program` (with its arguments) inside `ns`.
fn load(ns: &Netns, program: &str, input: &str) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), input)?;
    let mut cmd: Vec<&str> = program.split_whitespace().collect();
    let path = file.path().to_string_lossy().into_owned();
    cmd.push(&path);
    ns.exec(&cmd)
        .with_context(|| format!("{program} in {}", ns.name()))?;
    Ok(())
}

fn measure_size(a: &Args, runner: &Runner, bed: &Testbed) -> Result<Vec<Vec<Sample>>> {
    let mut out = vec![Vec::new(); PATHS.len()];
    for round in 1..=a.rounds {
        for (i, pair) in bed.pairs.iter().enumerate() {
            check_interrupted()?;
            let once = || -> Result<Sample> {
                let crr = runner.crr(pair)?;
                Ok(Sample {
                    connect_p50_us: crr.connect_p50_us,
                    connect_p99_us: crr.connect_p99_us,
                    crr: crr.per_second,
                    rr: runner.measure(Metric::Rr, pair)?,
                    gbps: runner.measure(Metric::Throughput, pair)?,
                })
            };
            let s = match once() {
                Ok(s) => s,
                Err(e) => {
                    check_interrupted()?;
                    eprintln!("    {}: {e:#}; once more", PATHS[i].0);
                    once()?
                }
            };
            eprintln!(
                "    round {round}/{}: {}: connect {:.1} µs, TCP_CRR {:.0}/s, TCP_RR {:.0}/s, {:.2} Gbit/s",
                a.rounds, PATHS[i].0, s.connect_p50_us, s.crr, s.rr, s.gbps
            );
            out[i].push(s);
        }
    }
    Ok(out)
}

fn med(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(&v.iter().map(f).collect::<Vec<_>>())
}

/// The median over rounds of `num ÷ den` within each round.
fn ratio(num: &[Sample], den: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(
        &num.iter()
            .zip(den)
            .map(|(n, d)| f(n) / f(d))
            .collect::<Vec<_>>(),
    )
}

/// The `p`th percentile (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn render_changes(a: &Args, changes: &[Changes]) -> String {
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

fn render(a: &Args, s: &Samples, busy: (f64, f64), rr_cpu: Option<usize>) -> String {
    let mut out = String::from("# Services: ClusterIP cost by service count\n\n");
    out.push_str(&format!(
        "One node (a network namespace) on one machine ({} CPUs). Medians of {} round(s) of {} s per \
         measurement. connect: the connect() calls of TCP_CRR (`netperf-rr`), median and 99th \
         percentile; TCP_RR: 1-byte request/response on one connection; throughput: iperf3, one \
         stream. Ours: the client pod's namespace, in the agent's cgroup subtree, to the measured \
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
        "| services | path | connect p50 µs | connect p99 µs | TCP_CRR /s | TCP_RR /s | Gbit/s |\n\
         |---:|---|---:|---:|---:|---:|---:|\n",
    );
    for (z, n) in a.sizes.iter().enumerate() {
        for (p, (title, _, _)) in PATHS.iter().enumerate() {
            let v = &s[z][p];
            out.push_str(&format!(
                "| {n} | {title} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} |\n",
                med(v, |x| x.connect_p50_us),
                med(v, |x| x.connect_p99_us),
                med(v, |x| x.crr),
                med(v, |x| x.rr),
                med(v, |x| x.gbps),
            ));
        }
    }
    let first = 0;
    let last = a.sizes.len() - 1;
    let growth =
        |p: usize| med(&s[last][p], |x| x.connect_p50_us) / med(&s[first][p], |x| x.connect_p50_us);
    out.push_str("\n| ratio | measured | target | met |\n|---|---:|---:|---|\n");
    let mut rows: Vec<Row> = Vec::new();
    for (z, n) in a.sizes.iter().enumerate() {
        rows.push((
            format!("throughput at {n} services: ClusterIP ÷ pod IP"),
            ratio(&s[z][OURS], &s[z][POD_IP], |x| x.gbps),
            Some((0.98, true)),
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
            ratio(&s[z][OURS], &s[z][IPTABLES], |x| x.crr),
            (*n == 5000).then_some((1.2, true)),
        ));
        rows.push((
            format!("TCP_CRR at {n} services: ClusterIP ÷ nftables"),
            ratio(&s[z][OURS], &s[z][NFTABLES], |x| x.crr),
            None,
        ));
        rows.push((
            format!("TCP_CRR at {n} services: pod IP ÷ plain veth"),
            ratio(&s[z][POD_IP], &s[z][VETH], |x| x.crr),
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
         grows ≤ 10% from the fewest to the most services; TCP_CRR ≥ 1.2× the iptables baseline \
         at 5,000 services. The CPUs were {:.0}% busy in the 2 s before measuring and {:.0}% in \
         the 2 s after (the idle testbed included).\n",
        busy.0, busy.1
    ));
    out
}

fn size_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn panels(a: &Args, s: &Samples) -> Vec<Panel> {
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
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("the program's directory")?,
    };
    // The harness starts agents and the control plane from here. Set
    // before any thread exists.
    std::env::set_var("KESTREL_BIN_DIR", &bin_dir);
    let rt = tokio::runtime::Runtime::new()?;
    let _entered = rt.enter();

    let started = Instant::now();
    let (table, charts) = {
        let _quiet = StdoutToStderr::new()?;
        eprintln!("building the paths");
        let bed = build(&rt)?;
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
        let mut changes: Vec<Changes> = Vec::new();
        let mut have = 1;
        for &n in &a.sizes {
            let (iptables_s, nft_s) = grow(&rt, &bed, have, n)?;
            have = n;
            eprintln!("  measuring at {n} services");
            samples.push(measure_size(&a, &runner, &bed)?);
            // The measured Service is the only one at a size of 1.
            let lags_ms = if n > 1 {
                rt.block_on(endpoint_changes(&bed))?
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
        let mut table = render(&a, &samples, (before, after), rr_cpu);
        table.push_str(&render_changes(&a, &changes));
        let charts = panels(&a, &samples);
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
