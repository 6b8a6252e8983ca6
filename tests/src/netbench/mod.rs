//! What `bench-net` measures with: iperf3 and `netperf-rr` started inside
//! a given network namespace (a harness [`Netns`](crate::net::Netns) or a
//! pod's bind-mounted one), each run bounded in time, and the reference
//! datapath built with Debian's CNI `bridge` plugin; and the checks around
//! them (reachability, how busy the machine is).
//!
//! Measuring processes run in the pod's network namespace but not in its
//! container: they cross exactly the links a containerised client would
//! (pod `eth0`, its veth, the programs or bridge behind it), without an
//! image that carries iperf3.

pub mod bridge_cni;
pub mod chart;
mod cpu;
mod exec;
pub mod kube_proxy;
pub mod kube_router;
mod runner;
mod session;
pub mod testbed;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

pub use cpu::{background_busy, cpu_hz};
pub use exec::{in_ns, on_ns_thread, rr_cpu, run_bounded, tune_client, wait_listening};
pub use runner::{reachable, Runner};
pub use session::{catch_interrupts, check_interrupted, interrupted, StdoutToStderr};

/// TCP port of the iperf3 server.
pub const IPERF_PORT: u16 = 5201;
/// TCP port of the `netperf-rr` server.
pub const RR_PORT: u16 = 7001;

/// What is measured on each path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// iperf3, one TCP stream, Gbit/s.
    Throughput,
    /// iperf3, eight TCP streams at once, Gbit/s in all.
    Streams,
    /// iperf3, one UDP stream sent as fast as it goes, Gbit/s received.
    Udp,
    /// 1-byte request/response on one connection, transactions/s.
    Rr,
    /// connect, 1-byte request/response, close, transactions/s.
    Crr,
}

/// TCP streams of [`Metric::Streams`].
pub const PARALLEL_STREAMS: u32 = 8;

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Throughput,
        Metric::Streams,
        Metric::Udp,
        Metric::Rr,
        Metric::Crr,
    ];

    /// Column heading with its unit.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Throughput => "TCP throughput, Gbit/s",
            Metric::Streams => "8 TCP streams, Gbit/s",
            Metric::Udp => "UDP received, Gbit/s",
            Metric::Rr => "TCP_RR, transactions/s",
            Metric::Crr => "TCP_CRR, transactions/s",
        }
    }

    /// Whether the metric moves bits in bulk, so that its CPU cost per
    /// gigabit means something.
    pub fn is_bulk(self) -> bool {
        matches!(self, Metric::Throughput | Metric::Streams | Metric::Udp)
    }
}

/// One measurement: its value in the metric's unit and what came with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub value: f64,
    /// Bulk transfers: CPU cycles spent per gigabit moved, from the CPU
    /// time of both iperf3 processes and of the softirq threads.
    pub mcycles_per_gbit: Option<f64>,
    /// TCP_RR: the 99th percentile of a transaction, microseconds.
    pub p99_us: Option<f64>,
}

/// One measured path: a client's namespace, and a server's namespace and address.
#[derive(Clone, Debug)]
pub struct Pair {
    pub client_ns: PathBuf,
    pub server_ns: PathBuf,
    pub server_ip: Ipv4Addr,
    /// Where the client connects, when not to the server's own address (a
    /// service address in front of it, on the same ports).
    pub connect_ip: Option<Ipv4Addr>,
    /// A cgroup v2 directory the client runs in (where socket programs
    /// attach).
    pub client_cgroup: Option<PathBuf>,
}

impl Pair {
    pub fn new(client_ns: PathBuf, server_ns: PathBuf, server_ip: Ipv4Addr) -> Self {
        Self {
            client_ns,
            server_ns,
            server_ip,
            connect_ip: None,
            client_cgroup: None,
        }
    }

    /// The address the client connects to.
    pub fn target(&self) -> Ipv4Addr {
        self.connect_ip.unwrap_or(self.server_ip)
    }

    /// Makes `cmd` a client of this path: in its namespace and cgroup.
    fn client(&self, cmd: &mut Command) -> Result<()> {
        in_ns(cmd, &self.client_ns)?;
        if let Some(dir) = &self.client_cgroup {
            exec::join_cgroup(cmd, dir)?;
        }
        Ok(())
    }
}

/// One TCP_CRR run: its rate and how long its connect() calls took.
#[derive(Clone, Copy, Debug)]
pub struct Crr {
    pub per_second: f64,
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The median over samples of one of their numbers.
pub fn median_of<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&v.iter().map(f).collect::<Vec<_>>())
}

/// The median over rounds of `num ÷ den` within each round.
pub fn median_ratio<T>(num: &[T], den: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(
        &num.iter()
            .zip(den)
            .map(|(n, d)| f(n) / f(d))
            .collect::<Vec<_>>(),
    )
}

/// A kube-rs client of the control plane's API server.
pub fn kube_client(cp: &crate::cluster::ControlPlane) -> Result<kube::Client> {
    Ok(kube::Client::try_from(kube::Config::new(
        cp.url().parse()?,
    ))?)
}

/// `given`, or else the directory of this program (where `cargo xtask
/// bench` builds the release binaries), made the directory the harness
/// starts agents and the control plane from. It sets an environment
/// variable, so call it before any thread exists.
pub fn use_bin_dir(given: Option<&Path>) -> Result<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("the program's directory")?,
    };
    std::env::set_var("KESTREL_BIN_DIR", &dir);
    Ok(dir)
}
