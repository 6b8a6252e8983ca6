//! The measurements themselves: iperf3 and `netperf-rr` between the two
//! ends of a [`Pair`], and the reachability check before them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::cpu::{clock_ticks, cpu_hz, softirq_thread_ticks};
use super::exec::{in_ns, pin, run_bounded, wait_listening};
use super::session::check_interrupted;
use super::{Crr, Metric, Pair, Sample, IPERF_PORT, PARALLEL_STREAMS, RR_PORT};
use crate::process::Guarded;

/// Runs the measurements of one kind on a path.
pub struct Runner {
    /// The `netperf-rr` binary.
    pub rr_bin: PathBuf,
    /// Seconds each measurement runs.
    pub duration: u64,
    /// The CPU of both ends of TCP_RR and TCP_CRR ([`rr_cpu`](super::rr_cpu)); None
    /// leaves them to the scheduler, like iperf3, whose ends run best on
    /// whichever CPUs are free.
    pub rr_cpu: Option<usize>,
}

impl Runner {
    /// One measurement of `metric` on `path`, in its unit (Gbit/s or
    /// transactions/s).
    pub fn measure(&self, metric: Metric, path: &Pair) -> Result<f64> {
        Ok(self.sample(metric, path)?.value)
    }

    /// One measurement of `metric` on `path`, with its CPU cost (bulk
    /// transfers) or tail latency (TCP_RR).
    pub fn sample(&self, metric: Metric, path: &Pair) -> Result<Sample> {
        let field = |v: &serde_json::Value, name: &str| {
            v[name]
                .as_f64()
                .with_context(|| format!("no {name} in {v}"))
        };
        match metric {
            Metric::Throughput => self.iperf3(path, 1, false),
            Metric::Streams => self.iperf3(path, PARALLEL_STREAMS, false),
            Metric::Udp => self.iperf3(path, 1, true),
            Metric::Rr => {
                let v = self.rr(path, "rr")?;
                Ok(Sample {
                    value: field(&v, "per_second")?,
                    p99_us: Some(field(&v, "rr_p99_us")?),
                    ..Sample::default()
                })
            }
            Metric::Crr => Ok(Sample {
                value: field(&self.rr(path, "crr")?, "per_second")?,
                ..Sample::default()
            }),
        }
    }

    /// TCP_CRR on `path` with its connect() latencies.
    pub fn crr(&self, path: &Pair) -> Result<Crr> {
        let v = self.rr(path, "crr")?;
        let field = |name: &str| {
            v[name]
                .as_f64()
                .with_context(|| format!("no {name} in {v}"))
        };
        Ok(Crr {
            per_second: field("per_second")?,
            connect_p50_us: field("connect_p50_us")?,
            connect_p99_us: field("connect_p99_us")?,
        })
    }

    /// The longest a measurement may take before it is killed.
    fn bound(&self) -> Duration {
        Duration::from_secs(self.duration + 20)
    }

    fn iperf3(&self, path: &Pair, streams: u32, udp: bool) -> Result<Sample> {
        let ip = path.server_ip.to_string();
        let port = IPERF_PORT.to_string();
        let mut server = Command::new("iperf3");
        // -1: the server serves one test and exits.
        server
            .args(["-s", "-1", "-B", &ip, "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        in_ns(&mut server, &path.server_ns)?;
        let _server = Guarded::spawn("iperf3 server", &mut server)?;
        wait_listening(&path.server_ns, IPERF_PORT, Duration::from_secs(5))?;
        let mut client = Command::new("iperf3");
        let target = path.target().to_string();
        // One second of warm-up (slow start, first allocations) is left out.
        client.args([
            "-c",
            &target,
            "-p",
            &port,
            "-t",
            &self.duration.to_string(),
            "-O",
            "1",
            "-P",
            &streams.to_string(),
            "-J",
        ]);
        if udp {
            // No rate limit: as fast as the sender goes; what arrives counts.
            client.args(["-u", "-b", "0"]);
        }
        path.client(&mut client)?;
        let softirq0 = softirq_thread_ticks();
        let t0 = Instant::now();
        let out = run_bounded(&mut client, None, self.bound())?;
        let wall = t0.elapsed().as_secs_f64();
        let softirq = softirq_thread_ticks().saturating_sub(softirq0) as f64 / clock_ticks();
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3's JSON report")?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("no end.sum_received in iperf3's report: {v}"))?;
        let gbps = bps / 1e9;
        // iperf3 reports each end's CPU time (user and system, which holds
        // the softirq work done on its behalf) as a share of the wall
        // time; work deferred to ksoftirqd is added from /proc.
        let cpu = &v["end"]["cpu_utilization_percent"];
        let busy = match (cpu["host_total"].as_f64(), cpu["remote_total"].as_f64()) {
            (Some(h), Some(r)) => Some((h + r) / 100.0 + softirq / wall.max(1e-3)),
            _ => None,
        };
        Ok(Sample {
            value: gbps,
            mcycles_per_gbit: busy
                .zip(cpu_hz())
                .filter(|_| gbps > 0.0)
                .map(|(b, hz)| b * hz / gbps / 1e6),
            p99_us: None,
        })
    }

    fn rr(&self, path: &Pair, mode: &str) -> Result<serde_json::Value> {
        let addr = format!("{}:{RR_PORT}", path.server_ip);
        let target = format!("{}:{RR_PORT}", path.target());
        let mut server = Command::new(&self.rr_bin);
        server
            .args(["server", "--listen", &addr, "--max-seconds"])
            .arg(format!("{}", self.bound().as_secs()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        in_ns(&mut server, &path.server_ns)?;
        if let Some(cpu) = self.rr_cpu {
            pin(&mut server, cpu);
        }
        let _server = Guarded::spawn("netperf-rr server", &mut server)?;
        wait_listening(&path.server_ns, RR_PORT, Duration::from_secs(5))?;
        let mut client = Command::new(&self.rr_bin);
        client
            .args(["client", "--connect", &target, "--mode", mode, "--duration"])
            .arg(self.duration.to_string());
        path.client(&mut client)?;
        if let Some(cpu) = self.rr_cpu {
            pin(&mut client, cpu);
        }
        let out = run_bounded(&mut client, None, self.bound())?;
        serde_json::from_str(out.trim()).context("netperf-rr's JSON line")
    }
}

/// Waits until the client reaches the server (routes between nodes are
/// learnt from Node objects a moment after the pods run).
pub fn reachable(pair: &Pair) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_interrupted()?;
        let mut ping = Command::new("ping");
        ping.args(["-c", "1", "-W", "1"])
            .arg(pair.server_ip.to_string());
        in_ns(&mut ping, &pair.client_ns)?;
        match run_bounded(&mut ping, None, Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{} is unreachable", pair.server_ip)))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
