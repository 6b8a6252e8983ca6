//! `bench-apiserver`: how fast the API server turns requests into etcd
//! writes, reads and watch events, next to raw etcd on the same machine.
//!
//! It starts its own etcd (temporary data directory, free loopback ports)
//! and its own `control-plane apiserver`, runs each phase for a bounded time
//! or count, prints a Markdown table and writes it to
//! `<target>/bench/apiserver.md`. Both processes are killed and the
//! temporary directory removed when it ends, also on error or Ctrl-C.
//!
//! `cargo xtask bench apiserver [OPTIONS]` builds the release binaries and
//! runs this; `--help` lists the options.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use clap::Parser;
use etcd_client::{Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "bench-apiserver",
    about = "Benchmark the API server against raw etcd on loopback"
)]
struct Args {
    /// Seconds each closed-loop phase runs.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Clients in each closed-loop phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Target rate of the open-loop write runs, per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds each open-loop run lasts.
    #[arg(long, default_value_t = 10.0)]
    rate_duration: f64,
    /// Objects in the namespace the list phase lists.
    #[arg(long, default_value_t = 1000)]
    list_objects: usize,
    /// Watches open during the watch phase.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Objects created while the watches are open.
    #[arg(long, default_value_t = 50)]
    watch_events: usize,
    /// Rate of those creates, per second.
    #[arg(long, default_value_t = 10.0)]
    watch_rate: f64,
    /// Size in bytes of the JSON value the raw etcd baseline writes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// The control-plane binary [default: <target>/release/control-plane,
    /// where <target> is $CARGO_TARGET_DIR or the workspace's target/].
    #[arg(long)]
    apiserver_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Where to write the Markdown table [default: <target>/bench/apiserver.md].
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(
            self.duration > 0.0 && self.duration <= 600.0,
            "--duration must be in (0, 600] s"
        );
        ensure!(
            (1..=4096).contains(&self.concurrency),
            "--concurrency must be 1..=4096"
        );
        ensure!(
            self.rate > 0.0 && self.rate <= 100_000.0,
            "--rate must be in (0, 100000]"
        );
        ensure!(
            self.rate_duration > 0.0 && self.rate_duration <= 600.0,
            "--rate-duration must be in (0, 600] s"
        );
        ensure!(self.list_objects >= 1, "--list-objects must be at least 1");
        ensure!(
            self.watch_rate > 0.0 && self.watch_rate <= 10_000.0,
            "--watch-rate must be in (0, 10000]"
        );
        ensure!(
            (2..=16 << 20).contains(&self.value_size),
            "--value-size must be 2..=16 MiB"
        );
        Ok(())
    }

    fn closed(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }
}

/// `$CARGO_TARGET_DIR` (relative to the current directory) or `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d)
            }
        }
        None => harness::workspace_root().join("target"),
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port on 127.0.0.1")?;
    Ok(l.local_addr()
        .context("local address of a bound port")?
        .port())
}

// ---------------------------------------------------------------------------
// Processes

/// A child process killed (and reaped) on drop.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("duplicate a log file handle")?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `n` lines of the log, for error messages.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("--- last lines of the {} log ---\n{tail}", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd, the API server and the directory they write to. Fields drop in
/// order: the API server, etcd, then the directory.
struct Env {
    apiserver: Option<Proc>,
    etcd: Option<Proc>,
    etcd_url: String,
    api_url: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kestrel-bench-")
            .tempdir()
            .context("create a temporary directory")?;
        Ok(Self {
            apiserver: None,
            etcd: None,
            etcd_url: String::new(),
            api_url: String::new(),
            dir,
        })
    }

    async fn start_etcd(&mut self, bin: &Path) -> Result<etcd_client::Client> {
        let mut last = anyhow!("etcd was not started");
        // A port picked as free can be taken before etcd binds it: retry.
        for attempt in 0..3 {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let data = self.dir.path().join(format!("etcd-{attempt}"));
            let log = self.dir.path().join("etcd.log");
            let mut proc = Proc::spawn(
                "etcd",
                Command::new(bin)
                    .arg("--name=bench")
                    .arg(format!("--data-dir={}", data.display()))
                    .arg(format!("--listen-client-urls={client}"))
                    .arg(format!("--advertise-client-urls={client}"))
                    .arg(format!("--listen-peer-urls={peer}"))
                    .arg(format!("--initial-advertise-peer-urls={peer}"))
                    .arg(format!("--initial-cluster=bench={peer}"))
                    .arg("--log-level=warn"),
                &log,
            )?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if proc.exited() {
                    last = anyhow!("etcd exited during start-up\n{}", proc.log_tail(20));
                    break;
                }
                if Instant::now() > deadline {
                    last = anyhow!("etcd not ready after 20 s\n{}", proc.log_tail(20));
                    break;
                }
                if let Ok(mut c) = etcd_connect(&client).await {
                    if c.status().await.is_ok() {
                        self.etcd = Some(proc);
                        self.etcd_url = client;
                        return Ok(c);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last)
    }

    async fn start_apiserver(&mut self, bin: &Path, http: &Http) -> Result<()> {
        ensure!(
            bin.exists(),
            "{} is missing: build it with `cargo build --release -p kestrel-control-plane` \
             (which `cargo xtask bench apiserver` does) or pass --apiserver-bin",
            bin.display()
        );
        let mut last = anyhow!("the API server was not started");
        for _ in 0..3 {
            let port = free_port()?;
            let url = format!("http://127.0.0.1:{port}");
            let log = self.dir.path().join("apiserver.log");
            let mut proc = Proc::spawn(
                "apiserver",
                Command::new(bin)
                    .args(["apiserver", "--etcd-servers", &self.etcd_url])
                    .arg(format!("--insecure-bind-address=127.0.0.1:{port}")),
                &log,
            )?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if proc.exited() {
                    last = anyhow!(
                        "the API server exited during start-up\n{}",
                        proc.log_tail(20)
                    );
                    break;
                }
                if Instant::now() > deadline {
                    last = anyhow!("the API server not ready after 30 s\n{}", proc.log_tail(20));
                    break;
                }
                if let Ok((StatusCode::OK, _)) =
                    call(http, Method::GET, &url, "/readyz", None).await
                {
                    self.apiserver = Some(proc);
                    self.api_url = url;
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last)
    }

    /// Fails with the API server's log when it has died.
    fn check_alive(&mut self) -> Result<()> {
        for p in [self.etcd.as_mut(), self.apiserver.as_mut()]
            .into_iter()
            .flatten()
        {
            if p.exited() {
                bail!("{} exited during the run\n{}", p.name, p.log_tail(30));
            }
        }
        Ok(())
    }
}

async fn etcd_connect(url: &str) -> Result<etcd_client::Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    etcd_client::Client::connect([url], Some(opts))
        .await
        .with_context(|| format!("connect to etcd at {url}"))
}

// ---------------------------------------------------------------------------
// HTTP

type Http = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(conn)
}

fn build_request(
    method: Method,
    base: &str,
    path: &str,
    body: Option<Bytes>,
) -> Result<Request<Full<Bytes>>> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("accept", "application/json");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    req.body(Full::new(body.unwrap_or_default()))
        .with_context(|| format!("build a request for {path}"))
}

/// Sends one request and reads the whole response.
async fn call(
    http: &Http,
    method: Method,
    base: &str,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes)> {
    let req = build_request(method.clone(), base, path, body)?;
    let resp = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = http.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .map_err(|_| anyhow!("{method} {path}: no response after 30 s"))?
    .with_context(|| format!("{method} {path}"))?;
    Ok(resp)
}

/// Sends one request and fails unless it gets `want`.
async fn expect(
    http: &Http,
    method: Method,
    base: &str,
    path: &str,
    body: Option<Bytes>,
    want: StatusCode,
) -> Result<Bytes> {
    let (status, body) = call(http, method.clone(), base, path, body).await?;
    if status != want {
        let text = String::from_utf8_lossy(&body);
        bail!(
            "{method} {path}: {status} (wanted {want}): {}",
            text.chars().take(300).collect::<String>()
        );
    }
    Ok(body)
}

fn configmap(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "data": {"greeting": "hello", "count": "1"},
        })
        .to_string(),
    )
}

async fn create_configmap(http: &Http, base: &str, ns: &str, name: &str) -> Result<()> {
    expect(
        http,
        Method::POST,
        base,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        Some(configmap(name)),
        StatusCode::CREATED,
    )
    .await
    .map(|_| ())
}

// ---------------------------------------------------------------------------
// Measurement

/// One row of the table.
struct Row {
    op: String,
    concurrency: String,
    /// Latencies of the successful operations.
    lat: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
}

impl Row {
    fn ops_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.lat.len() as f64 / s
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile, in ms; `lat` must be sorted.
    fn pct(&self, p: f64) -> Option<f64> {
        if self.lat.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.lat.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.lat.len()) - 1;
        Some(self.lat[i].as_secs_f64() * 1000.0)
    }

    fn finish(mut self) -> Self {
        self.lat.sort_unstable();
        self
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into())
}

/// Collects latencies and errors from concurrent tasks.
#[derive(Default)]
struct Sink {
    lat: Mutex<Vec<Duration>>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Sink {
    fn record(&self, r: Result<()>, took: Duration) {
        match r {
            Ok(()) => lock(&self.lat).push(took),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut first = lock(&self.first_error);
                if first.is_none() {
                    *first = Some(format!("{e:#}"));
                }
            }
        }
    }

    fn into_row(self, op: &str, concurrency: String, elapsed: Duration) -> Row {
        Row {
            op: op.into(),
            concurrency,
            lat: self.lat.into_inner().unwrap_or_else(|p| p.into_inner()),
            elapsed,
            errors: self.errors.into_inner(),
            first_error: self
                .first_error
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        }
        .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `op(worker, seq)` in `concurrency` loops for `duration`, each loop
/// waiting for one operation before starting the next.
async fn closed_loop<F, Fut>(
    op_name: &str,
    concurrency: usize,
    duration: Duration,
    op: F,
) -> Result<Row>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    eprintln!("  {op_name}: {concurrency} clients for {duration:?}");
    let sink = Arc::new(Sink::default());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (op, sink) = (op.clone(), sink.clone());
        tasks.spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = op(w, seq).await;
                sink.record(r, t.elapsed());
                seq += 1;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a benchmark client panicked")?;
    }
    let elapsed = start.elapsed();
    let sink = Arc::into_inner(sink).ok_or_else(|| anyhow!("results still shared"))?;
    check_row(sink.into_row(op_name, concurrency.to_string(), elapsed))
}

/// Starts `op(seq)` at `rate` per second for `duration` whether or not
/// earlier ones have finished (open loop), and waits for all of them.
async fn open_loop<F, Fut>(op_name: &str, rate: f64, duration: Duration, op: F) -> Result<Row>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    eprintln!("  {op_name}: {total} operations at {rate}/s");
    let sink = Arc::new(Sink::default());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    let mut max_lag = Duration::ZERO;
    for seq in 0..total {
        let at = start + Duration::from_secs_f64(seq as f64 / rate);
        tokio::time::sleep_until(at).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(at));
        let (op, sink, in_flight, max_in_flight) = (
            op.clone(),
            sink.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
        );
        tasks.spawn(async move {
            let n = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            max_in_flight.fetch_max(n, Ordering::Relaxed);
            let t = Instant::now();
            let r = op(seq).await;
            sink.record(r, t.elapsed());
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let issued = start.elapsed();
    while let Some(r) = tasks.join_next().await {
        r.context("a benchmark client panicked")?;
    }
    let elapsed = start.elapsed();
    eprintln!(
        "    issued {total} in {:.2} s (latest start {:.1} ms behind schedule), all done after {:.2} s",
        issued.as_secs_f64(),
        max_lag.as_secs_f64() * 1000.0,
        elapsed.as_secs_f64()
    );
    let sink = Arc::into_inner(sink).ok_or_else(|| anyhow!("results still shared"))?;
    let conc = format!(
        "open loop {rate}/s (≤{} in flight)",
        max_in_flight.load(Ordering::Relaxed)
    );
    check_row(sink.into_row(op_name, conc, elapsed))
}

/// Fails when nothing succeeded; otherwise reports errors and goes on.
fn check_row(row: Row) -> Result<Row> {
    if let Some(e) = &row.first_error {
        if row.lat.is_empty() {
            bail!("{}: every operation failed; first error: {e}", row.op);
        }
        eprintln!("    {} errors; first: {e}", row.errors);
    }
    Ok(row)
}

// ---------------------------------------------------------------------------
// Watch

struct WatchResult {
    /// (event index, when the watcher read it), per watcher.
    seen: Vec<Vec<(usize, Instant)>>,
    /// (sent, response) instants of each create.
    creates: Vec<(Instant, Instant)>,
    ended_early: usize,
    errors: Vec<String>,
}

const WATCH_PREFIX: &str = "bench-watch-";

/// Reads one watch stream, recording when each `bench-watch-<i>` arrives,
/// until it has seen `want` of them or `stop` is set.
async fn read_watch(
    resp: Response<Incoming>,
    want: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(Vec<(usize, Instant)>, bool)> {
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = Vec::with_capacity(want);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => return Ok((seen, false)),
        };
        let Some(frame) = frame else {
            // The server ended the stream before every event arrived.
            return Ok((seen, true));
        };
        let now = Instant::now();
        let frame = frame.context("read a watch stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let ev: Value = serde_json::from_slice(&line).context("a watch event is not JSON")?;
            if ev["type"] == "ERROR" {
                bail!("watch error event: {}", ev["object"]);
            }
            let name = ev["object"]["metadata"]["name"].as_str().unwrap_or("");
            if let Some(i) = name
                .strip_prefix(WATCH_PREFIX)
                .and_then(|i| i.parse::<usize>().ok())
            {
                if ev["type"] == "ADDED" {
                    seen.push((i, now));
                }
            }
        }
        if seen.len() >= want {
            return Ok((seen, false));
        }
    }
}

async fn watch_phase(http: &Http, base: &str, a: &Args) -> Result<WatchResult> {
    // Start from the current revision: no initial list, only new events.
    let list = expect(
        http,
        Method::GET,
        base,
        "/api/v1/namespaces/default/configmaps?limit=1",
        None,
        StatusCode::OK,
    )
    .await?;
    let list: Value = serde_json::from_slice(&list).context("list response is not JSON")?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("list response has no metadata.resourceVersion"))?
        .to_string();

    eprintln!("  opening {} watches at resourceVersion {rv}", a.watchers);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    // Limits connection attempts in flight so the listen backlog never overflows.
    let opening = Arc::new(tokio::sync::Semaphore::new(64));
    let path = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=600"
    );
    let mut watchers = tokio::task::JoinSet::new();
    for _ in 0..a.watchers {
        let (http, base, path) = (http.clone(), base.to_string(), path.clone());
        let (ready, opening, stop) = (ready.clone(), opening.clone(), stop_rx.clone());
        let want = a.watch_events;
        watchers.spawn(async move {
            let opened = async {
                let _permit = opening.acquire().await?;
                let req = build_request(Method::GET, &base, &path, None)?;
                let resp = tokio::time::timeout(Duration::from_secs(30), http.request(req))
                    .await
                    .map_err(|_| anyhow!("watch: no response headers after 30 s"))?
                    .context("open a watch")?;
                ensure!(resp.status() == StatusCode::OK, "watch: {}", resp.status());
                Ok(resp)
            }
            .await;
            // Counted as settled either way; failures are reported at the end.
            ready.add_permits(1);
            read_watch(opened?, want, stop).await
        });
    }
    let opened = Instant::now();
    let all_ready = ready.acquire_many(a.watchers as u32);
    if !matches!(
        tokio::time::timeout(Duration::from_secs(60), all_ready).await,
        Ok(Ok(_))
    ) {
        let _ = stop_tx.send(true);
        bail!("the watches were not all open after 60 s");
    }
    eprintln!(
        "    all open after {:.2} s; creating {} objects at {}/s",
        opened.elapsed().as_secs_f64(),
        a.watch_events,
        a.watch_rate
    );

    let mut creates = Vec::with_capacity(a.watch_events);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.watch_rate));
    for i in 0..a.watch_events {
        tick.tick().await;
        let sent = Instant::now();
        create_configmap(http, base, "default", &format!("{WATCH_PREFIX}{i}")).await?;
        creates.push((sent, Instant::now()));
    }

    // Let the last events arrive, then stop whoever still waits.
    let drain = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(drain);
    let mut seen = Vec::with_capacity(a.watchers);
    let (mut ended_early, mut errors, mut drained) = (0, Vec::new(), false);
    loop {
        tokio::select! {
            _ = &mut drain, if !drained => {
                drained = true;
                let _ = stop_tx.send(true);
            }
            r = watchers.join_next() => match r {
                None => break,
                Some(Ok(Ok((s, early)))) => {
                    ended_early += usize::from(early);
                    seen.push(s);
                }
                Some(Ok(Err(e))) => errors.push(format!("{e:#}")),
                Some(Err(e)) => errors.push(format!("watcher task: {e}")),
            },
        }
    }
    ensure!(
        !seen.is_empty(),
        "every watch failed; first error: {}",
        errors.first().map_or("none", String::as_str)
    );
    Ok(WatchResult {
        seen,
        creates,
        ended_early,
        errors,
    })
}

fn watch_rows(w: &WatchResult, watchers: usize) -> (Row, Row, usize) {
    let mut from_resp = Vec::new();
    let mut from_sent = Vec::new();
    let mut early = 0;
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for s in &w.seen {
        for &(i, at) in s {
            let Some(&(sent, resp)) = w.creates.get(i) else {
                continue;
            };
            if at < resp {
                early += 1;
            }
            from_resp.push(at.saturating_duration_since(resp));
            from_sent.push(at.saturating_duration_since(sent));
            first = Some(first.map_or(sent, |f| f.min(sent)));
            last = Some(last.map_or(at, |l| l.max(at)));
        }
    }
    let elapsed = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };
    let conc = format!("{watchers} watches");
    let mk = |op: &str, lat: Vec<Duration>| {
        Row {
            op: op.into(),
            concurrency: conc.clone(),
            lat,
            elapsed,
            errors: 0,
            first_error: None,
        }
        .finish()
    };
    (
        mk("watch event, from create response", from_resp),
        mk("watch event, from create request", from_sent),
        early,
    )
}

// ---------------------------------------------------------------------------
// The run

/// Makes room for one socket per watch in this process and the API server
/// (which inherits the limit).
fn raise_fd_limit(need: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    ensure!(
        lim.rlim_max >= need,
        "{need} open files are needed but the hard limit is {}; use fewer --watchers",
        lim.rlim_max
    );
    lim.rlim_cur = need as libc::rlim_t;
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}

fn padded_value(size: usize) -> Vec<u8> {
    let skeleton = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "default"}, "data": {"pad": ""}}).to_string();
    let pad = size.saturating_sub(skeleton.len());
    json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "default"}, "data": {"pad": "x".repeat(pad)}})
        .to_string()
        .into_bytes()
}

struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

async fn run(a: &Args, env: &mut Env) -> Result<Report> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let c = a.concurrency;
    let bin = match &a.apiserver_bin {
        Some(b) => b.clone(),
        None => target_dir().join("release").join("control-plane"),
    };
    raise_fd_limit(a.watchers as u64 + c as u64 + 1024)?;

    eprintln!("==> starting etcd and the API server ({})", bin.display());
    let etcd = env.start_etcd(&a.etcd_bin).await?;
    let http = http_client();
    env.start_apiserver(&bin, &http).await?;
    eprintln!("    etcd {}, API server {}", env.etcd_url, env.api_url);
    let base = env.api_url.clone();

    eprintln!("==> raw etcd");
    let value = Arc::new(padded_value(a.value_size));
    {
        let (etcd, value) = (etcd.clone(), value.clone());
        rows.push(
            closed_loop(
                &format!("etcd put ({} B value, distinct keys)", value.len()),
                c,
                a.closed(),
                move |w, i| {
                    let (mut kv, value) = (etcd.kv_client(), value.clone());
                    async move {
                        kv.put(format!("/bench/put/{w}/{i}"), value.as_slice(), None)
                            .await
                            .context("etcd put")?;
                        Ok(())
                    }
                },
            )
            .await?,
        );
    }
    {
        let (etcd, value) = (etcd.clone(), value.clone());
        rows.push(
            closed_loop(
                "etcd get + txn put-if-absent (a create's etcd calls)",
                c,
                a.closed(),
                move |w, i| {
                    let (mut kv, value) = (etcd.kv_client(), value.clone());
                    async move {
                        kv.get("/registry/namespaces/default", None)
                            .await
                            .context("etcd get")?;
                        let key = format!("/bench/txn/{w}/{i}");
                        let txn = Txn::new()
                            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(key.as_str(), value.as_slice(), None)]);
                        let r = kv.txn(txn).await.context("etcd txn")?;
                        ensure!(r.succeeded(), "txn on a fresh key did not succeed");
                        Ok(())
                    }
                },
            )
            .await?,
        );
    }
    {
        let (etcd, value) = (etcd.clone(), value.clone());
        rows.push(
            open_loop(
                &format!("etcd put ({} B value)", value.len()),
                a.rate,
                Duration::from_secs_f64(a.rate_duration),
                move |i| {
                    let (mut kv, value) = (etcd.kv_client(), value.clone());
                    async move {
                        kv.put(format!("/bench/open/{i}"), value.as_slice(), None)
                            .await
                            .context("etcd put")?;
                        Ok(())
                    }
                },
            )
            .await?,
        );
    }
    env.check_alive()?;

    eprintln!("==> API server writes");
    // Open the pool's connections before measuring.
    let mut warm = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (http, base) = (http.clone(), base.clone());
        warm.spawn(async move {
            expect(&http, Method::GET, &base, "/version", None, StatusCode::OK).await
        });
    }
    while let Some(r) = warm.join_next().await {
        r.context("warm-up task")??;
    }
    {
        let (http, base) = (http.clone(), base.clone());
        rows.push(
            closed_loop("apiserver create configmap", c, a.closed(), move |w, i| {
                let (http, base) = (http.clone(), base.clone());
                async move {
                    create_configmap(&http, &base, "default", &format!("bench-c-{w}-{i}")).await
                }
            })
            .await?,
        );
    }
    {
        let (http, base) = (http.clone(), base.clone());
        rows.push(
            open_loop(
                "apiserver create configmap",
                a.rate,
                Duration::from_secs_f64(a.rate_duration),
                move |i| {
                    let (http, base) = (http.clone(), base.clone());
                    async move {
                        create_configmap(&http, &base, "default", &format!("bench-o-{i}")).await
                    }
                },
            )
            .await?,
        );
    }
    env.check_alive()?;

    eprintln!("==> API server reads");
    let ns = "bench-list";
    expect(
        &http,
        Method::POST,
        &base,
        "/api/v1/namespaces",
        Some(Bytes::from(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string(),
        )),
        StatusCode::CREATED,
    )
    .await?;
    eprintln!(
        "  filling namespace {ns} with {} configmaps",
        a.list_objects
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut fill = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (http, base, next, n) = (http.clone(), base.clone(), next.clone(), a.list_objects);
        fill.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                create_configmap(&http, &base, ns, &format!("obj-{i}")).await?;
            }
        });
    }
    while let Some(r) = fill.join_next().await {
        r.context("fill task")?
            .context("filling the list namespace")?;
    }
    {
        let (http, base, n) = (http.clone(), base.clone(), a.list_objects as u64);
        rows.push(
            closed_loop("apiserver get configmap", c, a.closed(), move |w, i| {
                let (http, base) = (http.clone(), base.clone());
                let k = (w as u64 * 7919 + i * 31) % n;
                async move {
                    expect(
                        &http,
                        Method::GET,
                        &base,
                        &format!("/api/v1/namespaces/{ns}/configmaps/obj-{k}"),
                        None,
                        StatusCode::OK,
                    )
                    .await
                    .map(|_| ())
                }
            })
            .await?,
        );
    }
    let list_path = format!("/api/v1/namespaces/{ns}/configmaps");
    let body = expect(&http, Method::GET, &base, &list_path, None, StatusCode::OK).await?;
    let list: Value = serde_json::from_slice(&body).context("list response is not JSON")?;
    let items = list["items"].as_array().map_or(0, Vec::len);
    ensure!(
        items == a.list_objects,
        "the list returned {items} items, wanted {}",
        a.list_objects
    );
    notes.push(format!(
        "A list returns {items} configmaps, {} KiB of JSON.",
        body.len() / 1024
    ));
    {
        let (http, base) = (http.clone(), base.clone());
        rows.push(
            closed_loop(
                &format!("apiserver list {items} configmaps"),
                c,
                a.closed(),
                move |_, _| {
                    let (http, base, path) = (http.clone(), base.clone(), list_path.clone());
                    async move {
                        expect(&http, Method::GET, &base, &path, None, StatusCode::OK)
                            .await
                            .map(|_| ())
                    }
                },
            )
            .await?,
        );
    }
    env.check_alive()?;

    if a.watchers > 0 && a.watch_events > 0 {
        eprintln!("==> watch delivery");
        let w = watch_phase(&http, &base, a).await?;
        let (from_resp, from_sent, early) = watch_rows(&w, a.watchers);
        let want = a.watchers * a.watch_events;
        notes.push(format!(
            "Watch: {} of {want} watcher×event pairs delivered ({:.1} %); {early} arrived before \
             the create's response (counted as 0 ms from the response); {} streams ended early; \
             {} watches failed{}.",
            from_resp.lat.len(),
            100.0 * from_resp.lat.len() as f64 / want as f64,
            w.ended_early,
            w.errors.len(),
            w.errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ));
        rows.push(from_resp);
        rows.push(from_sent);
        env.check_alive()?;
    }
    Ok(Report { rows, notes })
}

fn render(a: &Args, report: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "| operation | concurrency | count | ops/s | p50 ms | p90 ms | p99 ms | errors |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |\n",
            r.op,
            r.concurrency,
            r.lat.len(),
            r.ops_per_sec(),
            ms(r.pct(50.0)),
            ms(r.pct(90.0)),
            ms(r.pct(99.0)),
            r.errors
        ));
    }
    out.push('\n');
    let find = |prefix: &str, open: bool| {
        report
            .rows
            .iter()
            .find(|r| r.op.starts_with(prefix) && r.concurrency.starts_with("open") == open)
    };
    let ratio = |x: Option<&Row>, y: Option<&Row>, p: f64| match (
        x.and_then(|r| r.pct(p)),
        y.and_then(|r| r.pct(p)),
    ) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}×", x / y),
        _ => "–".into(),
    };
    let (etcd_c, api_c) = (find("etcd put", false), find("apiserver create", false));
    out.push_str(&format!(
        "Ratios, apiserver create ÷ etcd put at {} clients: p50 {}, p99 {}.\n",
        a.concurrency,
        ratio(api_c, etcd_c, 50.0),
        ratio(api_c, etcd_c, 99.0)
    ));
    let (etcd_o, api_o) = (find("etcd put", true), find("apiserver create", true));
    out.push_str(&format!(
        "Ratios, apiserver create ÷ etcd put, open loop at {}/s: p50 {}, p99 {}.\n",
        a.rate,
        ratio(api_o, etcd_o, 50.0),
        ratio(api_o, etcd_o, 99.0)
    ));
    for n in &report.notes {
        out.push_str(&format!("\n{n}\n"));
    }
    out.push_str(&format!(
        "\nClosed-loop phases ran {} s each, open-loop runs {} s; {} CPUs; everything on 127.0.0.1.\n",
        a.duration,
        a.rate_duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    out
}

async fn main_inner(a: Args) -> Result<()> {
    a.check()?;
    let out_path = a
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench").join("apiserver.md"));
    let mut env = Env::new()?;
    let started = Instant::now();
    let result = tokio::select! {
        r = run(&a, &mut env) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // Stop both and remove the directory before reporting.
    drop(env);
    let report = result?;
    let md = render(&a, &report);
    println!("{md}");
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out_path, &md).with_context(|| format!("write {}", out_path.display()))?;
    eprintln!(
        "==> done in {:.1} s; table written to {}",
        started.elapsed().as_secs_f64(),
        out_path.display()
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(main_inner(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
