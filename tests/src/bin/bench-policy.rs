//! `bench-policy`: what NetworkPolicy costs a new connection, against the
//! same policies written as kube-router writes them (iptables chains over
//! ipsets), as the number of policies selecting the server grows; the
//! agent's memory per 1,000 policies; and the time from a policy's create
//! in the API until every node enforces it.
//!
//! Our side is the real control plane and two agents (node namespaces),
//! each with a client pod (`role: client`) and a server pod (`app:
//! server`). At N policies, one (`measured`, in the middle by name) lets
//! clients reach the servers' measurement ports and N - 1 fillers each
//! allow every pod of the namespace on a port of their own (10000 and
//! up), so each server's allow rules grow with N. The baselines are plain
//! veth pairs: one with no rule at all, one whose server namespace holds
//! kube-router's chains and ipsets for the same N policies. At every size,
//! in rounds that interleave the paths, it measures TCP_CRR with the
//! latency of each connect() (the first packet is the one that is
//! checked). It then times policy changes: a policy opening port 7100 to
//! the clients is created through the API, and the clock stops when a
//! client on each node gets through; the policy is deleted again before
//! the next. Medians go to a Markdown table (stdout and
//! `target/bench/policy.md`). Everything it creates is removed at the end,
//! also on error.
//!
//! `cargo xtask bench policy [OPTIONS]` builds the release binaries and
//! runs this; it needs root.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};

use harness::cluster::ControlPlane;
use harness::net::{veth_between, Netns};
use harness::netbench::kube_router::{self, Policy};
use harness::netbench::testbed::pod_endpoint;
use harness::netbench::{
    background_busy, catch_interrupts, check_interrupted, kube_client, median, median_of,
    median_ratio, on_ns_thread, reachable, rr_cpu, run_bounded, tune_client, use_bin_dir, Pair,
    Runner, StdoutToStderr, IPERF_PORT, RR_PORT,
};
use harness::node::Node;

#[derive(Parser, Debug)]
#[command(
    name = "bench-policy",
    about = "Benchmark NetworkPolicy: the eBPF datapath against kube-router's iptables chains, by policy count"
)]
struct Args {
    /// Policy counts to measure at, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "0,100,1000,10000")]
    sizes: Vec<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 2)]
    duration: u64,
    /// How often every measurement is repeated at each size.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How often a policy change is timed at each size.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Leave TCP_CRR to the scheduler instead of running both its ends on
    /// one CPU.
    #[arg(long)]
    no_pin: bool,
    /// Directory of the release binaries (agent, control-plane,
    /// netperf-rr); default: the directory of this program.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The measured paths, in table order.
const PATHS: [&str; 3] = [
    "pod to pod, eBPF policy",
    "plain veth pair (no rule)",
    "kube-router iptables chains",
];
const OURS: usize = 0;
const VETH: usize = 1;
const IPTABLES: usize = 2;

/// The port a policy change opens.
const PROBE_PORT: u16 = 7100;

/// One round's TCP_CRR on one path.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    connect_p50_us: f64,
    connect_p99_us: f64,
    crr: f64,
}

/// What one size cost besides the datapath: the agent's resident memory,
/// how long the agent took to program the whole set, the baseline's load
/// time, and each timed policy change (ms, to the slower node).
#[derive(Clone, Debug, Default)]
struct Cost {
    rss_mib: f64,
    /// From the first create until the API server had answered the last.
    written_s: f64,
    programmed_s: f64,
    iptables_s: f64,
    changes_ms: Vec<f64>,
}

/// Everything the paths are made of, removed on drop in field order.
struct Testbed {
    nodes: Vec<Node>,
    cp: ControlPlane,
    /// The client and server namespaces of the rule-less and kube-router paths.
    veths: Vec<(Netns, Netns)>,
    pairs: Vec<Pair>,
    /// (client namespace, server address) of the probe on each node.
    probes: Vec<(PathBuf, Ipv4Addr)>,
    /// The servers' listeners on PROBE_PORT.
    _listeners: Vec<TcpListener>,
}

fn pods_yaml(nodes: &[Node]) -> String {
    let mut y = String::new();
    for (i, n) in nodes.iter().enumerate() {
        for (name, label) in [("client", "role: client"), ("server", "app: server")] {
            y += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{i}, labels: {{{label}}}}}\nspec:\n  nodeName: {}\n  \
                 terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: busybox, command: [sleep, '3600']}}\n---\n",
                n.name
            );
        }
    }
    y
}

fn veth_pair(tag: &str, subnet: u8) -> Result<((Netns, Netns), Pair)> {
    let a = Netns::new(&format!("{tag}c"))?;
    let b = Netns::new(&format!("{tag}s"))?;
    let (in_a, in_b) = veth_between(&a, &b, tag)?;
    a.addr_up(&in_a, &format!("10.98.{subnet}.1/24"))?;
    b.addr_up(&in_b, &format!("10.98.{subnet}.2/24"))?;
    let server: Ipv4Addr = format!("10.98.{subnet}.2").parse()?;
    let pair = Pair::new(a.path(), b.path(), server);
    Ok(((a, b), pair))
}

/// A listener on PROBE_PORT inside the namespace at `ns` that accepts and
/// drops every connection.
fn probe_listener(ns: &Path) -> Result<TcpListener> {
    let l = on_ns_thread(ns, || Ok(TcpListener::bind(("0.0.0.0", PROBE_PORT))?))?;
    let accepting = l.try_clone()?;
    std::thread::spawn(move || for _ in accepting.incoming() {});
    Ok(l)
}

fn build() -> Result<Testbed> {
    eprintln!("  plain veth pairs");
    let mut veths = Vec::new();
    let mut pairs = Vec::new();
    for (tag, subnet) in [("pv", 20), ("pr", 21)] {
        let (ns, pair) = veth_pair(tag, subnet)?;
        veths.push(ns);
        pairs.push(pair);
    }
    eprintln!("  control plane, two agents, a client and a server pod on each");
    let cp = ControlPlane::start_networked(&[])?;
    let nodes = vec![Node::start(&cp), Node::start(&cp)];
    let k = cp.kubectl();
    let out = k.run_stdin(&["apply", "-f", "-"], &pods_yaml(&nodes))?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut probes = Vec::new();
    let mut listeners = Vec::new();
    let mut ours = None;
    for (i, n) in nodes.iter().enumerate() {
        let (client, _) = pod_endpoint(&k, &format!("client-{i}"), n)?;
        let (server, server_ip) = pod_endpoint(&k, &format!("server-{i}"), n)?;
        listeners.push(probe_listener(&server)?);
        if i == 0 {
            ours = Some(Pair::new(client.clone(), server, server_ip));
        }
        probes.push((client, server_ip));
    }
    pairs.insert(OURS, ours.context("no first node")?);
    Ok(Testbed {
        nodes,
        cp,
        veths,
        pairs,
        probes,
        _listeners: listeners,
    })
}

fn policies(cp: &ControlPlane) -> Result<Api<NetworkPolicy>> {
    Ok(Api::namespaced(kube_client(cp)?, "default"))
}

/// A policy selecting the servers that lets pods matching `from` reach
/// `ports` (every port when empty).
fn policy(name: &str, from: serde_json::Value, ports: &[u16]) -> Result<NetworkPolicy> {
    let mut rule = serde_json::json!({"from": [{"podSelector": from}]});
    if !ports.is_empty() {
        rule["ports"] = ports
            .iter()
            .map(|p| serde_json::json!({"port": p}))
            .collect();
    }
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [rule]},
    }))?)
}

/// The name of filler `i`.
fn filler(i: usize) -> String {
    format!("f{i:05}")
}

/// Brings the cluster to `n` policies (the measured one first, then
/// fillers) and waits until the first node's maps hold the last; returns
/// the seconds until the API server had answered every create, and until
/// the maps held the last.
async fn grow(bed: &Testbed, have: usize, n: usize) -> Result<(f64, f64)> {
    let api = policies(&bed.cp)?;
    let t = Instant::now();
    if have == 0 && n > 0 {
        let clients = serde_json::json!({"matchLabels": {"role": "client"}});
        api.create(
            &PostParams::default(),
            &policy("measured", clients, &[RR_PORT, IPERF_PORT])?,
        )
        .await?;
    }
    let made: Vec<Result<NetworkPolicy, kube::Error>> =
        futures::stream::iter(have.saturating_sub(1)..n.saturating_sub(1))
            .map(|i| {
                let api = api.clone();
                async move {
                    let p = policy(&filler(i), serde_json::json!({}), &[10000 + i as u16])
                        .map_err(|e| kube::Error::Service(e.into()))?;
                    api.create(&PostParams::default(), &p).await
                }
            })
            .buffered(32)
            .collect()
            .await;
    for m in made {
        m?;
    }
    let written = t.elapsed().as_secs_f64();
    // The last port a filler allows, or the measured policy's.
    let want = if n > 1 { 10000 + n as u16 - 2 } else { RR_PORT };
    let pins = &bed.nodes[0].bpffs_dir;
    let deadline = Instant::now() + Duration::from_secs(600);
    if n == 0 {
        return Ok((written, t.elapsed().as_secs_f64()));
    }
    loop {
        check_interrupted()?;
        let (pods, _) = kestrel_agent::policy::maps::read(pins)?;
        if pods.iter().any(|p| p.rules.iter().any(|r| r.3 == want)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent did not program {n} policies in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((written, t.elapsed().as_secs_f64()))
}

/// Whether a connection from the namespace at `ns` to `ip`:PROBE_PORT is
/// accepted within `timeout`, asked from a thread in that namespace.
fn gets_through(ns: &Path, ip: Ipv4Addr, timeout: Duration) -> bool {
    let to = SocketAddr::from((ip, PROBE_PORT));
    on_ns_thread(ns, move || {
        Ok(TcpStream::connect_timeout(&to, timeout).is_ok())
    })
    .unwrap_or(false)
}

/// Times `count` policy changes: each creates a policy opening PROBE_PORT
/// to the clients and measures, from the API's answer, until the client
/// on every node gets through; then deletes it and waits until both are
/// shut out again.
async fn policy_changes(bed: &Testbed, count: usize) -> Result<Vec<f64>> {
    let api = policies(&bed.cp)?;
    let mut lags = Vec::with_capacity(count);
    for k in 0..count {
        check_interrupted()?;
        let name = format!("probe-{k}");
        let clients = serde_json::json!({"matchLabels": {"role": "client"}});
        api.create(
            &PostParams::default(),
            &policy(&name, clients, &[PROBE_PORT])?,
        )
        .await?;
        let created = Instant::now();
        let waits: Vec<_> = bed
            .probes
            .iter()
            .cloned()
            .map(|(ns, ip)| {
                std::thread::spawn(move || loop {
                    if gets_through(&ns, ip, Duration::from_millis(20)) {
                        return Some(created.elapsed());
                    }
                    if created.elapsed() > Duration::from_secs(30) {
                        return None;
                    }
                })
            })
            .collect();
        let mut worst = Duration::ZERO;
        for w in waits {
            match w.join() {
                Ok(Some(d)) => worst = worst.max(d),
                _ => bail!("policy {name} was not enforced on every node within 30 s"),
            }
        }
        lags.push(worst.as_secs_f64() * 1e3);
        api.delete(&name, &DeleteParams::default()).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while bed
            .probes
            .iter()
            .any(|(ns, ip)| gets_through(ns, *ip, Duration::from_millis(200)))
        {
            if Instant::now() > deadline {
                bail!("policy {name} still let clients through 30 s after its delete");
            }
        }
    }
    Ok(lags)
}

/// Loads kube-router's rules for `n` policies into the server side of the
/// baseline path; returns the seconds `ipset restore` and
/// `iptables-restore` took.
fn load_baseline(bed: &Testbed, n: usize) -> Result<f64> {
    let server_ns = &bed.veths[1].1;
    let pair = &bed.pairs[IPTABLES];
    let client = Ipv4Addr::new(10, 98, 21, 1);
    let measured = Policy {
        sources: vec![client],
        port: RR_PORT,
    };
    // Every pod of the namespace, as the fillers' `podSelector: {}`.
    let everyone = [client, pair.server_ip];
    let set = kube_router::policies(n, &everyone, &measured);
    let feed = |program: &[&str], input: &str| -> Result<()> {
        let mut cmd = server_ns.command(program);
        run_bounded(&mut cmd, Some(input), Duration::from_secs(600))
            .map(|_| ())
            .with_context(|| format!("{} in {}", program.join(" "), server_ns.name()))
    };
    // The old rules go first: a set in use cannot be destroyed.
    feed(&["iptables-restore"], "*filter\nCOMMIT\n")?;
    server_ns.exec(&["ipset", "destroy"])?;
    let t = Instant::now();
    let sets = kube_router::ipsets(pair.server_ip, &set);
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), sets)?;
    server_ns.exec(&["ipset", "restore", "-file", &file.path().to_string_lossy()])?;
    let rules = kube_router::iptables(pair.server_ip, &set);
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), rules)?;
    server_ns.exec(&["iptables-restore", &file.path().to_string_lossy()])?;
    Ok(t.elapsed().as_secs_f64())
}

/// The agent's resident memory in MiB.
fn rss_mib(node: &Node) -> Result<f64> {
    let pid = node
        .proc
        .as_ref()
        .context("the agent is not running")?
        .pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
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
                })
            };
            let s = match once() {
                Ok(s) => s,
                Err(e) => {
                    check_interrupted()?;
                    eprintln!("    {}: {e:#}; once more", PATHS[i]);
                    once()?
                }
            };
            eprintln!(
                "    round {round}/{}: {}: connect {:.1} µs, TCP_CRR {:.0}/s",
                a.rounds, PATHS[i], s.connect_p50_us, s.crr
            );
            out[i].push(s);
        }
    }
    Ok(out)
}

fn render(a: &Args, s: &[Vec<Vec<Sample>>], costs: &[Cost], busy: (f64, f64)) -> String {
    let mut out = String::from("# NetworkPolicy: cost by policy count\n\n");
    out.push_str(&format!(
        "Two nodes (network namespaces) on one machine ({} CPUs). Medians of {} round(s) of {} s \
         per measurement. connect: the connect() calls of TCP_CRR (`netperf-rr`), median and 99th \
         percentile. Ours: client pod to server pod on one node, the server selected by all N \
         policies (one allows the client, N - 1 fillers allow the namespace's pods on a port each). \
         Baseline: a veth pair whose server side holds kube-router's chains and ipsets for the \
         same N policies, the measured one in the middle.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.rounds,
        a.duration,
    ));
    out.push_str(
        "| policies | path | connect p50 µs | connect p99 µs | TCP_CRR /s |\n|---:|---|---:|---:|---:|\n",
    );
    for (z, n) in a.sizes.iter().enumerate() {
        for (p, title) in PATHS.iter().enumerate() {
            let v = &s[z][p];
            out.push_str(&format!(
                "| {n} | {title} | {:.1} | {:.1} | {:.0} |\n",
                median_of(v, |x| x.connect_p50_us),
                median_of(v, |x| x.connect_p99_us),
                median_of(v, |x| x.crr),
            ));
        }
    }
    out.push_str("\n| ratio | measured |\n|---|---:|\n");
    for (z, n) in a.sizes.iter().enumerate() {
        out.push_str(&format!(
            "| TCP_CRR at {n} policies: eBPF ÷ kube-router iptables | {:.3} |\n",
            median_ratio(&s[z][OURS], &s[z][IPTABLES], |x| x.crr)
        ));
        out.push_str(&format!(
            "| TCP_CRR at {n} policies: eBPF ÷ plain veth | {:.3} |\n",
            median_ratio(&s[z][OURS], &s[z][VETH], |x| x.crr)
        ));
    }
    let (first, last) = (0, a.sizes.len() - 1);
    for (p, what) in [(OURS, "eBPF"), (IPTABLES, "kube-router iptables")] {
        out.push_str(&format!(
            "| connect p50, {} ÷ {} policies: {what} | {:.3} |\n",
            a.sizes[last],
            a.sizes[first],
            median_of(&s[last][p], |x| x.connect_p50_us)
                / median_of(&s[first][p], |x| x.connect_p50_us)
        ));
    }
    out.push_str(&format!(
        "\n## Memory and policy changes\n\nAgent memory: the first node's agent's resident set \
         once it holds N policies. Written: from the first create until the API server answered \
         the last (32 creates in flight). Programmed: from the first create until the first \
         node's maps hold the last policy, so it includes the writing. A change: a policy opening port {PROBE_PORT} to the clients is created, and \
         timed from the API's answer until a client on each of the two nodes connects (the \
         slower node counts; {} changes at each size, none without policies). The baseline \
         column is what loading kube-router's whole rule set (ipsets and chains) took once.\n\n\
         | policies | agent RSS MiB | written s | programmed s | change to enforced p50 ms | max ms | ipset + iptables-restore s |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        a.changes
    ));
    for (n, c) in a.sizes.iter().zip(costs) {
        let mut v = c.changes_ms.clone();
        v.sort_by(f64::total_cmp);
        let (p50, max) = match v.last() {
            Some(m) => (format!("{:.1}", median(&v)), format!("{m:.1}")),
            None => ("–".into(), "–".into()),
        };
        out.push_str(&format!(
            "| {n} | {:.1} | {:.2} | {:.2} | {p50} | {max} | {:.2} |\n",
            c.rss_mib, c.written_s, c.programmed_s, c.iptables_s
        ));
    }
    if a.sizes[last] > a.sizes[first] {
        let per_k = (costs[last].rss_mib - costs[first].rss_mib)
            / ((a.sizes[last] - a.sizes[first]) as f64 / 1000.0);
        out.push_str(&format!(
            "\nAgent memory per 1,000 policies: {per_k:.2} MiB (RSS growth from {} to {} policies).\n",
            a.sizes[first], a.sizes[last]
        ));
    }
    out.push_str(&format!(
        "\nThe CPUs were {:.0}% busy in the 2 s before measuring and {:.0}% in the 2 s after \
         (the idle testbed included).\n",
        busy.0, busy.1
    ));
    out
}

fn main_inner(a: Args) -> Result<()> {
    catch_interrupts();
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "bench-policy needs root (network namespaces, eBPF, cgroups)"
    );
    for tool in ["ipset", "iptables-restore"] {
        ensure!(
            std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is not installed: run `cargo xtask setup`"
        );
    }
    ensure!(
        !a.sizes.is_empty() && a.sizes.windows(2).all(|w| w[0] < w[1]),
        "--sizes must be increasing counts"
    );
    ensure!(
        a.sizes.iter().all(|n| *n <= 50_000),
        "--sizes: at most 50,000 policies (fillers take ports 10000 and up)"
    );
    ensure!(
        a.rounds >= 1 && a.duration >= 1,
        "--rounds and --duration must be at least 1"
    );
    let bin_dir = use_bin_dir(a.bin_dir.as_deref())?;
    let rt = tokio::runtime::Runtime::new()?;
    let _entered = rt.enter();

    let started = Instant::now();
    let table = {
        let _quiet = StdoutToStderr::new()?;
        eprintln!("building the paths");
        let bed = build()?;
        // Before any policy: ping is not one of the ports they open.
        for pair in &bed.pairs {
            reachable(pair)?;
            tune_client(&pair.client_ns)?;
        }
        eprintln!("ready after {:.0} s", started.elapsed().as_secs_f64());
        let runner = Runner {
            rr_bin: bin_dir.join("netperf-rr"),
            duration: a.duration,
            rr_cpu: if a.no_pin { None } else { rr_cpu() },
        };
        let before = background_busy();
        let mut samples = Vec::new();
        let mut costs = Vec::new();
        let mut have = 0;
        for &n in &a.sizes {
            let (written_s, programmed_s) = rt.block_on(grow(&bed, have, n))?;
            have = n;
            let iptables_s = load_baseline(&bed, n)?;
            eprintln!(
                "  {n} policies: written to the API in {written_s:.1} s, programmed by the agent in {programmed_s:.1} s, kube-router's rules loaded in {iptables_s:.1} s"
            );
            samples.push(measure_size(&a, &runner, &bed)?);
            let changes_ms = if n > 0 {
                rt.block_on(policy_changes(&bed, a.changes))?
            } else {
                Vec::new()
            };
            if let Some(worst) = changes_ms.iter().copied().reduce(f64::max) {
                eprintln!("  {} policy changes at {n}: worst {worst:.1} ms", a.changes);
            }
            costs.push(Cost {
                rss_mib: rss_mib(&bed.nodes[0])?,
                written_s,
                programmed_s,
                iptables_s,
                changes_ms,
            });
        }
        let after = background_busy();
        let table = render(&a, &samples, &costs, (before, after));
        drop(bed);
        table
    };
    eprintln!(
        "cleaned up; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    println!("{table}");
    let dir = harness::benchkit::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("policy.md"), &table)?;
    eprintln!("written to {}", dir.join("policy.md").display());
    Ok(())
}

fn main() {
    let a = Args::parse();
    if let Err(e) = main_inner(a) {
        eprintln!("bench-policy: {e:#}");
        std::process::exit(1);
    }
}
