//! `bench-pods`: how fast the agent turns a pod bound to its node into a
//! running container, and how much memory it uses doing so.
//!
//! It starts its own etcd, API server and agent (release binaries, temporary
//! state, its own cgroup root), imports the project's busybox image, then:
//! times create-to-Running for one pod at a time, times 100 pods created at
//! once, reads the agent's RSS idle and with those pods running, and, as the
//! baseline in the same run, times the runtime helper alone creating,
//! starting and deleting a container (no API server, no agent logic).
//! Everything is deleted and stopped at the end, also on error.
//!
//! `cargo xtask bench pods [OPTIONS]` builds the release binaries and runs this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;

use harness::benchkit::{free_port, goals_table, http_client, target_dir, Env, Goal, Proc};

#[derive(Parser, Debug)]
#[command(
    name = "bench-pods",
    about = "Benchmark pod start-up on a real node agent"
)]
struct Args {
    /// Pods started one after another for the single-pod latency.
    #[arg(long, default_value_t = 20)]
    sequential: usize,
    /// Pods created at once.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Containers the runtime-only baseline creates, starts and deletes.
    #[arg(long, default_value_t = 20)]
    baseline: usize,
    #[arg(long)]
    control_plane_bin: Option<PathBuf>,
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn helper_pid(state: &Path) -> Option<u32> {
    let needle = format!("--socket {}", state.join("runtime.sock").display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains("runtime-helper") && cmd.contains(&needle)).then_some(pid)
    })
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
    }))
    .expect("a valid pod")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Creates `names` at once and returns each one's create-to-Running time.
async fn start_pods(api: &Api<Pod>, node: &str, names: &[String]) -> Result<Vec<f64>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let w = watcher(api.clone(), watcher::Config::default().labels("app=bench"));
    let watch = tokio::spawn(async move {
        let mut s = std::pin::pin!(w);
        while let Some(Ok(ev)) = s.next().await {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    let _ = tx.send((p.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }
    });
    // Let the watch start before the first create.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut created = HashMap::new();
    let mut tasks = Vec::new();
    for n in names {
        let (api, p) = (api.clone(), pod(n, node));
        created.insert(n.clone(), Instant::now());
        tasks.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &p).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut running: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.len() < names.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((n, t))) => {
                running.entry(n).or_insert(t);
            }
            _ => bail!(
                "only {} of {} pods Running after 120 s",
                running.len(),
                names.len()
            ),
        }
    }
    watch.abort();
    let mut lat: Vec<f64> = running
        .iter()
        .filter_map(|(n, t)| {
            created
                .get(n)
                .map(|c| t.duration_since(*c).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

async fn delete_all(api: &Api<Pod>) -> Result<()> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    api.delete_collection(&dp, &ListParams::default().labels("app=bench"))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api
        .list(&ListParams::default().labels("app=bench"))
        .await?
        .items
        .is_empty()
    {
        if Instant::now() > deadline {
            bail!("pods not gone after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The runtime helper alone: create, start, kill and delete one container
/// at a time (busybox `sleep`), as youki and crun are usually measured.
async fn baseline(
    agent: &Path,
    state: &Path,
    n: usize,
    cgroup_root: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    use kestrel_agent::pods::spec::{config_json, ContainerSpec};
    let runtime = kestrel_agent::runtime::Runtime::connect_or_spawn(
        agent,
        &state.join("baseline-containers"),
        &state.join("baseline.sock"),
        &state.join("baseline.log"),
    )
    .await?;
    let store = kestrel_agent::image::ImageStore::open(&state.join("images"))?;
    let image = store
        .resolve("busybox")?
        .context("the busybox image is imported")?;
    let mut exits = runtime.exits();
    let mut lat = Vec::new();
    let mut started = Vec::new();
    for i in 0..n {
        let bundle = state.join(format!("baseline-{i}"));
        let rootfs = bundle.join("rootfs");
        kestrel_agent::pods::sandbox::mount_rootfs(
            &image.layers,
            &bundle.join("upper"),
            &bundle.join("work"),
            &rootfs,
        )?;
        let spec = ContainerSpec {
            rootfs: rootfs.clone(),
            args: vec!["sleep".into(), "1000".into()],
            env: vec!["PATH=/bin".into()],
            hostname: "b".into(),
            cgroups_path: format!("{cgroup_root}/baseline/c{i}"),
            no_new_privileges: true,
            ..Default::default()
        };
        std::fs::write(bundle.join("config.json"), config_json(&spec).to_string())?;
        let id = format!("baseline-{i}");
        let t = Instant::now();
        let c = runtime.create(&id, &bundle, None, None, None).await?;
        runtime.start(&id).await?;
        started.push(t.elapsed().as_secs_f64() * 1e3);
        runtime.kill(&id, libc::SIGKILL).await?;
        let pid = c.pid.unwrap_or(0);
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(e) = exits.recv().await {
                    if e.pid == pid {
                        return;
                    }
                }
            }
        })
        .await?;
        runtime.delete(&id, true).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        kestrel_agent::pods::sandbox::unmount(&rootfs);
    }
    let _ = runtime.shutdown().await;
    lat.sort_by(|a, b| a.total_cmp(b));
    started.sort_by(|a, b| a.total_cmp(b));
    Ok((started, lat))
}

struct Report {
    single: Vec<f64>,
    burst: Vec<f64>,
    burst_wall: f64,
    rss_idle: u64,
    rss_busy: u64,
    helper_idle: u64,
    helper_busy: u64,
    /// The helper alone: create + start.
    baseline_start: Vec<f64>,
    /// The helper alone: create + start + kill + delete.
    baseline: Vec<f64>,
}

/// Address of the bench's node on its own (otherwise empty) link.
const NODE_IP: &str = "10.99.0.10";

async fn run(
    a: &Args,
    env: &mut Env,
    state: &Path,
    logs: &Path,
    cgroup_root: &str,
    node_ns: &harness::net::Netns,
    pins: &Path,
) -> Result<Report> {
    let release = target_dir().join("release");
    let cp = a
        .control_plane_bin
        .clone()
        .unwrap_or_else(|| release.join("control-plane"));
    let agent = a.agent_bin.clone().unwrap_or_else(|| release.join("agent"));
    let http = http_client();
    env.start_etcd(&a.etcd_bin).await?;
    env.start_apiserver(&cp, &http).await?;
    let archive = state.join("busybox.tar");
    for args in [
        vec!["build-busybox".to_string(), archive.display().to_string()],
        vec!["import".into(), archive.display().to_string()],
    ] {
        let ok = Command::new(&agent)
            .arg("image")
            .args(&args)
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .status()?;
        if !ok.success() {
            bail!("agent image {args:?} failed");
        }
    }
    let node = "bench-node";
    // The node is a network namespace of its own (pods get veths and
    // routes there, never on this machine), whose loopback leads to the
    // API server.
    let api_addr: std::net::SocketAddr = env.api_url.trim_start_matches("http://").parse()?;
    let _relay = harness::forward::Forward::start(Some(&node_ns.path()), api_addr, None, api_addr)?;
    let mut cmd = Command::new(&agent);
    cmd.args([
        "run",
        "--master",
        &env.api_url,
        "--node-name",
        node,
        "--node-ip",
        NODE_IP,
        "--pod-cidr",
        "10.244.0.0/24",
    ])
    .arg(format!("--node-api-address=127.0.0.1:{}", free_port()?))
    .arg("--state-dir")
    .arg(state)
    .arg("--log-dir")
    .arg(logs)
    .arg("--bpffs-dir")
    .arg(pins)
    .args(["--cgroup-root", cgroup_root])
    .env("RUST_LOG", "warn");
    harness::net::in_netns(&mut cmd, node_ns)?;
    let mut agent_proc = Proc::spawn("agent", &mut cmd, &env.dir.path().join("agent.log"))?;
    let client = kube::Client::try_from(kube::Config::new(env.api_url.parse()?))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let t = Instant::now();
    while nodes.get_opt(node).await?.is_none() {
        if agent_proc.exited() || t.elapsed() > Duration::from_secs(30) {
            bail!("the agent did not register\n{}", agent_proc.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent_proc.child.id();
    let rss_idle = rss_kib(pid);
    let helper_idle = helper_pid(state).map(rss_kib).unwrap_or(0);

    eprintln!("  one pod at a time, {} times", a.sequential);
    let mut single = Vec::new();
    for i in 0..a.sequential {
        single.extend(start_pods(&api, node, &[format!("one-{i}")]).await?);
        delete_all(&api).await?;
    }
    single.sort_by(|a, b| a.total_cmp(b));

    eprintln!("  {} pods at once", a.burst);
    let names: Vec<String> = (0..a.burst).map(|i| format!("burst-{i}")).collect();
    let t = Instant::now();
    let burst = start_pods(&api, node, &names).await?;
    let burst_wall = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_busy = rss_kib(pid);
    let helper_busy = helper_pid(state).map(rss_kib).unwrap_or(0);
    delete_all(&api).await?;
    if agent_proc.exited() {
        bail!("the agent died\n{}", agent_proc.log_tail(30));
    }
    drop(agent_proc);

    eprintln!("  runtime-only baseline, {} containers", a.baseline);
    let (baseline_start, baseline) = baseline(&agent, state, a.baseline, cgroup_root).await?;
    Ok(Report {
        single,
        burst,
        burst_wall,
        rss_idle,
        rss_busy,
        helper_idle,
        helper_busy,
        baseline_start,
        baseline,
    })
}

fn render(a: &Args, r: &Report) -> String {
    let ms = |v: f64| format!("{v:.1}");
    let mut s =
        String::from("# Pod start-up on one node agent (busybox `sleep`, image present)\n\n");
    s.push_str("| measurement | count | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n");
    s.push_str(&format!(
        "| runtime helper alone: create + start (baseline) | {} | {} | {} | {} |\n",
        r.baseline_start.len(),
        ms(percentile(&r.baseline_start, 0.5)),
        ms(percentile(&r.baseline_start, 0.99)),
        ms(percentile(&r.baseline_start, 1.0))
    ));
    s.push_str(&format!(
        "| runtime helper alone: create + start + kill + delete (as youki/crun are measured) | {} | {} | {} | {} |\n",
        r.baseline.len(),
        ms(percentile(&r.baseline, 0.5)),
        ms(percentile(&r.baseline, 0.99)),
        ms(percentile(&r.baseline, 1.0))
    ));
    s.push_str(&format!(
        "| one pod: create request to Running seen by a watch | {} | {} | {} | {} |\n",
        r.single.len(),
        ms(percentile(&r.single, 0.5)),
        ms(percentile(&r.single, 0.99)),
        ms(percentile(&r.single, 1.0))
    ));
    s.push_str(&format!(
        "| {} pods created at once: each create to Running | {} | {} | {} | {} |\n",
        a.burst,
        r.burst.len(),
        ms(percentile(&r.burst, 0.5)),
        ms(percentile(&r.burst, 0.99)),
        ms(percentile(&r.burst, 1.0))
    ));
    s.push_str(&format!(
        "\n{} pods were all Running {:.2} s after the first create.\n\n",
        a.burst, r.burst_wall
    ));
    s.push_str("| memory (RSS) | idle | with the burst running |\n|---|---:|---:|\n");
    s.push_str(&format!(
        "| agent | {} MiB | {} MiB |\n",
        r.rss_idle / 1024,
        r.rss_busy / 1024
    ));
    s.push_str(&format!(
        "| runtime helper | {} MiB | {} MiB |\n",
        r.helper_idle / 1024,
        r.helper_busy / 1024
    ));
    s.push_str(&format!(
        "\nRatio one pod (API create to Running seen by a watch) p50 ÷ runtime create + start p50: {:.2}×.\n",
        percentile(&r.single, 0.5) / percentile(&r.baseline_start, 0.5)
    ));
    s.push('\n');
    s.push_str(&goals_table(&[
        Goal {
            what: "one pod: create to Running p50, ms".into(),
            measured: percentile(&r.single, 0.5),
            bound: 150.0,
            at_least: false,
        },
        Goal {
            what: format!("{} pods all Running, s", a.burst),
            measured: r.burst_wall,
            bound: 10.0,
            at_least: false,
        },
        Goal {
            what: format!("agent RSS with {} pods, MiB", a.burst),
            measured: r.rss_busy as f64 / 1024.0,
            bound: 40.0,
            at_least: false,
        },
    ]));
    s.push_str("\nTargets: p50 ≤ 150 ms for one pod, 100 pods Running in ≤ 10 s, agent RSS ≤ 40 MiB with 100 pods. Anchors: Kubernetes' pod start-up SLO p99 ≤ 5 s; youki 111 ms and crun 47 ms for create+start+delete of one container.\n");
    s
}

async fn main_inner(a: Args) -> Result<()> {
    harness::require_root("the agent runs containers");
    let mut env = Env::new()?;
    let state = env.dir.path().join("agent");
    let logs = env.dir.path().join("logs");
    std::fs::create_dir_all(&state)?;
    let cgroup_root = format!("/kestrel-bench-{}", std::process::id());
    let node_ns = harness::net::Netns::new("bench")?;
    node_ns.exec(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
    ])?;
    node_ns.addr_up("up0", &format!("{NODE_IP}/24"))?;
    node_ns.exec(&["ip", "link", "set", "up1", "up"])?;
    let pins = Path::new("/sys/fs/bpf/kestrel").join(node_ns.name());
    let result = run(&a, &mut env, &state, &logs, &cgroup_root, &node_ns, &pins).await;
    // Whatever happened, leave no container, mount, cgroup or pin behind
    // (the namespace goes with its links and routes on drop).
    let agent = a
        .agent_bin
        .clone()
        .unwrap_or_else(|| target_dir().join("release").join("agent"));
    let mut reset = Command::new(&agent);
    reset
        .arg("reset")
        .arg("--state-dir")
        .arg(&state)
        .args(["--cgroup-root", &cgroup_root])
        .arg("--bpffs-dir")
        .arg(&pins)
        .stderr(Stdio::null());
    harness::net::in_netns(&mut reset, &node_ns)?;
    let _ = reset.status();
    let report = result?;
    let table = render(&a, &report);
    println!("{table}");
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("pods.md"), &table)?;
    eprintln!("written to {}", out.join("pods.md").display());
    Ok(())
}

fn main() {
    let a = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(e) = rt.block_on(main_inner(a)) {
        eprintln!("bench-pods: {e:#}");
        std::process::exit(1);
    }
}
