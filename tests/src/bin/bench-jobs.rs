//! `bench-jobs`: how fast the Job controller runs pods to completion on
//! hollow nodes, against the Deployment path in the same run.
//!
//! Each workload gets its own etcd, API server, scheduler, controller-manager
//! and hollow nodes, so neither inherits the other's objects. The Job runs
//! `--completions` pods `--parallelism` at a time; its pods carry the hollow
//! exit-code annotation, so the hollow kubelet finishes each at once and the
//! Job controller has to count it and start the next. The Deployment asks
//! for as many replicas, which the hollow kubelet keeps Running. Both are
//! timed from the create request to the status that shows every pod done
//! (the Job's `Complete` condition with `succeeded` = completions; the
//! Deployment's `readyReplicas`). Everything it starts is killed and its
//! temporary directory removed when it ends.
//!
//! `cargo xtask bench jobs [OPTIONS]` builds the release binaries and runs
//! this; `--help` lists the options.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use harness::benchkit::{
    call, control_plane_bin, create_namespace, expect, get_json, http_client, run_main, wait_ok,
    write_table, Env, Http, Proc,
};

#[derive(Parser, Debug)]
#[command(
    name = "bench-jobs",
    about = "Benchmark the Job controller against the Deployment path on hollow nodes"
)]
struct Args {
    /// Pods each workload runs: the Job's completions, the Deployment's replicas.
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    /// The Job's parallelism.
    #[arg(long, default_value_t = 50)]
    parallelism: usize,
    /// Hollow nodes the pods spread over.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// The control-plane binary (default: <target>/release/control-plane).
    #[arg(long)]
    control_plane_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Seconds to wait for a workload to finish before giving up.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Job,
    Deployment,
}

struct Outcome {
    what: Workload,
    seconds: f64,
    pods_created: usize,
    /// CPU milliseconds per pod: controller-manager, scheduler, API server, etcd.
    cpu_ms: [f64; 4],
}

fn template(exit_code: Option<i32>) -> Value {
    let annotations = match exit_code {
        Some(c) => json!({"hollow.kestrel.dev/exit-code": c.to_string()}),
        None => json!({}),
    };
    json!({
        "metadata": {"labels": {"app": "bench"}, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "registry.local/pause:1",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    })
}

fn manifest(what: Workload, a: &Args) -> (String, Value) {
    match what {
        Workload::Job => {
            let mut t = template(Some(0));
            t["spec"]["restartPolicy"] = json!("Never");
            (
                "/apis/batch/v1/namespaces/bench/jobs".into(),
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "bench"},
                       "spec": {"completions": a.pods, "parallelism": a.parallelism, "template": t}}),
            )
        }
        Workload::Deployment => (
            "/apis/apps/v1/namespaces/bench/deployments".into(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
                   "spec": {"replicas": a.pods, "selector": {"matchLabels": {"app": "bench"}},
                            "template": template(None)}}),
        ),
    }
}

/// Whether the workload's status shows every pod done.
fn finished(what: Workload, obj: &Value, pods: usize) -> Result<bool> {
    let s = &obj["status"];
    Ok(match what {
        Workload::Job => {
            let cond = |ty: &str| {
                s["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == ty && c["status"] == "True")
            };
            if cond("Failed") {
                bail!("the Job failed: {s}");
            }
            cond("Complete") && s["succeeded"].as_u64() == Some(pods as u64)
        }
        Workload::Deployment => s["readyReplicas"].as_u64() == Some(pods as u64),
    })
}

fn cpu_of(p: Option<&Proc>) -> f64 {
    p.map_or(0.0, Proc::cpu)
}

/// Starts a component of the control-plane binary and waits until it is healthy.
async fn component(env: &Env, http: &Http, bin: &Path, name: &'static str) -> Result<Proc> {
    let (mut p, url) = env.spawn_component(bin, name, &[])?;
    wait_ok(
        http,
        &url,
        "/healthz",
        &mut p,
        Duration::from_secs(60),
        Duration::from_millis(50),
    )
    .await?;
    Ok(p)
}

async fn run_one(a: &Args, what: Workload, bin: &Path) -> Result<Outcome> {
    let http = http_client();
    let mut env = Env::started(&a.etcd_bin, bin, &http).await?;
    let base = env.api_url.clone();
    let mut hollow = env.start_hollow_nodes(bin, a.nodes, &[]).await?;
    let mut sched = component(&env, &http, bin, "scheduler").await?;
    let mut cm = component(&env, &http, bin, "controller-manager").await?;
    create_namespace(&http, &base, "bench").await?;

    let (path, body) = manifest(what, a);
    let cpu_before = [
        cpu_of(Some(&cm)),
        cpu_of(Some(&sched)),
        cpu_of(env.apiserver.as_ref()),
        cpu_of(env.etcd.as_ref()),
    ];
    let t0 = Instant::now();
    expect(
        &http,
        Method::POST,
        &base,
        &path,
        Some(Bytes::from(body.to_string())),
        StatusCode::CREATED,
    )
    .await?;
    let deadline = t0 + Duration::from_secs(a.timeout);
    loop {
        let (status, obj) = call(&http, Method::GET, &base, &format!("{path}/bench"), None).await?;
        if status == StatusCode::OK && finished(what, &serde_json::from_slice(&obj)?, a.pods)? {
            break;
        }
        for p in [&mut cm, &mut sched, &mut hollow] {
            if p.exited() {
                bail!("{} exited\n{}", p.name, p.log_tail(20));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "not finished after {} s: {}",
                a.timeout,
                String::from_utf8_lossy(&obj)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_after = [
        cpu_of(Some(&cm)),
        cpu_of(Some(&sched)),
        cpu_of(env.apiserver.as_ref()),
        cpu_of(env.etcd.as_ref()),
    ];
    let list = get_json(&http, &base, "/api/v1/namespaces/bench/pods").await?;
    let pods_created = list["items"].as_array().map_or(0, Vec::len);
    env.check_alive()?;
    let per_pod = |i: usize| (cpu_after[i] - cpu_before[i]) / a.pods as f64 * 1e3;
    Ok(Outcome {
        what,
        seconds,
        pods_created,
        cpu_ms: [per_pod(0), per_pod(1), per_pod(2), per_pod(3)],
    })
}

fn render(a: &Args, rows: &[Outcome]) -> String {
    let mut s = format!(
        "# Jobs against Deployments on {} hollow nodes ({} pods each)\n\n",
        a.nodes, a.pods
    );
    s.push_str("| workload | pods created | create to done (s) | **pods/s** | CPU ms/pod controller-manager | scheduler | apiserver | etcd |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let rate = |r: &Outcome| a.pods as f64 / r.seconds;
    for r in rows {
        let name = match r.what {
            Workload::Job => format!("Job, {} completions, parallelism {}", a.pods, a.parallelism),
            Workload::Deployment => format!("Deployment, {} replicas", a.pods),
        };
        s.push_str(&format!(
            "| {name} | {} | {:.2} | **{:.0}** | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.pods_created,
            r.seconds,
            rate(r),
            r.cpu_ms[0],
            r.cpu_ms[1],
            r.cpu_ms[2],
            r.cpu_ms[3]
        ));
    }
    let of = |w: Workload| rows.iter().find(|r| r.what == w).map(rate);
    if let (Some(job), Some(dep)) = (of(Workload::Job), of(Workload::Deployment)) {
        s.push_str(&format!(
            "\nJob ÷ Deployment pods/s: **{:.2}**\n",
            job / dep
        ));
    }
    s.push_str(
        "\nJob: from the create request to `Complete` with every completion counted; each pod \
         finishes on its hollow node as soon as it is bound, so the controller's count-and-replace \
         loop sets the pace. Deployment: from the create request to every replica Ready. CPU: \
         per pod, over that span.\n",
    );
    s
}

async fn main_inner(a: Args) -> Result<()> {
    let bin = control_plane_bin(a.control_plane_bin.as_deref(), "jobs")?;
    let mut rows = Vec::new();
    for what in [Workload::Job, Workload::Deployment] {
        let name = match what {
            Workload::Job => "job",
            Workload::Deployment => "deployment",
        };
        eprintln!("  {name}: {} pods on {} hollow nodes", a.pods, a.nodes);
        rows.push(run_one(&a, what, &bin).await.context(name)?);
    }
    write_table("jobs", &render(&a, &rows))
}

fn main() {
    run_main("bench-jobs", main_inner(Args::parse()));
}
