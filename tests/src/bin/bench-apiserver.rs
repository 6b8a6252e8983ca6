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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use clap::Parser;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use harness::benchkit::{build_request, expect, http_client, target_dir, CpuUse, Env, Http};

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
    /// Watches open during the watch phase (0 skips it).
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
            "--value-size must be from 2 B to 16 MiB"
        );
        Ok(())
    }

    fn closed(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }
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
    /// CPU the processes used during the phase.
    cpu: Option<CpuUse>,
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
            cpu: None,
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

/// Pause between the last watch opening and the first create.
const SETTLE: Duration = Duration::from_millis(200);

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
    // Measure steady delivery, not a stream's first write: the server does
    // not set TCP_NODELAY, so an event written while the response headers
    // still wait for the client's delayed ACK is held back up to ~40 ms.
    tokio::time::sleep(SETTLE).await;

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
            cpu: None,
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
    let open = Duration::from_secs_f64(a.rate_duration);
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

    eprintln!("==> raw etcd (keys outside /registry/, so the API server's watch ignores them)");
    let value = Arc::new(padded_value(a.value_size));
    let vlen = value.len();
    // One shared client (one HTTP/2 connection), as in the API server.
    let kv = {
        let (etcd, value) = (etcd.clone(), value.clone());
        move || (etcd.kv_client(), value.clone())
    };
    let put = {
        let kv = kv.clone();
        move |key: String| {
            let (mut kv, value) = kv();
            async move {
                kv.put(key, value.as_slice(), None)
                    .await
                    .context("etcd put")?;
                Ok(())
            }
        }
    };
    // What the API server's create does: read the namespace, then write
    // the object only if its key does not exist.
    let get_txn = {
        let kv = kv.clone();
        move |key: String, get: Option<GetOptions>| {
            let (mut kv, value) = kv();
            async move {
                if let Some(opts) = get {
                    kv.get("/registry/namespaces/default", Some(opts))
                        .await
                        .context("etcd get")?;
                }
                let txn = Txn::new()
                    .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), value.as_slice(), None)]);
                let r = kv.txn(txn).await.context("etcd txn")?;
                ensure!(r.succeeded(), "txn on a fresh key did not succeed");
                Ok(())
            }
        }
    };
    {
        let put = put.clone();
        let op = format!("etcd put ({vlen} B value, distinct keys)");
        rows.push(
            measured(
                env,
                closed_loop(&op, c, a.closed(), move |w, i| {
                    put(format!("/bench/put/{w}/{i}"))
                }),
            )
            .await?,
        );
    }
    {
        let get_txn = get_txn.clone();
        let op = format!("etcd txn put-if-absent ({vlen} B)");
        rows.push(
            measured(
                env,
                closed_loop(&op, c, a.closed(), move |w, i| {
                    get_txn(format!("/bench/txn/{w}/{i}"), None)
                }),
            )
            .await?,
        );
    }
    {
        let get_txn = get_txn.clone();
        let op = "etcd get + txn put-if-absent (a create's etcd calls)";
        rows.push(
            measured(
                env,
                closed_loop(op, c, a.closed(), move |w, i| {
                    get_txn(format!("/bench/gettxn/{w}/{i}"), Some(GetOptions::new()))
                }),
            )
            .await?,
        );
    }
    {
        let get_txn = get_txn.clone();
        let op = "etcd serializable get + txn put-if-absent";
        rows.push(
            measured(
                env,
                closed_loop(op, c, a.closed(), move |w, i| {
                    get_txn(
                        format!("/bench/sgettxn/{w}/{i}"),
                        Some(GetOptions::new().with_serializable()),
                    )
                }),
            )
            .await?,
        );
    }
    {
        let op = format!("etcd put ({vlen} B value)");
        rows.push(
            measured(
                env,
                open_loop(&op, a.rate, open, move |i| put(format!("/bench/open/{i}"))),
            )
            .await?,
        );
    }
    {
        let op = "etcd get + txn put-if-absent";
        rows.push(
            measured(
                env,
                open_loop(op, a.rate, open, move |i| {
                    get_txn(format!("/bench/opengettxn/{i}"), Some(GetOptions::new()))
                }),
            )
            .await?,
        );
    }

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
    let create = {
        let (http, base) = (http.clone(), base.clone());
        move |name: String| {
            let (http, base) = (http.clone(), base.clone());
            async move { create_configmap(&http, &base, "default", &name).await }
        }
    };
    {
        let create = create.clone();
        rows.push(
            measured(
                env,
                closed_loop("apiserver create configmap", c, a.closed(), move |w, i| {
                    create(format!("bench-c-{w}-{i}"))
                }),
            )
            .await?,
        );
    }
    rows.push(
        measured(
            env,
            open_loop("apiserver create configmap", a.rate, open, move |i| {
                create(format!("bench-o-{i}"))
            }),
        )
        .await?,
    );

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
    let fetch = {
        let (http, base) = (http.clone(), base.clone());
        move |path: String| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                expect(&http, Method::GET, &base, &path, None, StatusCode::OK)
                    .await
                    .map(|_| ())
            }
        }
    };
    {
        let (fetch, n) = (fetch.clone(), a.list_objects as u64);
        rows.push(
            measured(
                env,
                closed_loop("apiserver get configmap", c, a.closed(), move |w, i| {
                    let k = (w as u64 * 7919 + i * 31) % n;
                    fetch(format!("/api/v1/namespaces/{ns}/configmaps/obj-{k}"))
                }),
            )
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
    rows.push(
        measured(
            env,
            closed_loop(
                &format!("apiserver list {items} configmaps"),
                c,
                a.closed(),
                move |_, _| fetch(list_path.clone()),
            ),
        )
        .await?,
    );

    if a.watchers > 0 && a.watch_events > 0 {
        eprintln!("==> watch delivery");
        let t0 = Instant::now();
        let before = env.cpu(t0);
        let w = watch_phase(&http, &base, a).await?;
        let cpu = env.cpu(t0).minus(before);
        env.check_alive()?;
        let (mut from_resp, from_sent, early) = watch_rows(&w, a.watchers);
        from_resp.cpu = Some(cpu);
        let want = a.watchers * a.watch_events;
        notes.push(format!(
            "Watch: {} of {want} watcher×event pairs delivered ({:.1} %); {early} arrived before \
             the create's response (counted as 0 ms from the response); {} streams ended early; \
             {} watches failed{}. The first create came {} ms after the last watch opened; the CPU \
             figures include opening the watches.",
            from_resp.lat.len(),
            100.0 * from_resp.lat.len() as f64 / want as f64,
            w.ended_early,
            w.errors.len(),
            w.errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            SETTLE.as_millis()
        ));
        rows.push(from_resp);
        rows.push(from_sent);
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
    let gt_o = find("etcd get + txn", true);
    out.push_str(&format!(
        "Ratios, apiserver create ÷ etcd get + txn (its own etcd calls), open loop at {}/s: p50 {}, p99 {}.\n",
        a.rate,
        ratio(api_o, gt_o, 50.0),
        ratio(api_o, gt_o, 99.0)
    ));
    for n in &report.notes {
        out.push_str(&format!("\n{n}\n"));
    }
    out.push_str(
        "\nCPU per operation (µs) while each phase ran, the cores the three processes kept \
         busy, and the share of time some task on the machine waited for a CPU \
         (/proc/pressure/cpu):\n\n",
    );
    out.push_str(
        "| operation | concurrency | etcd | apiserver | bench client | cores busy | CPU wait % |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for r in &report.rows {
        let Some(cpu) = r.cpu else { continue };
        let n = r.lat.len().max(1) as f64;
        let per = |s: f64| format!("{:.0}", s * 1e6 / n);
        let cores = |s: f64| {
            if cpu.wall > 0.0 {
                format!("{:.2}", s / cpu.wall)
            } else {
                "–".into()
            }
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.op,
            r.concurrency,
            per(cpu.etcd),
            per(cpu.apiserver),
            per(cpu.bench),
            cores(cpu.etcd + cpu.apiserver + cpu.bench),
            if cpu.wall > 0.0 {
                format!("{:.0}", 100.0 * cpu.stalled / cpu.wall)
            } else {
                "–".into()
            }
        ));
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

/// Runs a phase, noting the CPU each process used meanwhile.
async fn measured(env: &mut Env, phase: impl Future<Output = Result<Row>>) -> Result<Row> {
    let t0 = Instant::now();
    let before = env.cpu(t0);
    let mut row = phase.await?;
    row.cpu = Some(env.cpu(t0).minus(before));
    env.check_alive()?;
    Ok(row)
}
