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

mod measure;
mod report;
mod run;
mod watch;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use clap::Parser;

use harness::benchkit::{target_dir, Env};

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

async fn main_inner(a: Args) -> Result<()> {
    a.check()?;
    let out_path = a
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench").join("apiserver.md"));
    let mut env = Env::new()?;
    let started = Instant::now();
    let result = tokio::select! {
        r = run::run(&a, &mut env) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // Stop both and remove the directory before reporting.
    drop(env);
    let report = result?;
    let md = report::render(&a, &report);
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
