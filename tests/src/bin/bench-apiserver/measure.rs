//! The two ways a phase drives load (a closed loop of clients, an open
//! loop at a fixed rate) and the row of latencies each yields.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use harness::benchkit::{CpuUse, Env};

/// One row of the table.
pub(crate) struct Row {
    pub(crate) op: String,
    pub(crate) concurrency: String,
    /// Latencies of the successful operations.
    pub(crate) lat: Vec<Duration>,
    pub(crate) elapsed: Duration,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// CPU the processes used during the phase.
    pub(crate) cpu: Option<CpuUse>,
}

impl Row {
    pub(crate) fn ops_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.lat.len() as f64 / s
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile, in ms; `lat` must be sorted.
    pub(crate) fn pct(&self, p: f64) -> Option<f64> {
        if self.lat.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.lat.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.lat.len()) - 1;
        Some(self.lat[i].as_secs_f64() * 1000.0)
    }

    pub(crate) fn finish(mut self) -> Self {
        self.lat.sort_unstable();
        self
    }
}

pub(crate) fn ms(v: Option<f64>) -> String {
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
pub(crate) async fn closed_loop<F, Fut>(
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
pub(crate) async fn open_loop<F, Fut>(
    op_name: &str,
    rate: f64,
    duration: Duration,
    op: F,
) -> Result<Row>
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

/// Runs a phase, noting the CPU each process used meanwhile.
pub(crate) async fn measured(
    env: &mut Env,
    phase: impl Future<Output = Result<Row>>,
) -> Result<Row> {
    let t0 = Instant::now();
    let before = env.cpu(t0);
    let mut row = phase.await?;
    row.cpu = Some(env.cpu(t0).minus(before));
    env.check_alive()?;
    Ok(row)
}
