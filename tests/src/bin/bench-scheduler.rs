//! `bench-scheduler`: how fast the scheduler places pods on many hollow
//! nodes, through the real API server and etcd.
//!
//! For each node count it starts its own etcd and API server, registers the
//! hollow nodes, creates the pods unscheduled, then starts the scheduler and
//! times until every pod is bound (throughput). A second phase creates pods
//! at a fixed rate while the scheduler runs and times each from its create
//! request to the watch event that shows it bound (latency). The scheduler's
//! own metrics split the time into filtering, scoring and binding, and /proc
//! gives the CPU each process spent per pod. Everything it starts is killed
//! and its temporary directory removed when it ends.
//!
//! `cargo xtask bench scheduler [OPTIONS]` builds the release binaries and
//! runs this; `--help` lists the options.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use harness::benchkit::{
    build_request, call, control_plane_bin, create_namespace, expect, get_json, goals_table,
    http_client, run_main, wait_ok, write_table, Env, Goal, Http, Proc,
};

#[derive(Parser, Debug)]
#[command(
    name = "bench-scheduler",
    about = "Benchmark the scheduler on hollow nodes"
)]
struct Args {
    /// Node counts to run, comma-separated.
    #[arg(long, default_value = "1000,5000", value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Pods placed in the throughput phase.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Pods created while the scheduler runs, for latency (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    latency_pods: usize,
    /// Create rate of the latency phase, per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Concurrent creates when preparing the throughput phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The control-plane binary (default: <target>/release/control-plane).
    #[arg(long)]
    control_plane_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Seconds to wait for all pods to be bound before giving up.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn pod(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "registry.local/pause:1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
        })
        .to_string(),
    )
}

/// Sums and counts of the scheduler's histograms, and its bound-pod counter.
#[derive(Default, Debug, Clone)]
struct SchedMetrics {
    scheduled: f64,
    events_dropped: f64,
    sums: HashMap<String, (f64, f64)>,
}

async fn scheduler_metrics(http: &Http, base: &str) -> Result<SchedMetrics> {
    let (status, body) = call(http, Method::GET, base, "/metrics", None).await?;
    if status != StatusCode::OK {
        bail!("scheduler /metrics: {status}");
    }
    let text = String::from_utf8_lossy(&body);
    let mut m = SchedMetrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        if name == "scheduler_pods_scheduled_total" {
            m.scheduled = v;
        } else if name == "scheduler_events_dropped_total" {
            m.events_dropped = v;
        } else if let Some(h) = name.strip_suffix("_sum") {
            m.sums.entry(h.to_string()).or_default().0 = v;
        } else if let Some(h) = name.strip_suffix("_count") {
            m.sums.entry(h.to_string()).or_default().1 = v;
        }
    }
    Ok(m)
}

fn per_op_ms(m: &SchedMetrics, name: &str) -> f64 {
    let (sum, count) = m.sums.get(name).copied().unwrap_or_default();
    if count == 0.0 {
        0.0
    } else {
        sum / count * 1e3
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Outcome {
    nodes: usize,
    register_s: f64,
    create_rate: f64,
    sync_s: f64,
    bind_s: f64,
    pods_per_s: f64,
    filter_ms: f64,
    score_ms: f64,
    bind_ms: f64,
    cpu_ms: [f64; 3],
    events_dropped: f64,
    latency: Option<(f64, f64, f64, usize)>,
}

async fn create_pods(
    http: &Http,
    base: &str,
    ns: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Result<f64> {
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, base, ns, prefix, next) = (
            http.clone(),
            base.to_string(),
            ns.to_string(),
            prefix.to_string(),
            next.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let path = format!("/api/v1/namespaces/{ns}/pods");
                expect(
                    &http,
                    Method::POST,
                    &base,
                    &path,
                    Some(pod(&format!("{prefix}{i}"))),
                    StatusCode::CREATED,
                )
                .await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Creates `n` pods at `rate`/s and returns each one's create-to-bound time.
async fn latency_phase(http: &Http, base: &str, n: usize, rate: f64) -> Result<(Vec<f64>, usize)> {
    let ns = "bench-latency";
    create_namespace(http, base, ns).await?;
    let (_, list) = call(
        http,
        Method::GET,
        base,
        &format!("/api/v1/namespaces/{ns}/pods"),
        None,
    )
    .await?;
    let rv = serde_json::from_slice::<Value>(&list)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let req = build_request(
        Method::GET,
        base,
        &format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}"),
        None,
    )?;
    let resp = http.request(req).await.context("open the watch")?;
    let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let reader = tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let now = Instant::now();
            let Ok(frame) = frame else { return };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let bound = ev["object"]["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
                let idx = ev["object"]["metadata"]["name"]
                    .as_str()
                    .and_then(|n| n.strip_prefix("lat-"))
                    .and_then(|i| i.parse().ok());
                if let (true, Some(i)) = (bound, idx) {
                    let _ = bound_tx.send((i, now));
                }
            }
        }
    });
    let mut created = vec![None; n];
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, slot) in created.iter_mut().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        *slot = Some(Instant::now());
        let (http, base) = (http.clone(), base.to_string());
        tasks.spawn(async move {
            expect(
                &http,
                Method::POST,
                &base,
                &format!("/api/v1/namespaces/{ns}/pods"),
                Some(pod(&format!("lat-{i}"))),
                StatusCode::CREATED,
            )
            .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let mut done: HashMap<usize, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.len() < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), bound_rx.recv()).await {
            Ok(Some((i, t))) => {
                done.entry(i).or_insert(t);
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    reader.abort();
    let mut lat: Vec<f64> = done
        .iter()
        .filter_map(|(i, t)| {
            created
                .get(*i)
                .copied()
                .flatten()
                .map(|c| t.duration_since(c).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((lat, n - done.len()))
}

async fn run_one(a: &Args, nodes: usize, bin: &Path) -> Result<Outcome> {
    let http = http_client();
    let mut env = Env::started(&a.etcd_bin, bin, &http).await?;
    let base = env.api_url.clone();
    eprintln!("  {nodes} nodes: registering");
    let t = Instant::now();
    let hollow = env
        .start_hollow_nodes(
            bin,
            nodes,
            &[
                "--lease-interval-seconds",
                "0",
                "--run-pods",
                "false",
                "--zones",
                "3",
            ],
        )
        .await?;
    drop(hollow);
    let register_s = t.elapsed().as_secs_f64();

    eprintln!("  {nodes} nodes: creating {} pods", a.pods);
    create_namespace(&http, &base, "bench").await?;
    let create_rate = create_pods(&http, &base, "bench", "p-", a.pods, a.concurrency).await?;

    eprintln!("  {nodes} nodes: scheduling");
    let t0 = Instant::now();
    let cpu_before = [
        env.etcd.as_ref().map_or(0.0, Proc::cpu),
        env.apiserver.as_ref().map_or(0.0, Proc::cpu),
    ];
    let (mut sched, sched_url) = env.spawn_component(bin, "scheduler", &[])?;
    wait_ok(
        &http,
        &sched_url,
        "/readyz",
        &mut sched,
        Duration::from_secs(120),
        Duration::from_millis(20),
    )
    .await?;
    let synced = Instant::now();
    let deadline = synced + Duration::from_secs(a.timeout);
    let metrics = loop {
        let m = scheduler_metrics(&http, &sched_url).await?;
        if m.scheduled as usize >= a.pods {
            break m;
        }
        if sched.exited() {
            bail!("the scheduler exited\n{}", sched.log_tail(20));
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} pods bound after {}s",
                m.scheduled,
                a.pods,
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bound = Instant::now();
    let cpu = [
        env.etcd.as_ref().map_or(0.0, Proc::cpu) - cpu_before[0],
        env.apiserver.as_ref().map_or(0.0, Proc::cpu) - cpu_before[1],
        sched.cpu(),
    ];
    let bind_s = bound.duration_since(synced).as_secs_f64();
    // Check the API agrees: every pod has a node.
    let list = get_json(&http, &base, "/api/v1/namespaces/bench/pods").await?;
    let unbound = list["items"].as_array().map_or(0, |i| {
        i.iter()
            .filter(|p| p["spec"]["nodeName"].as_str().is_none())
            .count()
    });
    if unbound > 0 {
        bail!(
            "the scheduler counted {} binds but {unbound} pods have no node",
            metrics.scheduled
        );
    }
    let latency = if a.latency_pods > 0 {
        eprintln!("  {nodes} nodes: latency at {}/s", a.rate);
        let (lat, missing) = latency_phase(&http, &base, a.latency_pods, a.rate).await?;
        Some((
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0),
            missing,
        ))
    } else {
        None
    };
    env.check_alive()?;
    let per_pod = |s: f64| s / a.pods as f64 * 1e3;
    Ok(Outcome {
        nodes,
        register_s,
        create_rate,
        sync_s: synced.duration_since(t0).as_secs_f64(),
        bind_s,
        pods_per_s: a.pods as f64 / bind_s,
        filter_ms: per_op_ms(&metrics, "scheduler_filter_duration_seconds"),
        score_ms: per_op_ms(&metrics, "scheduler_score_duration_seconds"),
        bind_ms: per_op_ms(&metrics, "scheduler_binding_duration_seconds"),
        cpu_ms: [per_pod(cpu[0]), per_pod(cpu[1]), per_pod(cpu[2])],
        events_dropped: metrics.events_dropped,
        latency,
    })
}

fn render(a: &Args, rows: &[Outcome]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# Scheduler on hollow nodes ({} pods, requests 10m cpu / 16Mi each)\n\n",
        a.pods
    ));
    s.push_str("| nodes | register (s) | pod creates/s | scheduler start to synced (s) | synced to all bound (s) | **pods/s** | filter ms/pod | score ms/pod | bind call ms | CPU ms/pod etcd | apiserver | scheduler | Scheduled events dropped |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.2} | **{:.0}** | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.3} | {:.0} |\n",
            r.nodes, r.register_s, r.create_rate, r.sync_s, r.bind_s, r.pods_per_s, r.filter_ms, r.score_ms, r.bind_ms,
            r.cpu_ms[0], r.cpu_ms[1], r.cpu_ms[2], r.events_dropped
        ));
    }
    if a.latency_pods > 0 {
        s.push_str(&format!(
            "\n## Create-to-bound latency, {} pods created at {}/s while the scheduler runs\n\n| nodes | p50 ms | p99 ms | max ms | never bound |\n|---:|---:|---:|---:|---:|\n",
            a.latency_pods, a.rate
        ));
        for r in rows {
            if let Some((p50, p99, max, missing)) = r.latency {
                s.push_str(&format!(
                    "| {} | {p50:.1} | {p99:.1} | {max:.1} | {missing} |\n",
                    r.nodes
                ));
            }
        }
    }
    let goals: Vec<Goal> = rows
        .iter()
        .filter(|r| r.nodes == 5000)
        .map(|r| Goal {
            what: "pods/s at 5,000 nodes".into(),
            measured: r.pods_per_s,
            bound: 1000.0,
            at_least: true,
        })
        .collect();
    if !goals.is_empty() {
        s.push('\n');
        s.push_str(&goals_table(&goals));
    }
    s.push_str("\nTarget: ≥ 1,000 pods/s at 5,000 nodes on 2 cores. Anchors: kube-scheduler ~100 pods/s at 5,000 nodes (its scalability tests), ~300 pods/s at 30,000 nodes in a 2025 comparison where Godel reached ~1,000.\n");
    s.push_str("filter/score: the scheduler's own time per attempt; bind call: latency of pods/binding (many run at once); CPU: per pod placed, during the throughput phase.\n");
    s
}

async fn main_inner(a: Args) -> Result<()> {
    let bin = control_plane_bin(a.control_plane_bin.as_deref(), "scheduler")?;
    let mut rows = Vec::new();
    for n in &a.nodes {
        rows.push(
            run_one(&a, *n, &bin)
                .await
                .with_context(|| format!("{n} nodes"))?,
        );
    }
    write_table("scheduler", &render(&a, &rows))
}

fn main() {
    run_main("bench-scheduler", main_inner(Args::parse()));
}
