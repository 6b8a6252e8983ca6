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
pub mod kube_proxy;
pub mod kube_router;
pub mod testbed;

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::process::Guarded;

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
            join_cgroup(cmd, dir)?;
        }
        Ok(())
    }
}

/// Makes `cmd` start in the cgroup v2 directory `dir`.
fn join_cgroup(cmd: &mut Command, dir: &Path) -> Result<()> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .with_context(|| format!("open {}/cgroup.procs", dir.display()))?;
    let fd: OwnedFd = procs.into();
    // SAFETY: write(2) is async-signal-safe; "0" moves the writing process
    // itself. The Command keeps the fd alive in the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// One TCP_CRR run: its rate and how long its connect() calls took.
#[derive(Clone, Copy, Debug)]
pub struct Crr {
    pub per_second: f64,
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
}

/// Makes `cmd` run in the network namespace at `ns` (a /run/netns entry or
/// a bind-mounted nsfs file); the mount namespace stays ours, so such bind
/// mounts stay reachable.
pub fn in_ns(cmd: &mut Command, ns: &Path) -> Result<()> {
    let fd: OwnedFd = std::fs::File::open(ns)
        .with_context(|| format!("open the network namespace {}", ns.display()))?
        .into();
    // SAFETY: setns is async-signal-safe; the Command keeps the fd alive in
    // the closure until it is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The CPU request/response runs pin both their ends to: the last one
/// this process may run on, or None with fewer than two (nothing else
/// would be left for the rest of the testbed).
///
/// On one CPU a transaction costs the CPU time of both stacks and the path
/// between them. With the ends on two CPUs of a VM, each message waits for
/// the other idle vCPU to wake, which costs more than any path and makes
/// every path look alike; whether it waits depends on what else the
/// machine runs at that moment.
pub fn rr_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: a valid buffer of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return None;
    }
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: i is below CPU_SETSIZE.
        .filter(|i| unsafe { libc::CPU_ISSET(*i, &set) })
        .collect();
    (allowed.len() >= 2).then(|| allowed[allowed.len() - 1])
}

/// Makes `cmd` run on CPU `cpu` only.
fn pin(cmd: &mut Command, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu is below CPU_SETSIZE (rr_cpu found it with CPU_ISSET).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity is async-signal-safe; the set is copied
    // into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `f` on a short-lived thread that has entered the namespace at `ns`
/// (setns moves only the calling thread, so ours stays where it is).
pub fn on_ns_thread<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        crate::forward::enter(&ns)
            .with_context(|| format!("enter the network namespace {}", ns.display()))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a namespace thread panicked"))?
}

/// Lets one client namespace open tens of thousands of short connections a
/// second (TCP_CRR): the whole port range, and reuse of ports in TIME_WAIT.
/// Both are per-namespace settings.
pub fn tune_client(ns: &Path) -> Result<()> {
    on_ns_thread(ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        Ok(())
    })
}

/// Waits until something listens on TCP `port` in the namespace at `ns`
/// (read from its /proc/net/tcp, so the server sees no probe connection).
pub fn wait_listening(ns: &Path, port: u16, timeout: Duration) -> Result<()> {
    let want = format!(":{port:04X}");
    on_ns_thread(ns, move || {
        let deadline = Instant::now() + timeout;
        loop {
            // thread-self: /proc/self/net would show the main thread's namespace.
            let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
            let listening = tcp.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
            });
            if listening {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nothing listens on port {port} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Runs `cmd` to its end, with `input` on its stdin, and returns its
/// stdout; kills it after `timeout`.
pub fn run_bounded(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        // Small enough for the pipe's buffer; dropping stdin sends EOF.
        stdin.write_all(input.as_bytes())?;
    }
    let mut stdout = child.stdout.take().context("piped stdout")?;
    let mut stderr = child.stderr.take().context("piped stderr")?;
    // Readers on their own threads: a full pipe would stall the child.
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{:?} still ran after {timeout:?}", cmd.get_program());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    ensure!(
        status.success(),
        "{:?} {:?} failed ({status}): {}{}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        err.trim(),
        out.chars().take(500).collect::<String>()
    );
    Ok(out)
}

/// Runs the measurements of one kind on a path.
pub struct Runner {
    /// The `netperf-rr` binary.
    pub rr_bin: PathBuf,
    /// Seconds each measurement runs.
    pub duration: u64,
    /// The CPU of both ends of TCP_RR and TCP_CRR ([`rr_cpu`]); None
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

/// (busy, total) CPU time of the whole machine so far, in clock ticks.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user and nice).
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The CPU clock in Hz, from /proc/cpuinfo (a VM without performance
/// counters has no cycle count of its own; CPU time times the clock is
/// the cycles a busy CPU spent).
pub fn cpu_hz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some(mhz * 1e6)
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time the ksoftirqd threads have used so far, in clock ticks:
/// packet work the kernel deferred from the processes that caused it.
fn softirq_thread_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            // pid (comm) state ... utime stime: fields 14 and 15, counted
            // after the comm, which may hold spaces.
            let (head, rest) = stat.rsplit_once(')')?;
            if !head.contains("(ksoftirqd/") {
                return None;
            }
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// How busy the machine's CPUs are over two seconds in which the bench
/// itself measures nothing: the load it competes with (the idle testbed
/// included), in percent.
pub fn background_busy() -> f64 {
    let (b0, t0) = cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let (b1, t1) = cpu_ticks();
    100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64
}

/// Points this process's stdout at its stderr until dropped, so that
/// what the programs the harness starts print goes to the log and stdout
/// carries only the table.
pub struct StdoutToStderr {
    saved: std::os::fd::OwnedFd,
}

impl StdoutToStderr {
    pub fn new() -> Result<Self> {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        std::io::stdout().flush()?;
        // SAFETY: dup and dup2 on the standard descriptors, which stay open.
        let saved = unsafe { libc::dup(1) };
        ensure!(
            saved >= 0,
            "dup stdout: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor dup just returned, owned from here on.
        let saved = unsafe { std::os::fd::OwnedFd::from_raw_fd(saved) };
        // SAFETY: as above.
        if unsafe { libc::dup2(2, 1) } < 0 {
            bail!("dup2 stderr: {}", std::io::Error::last_os_error());
        }
        Ok(Self { saved })
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let _ = std::io::stdout().flush();
        // SAFETY: restores the descriptor saved in new.
        unsafe { libc::dup2(self.saved.as_raw_fd(), 1) };
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`interrupted`] reads: a
/// bench stopped with Ctrl-C then returns an error and unwinds, and the
/// namespaces, nodes and processes it built are removed on the way out.
/// Children get the default action back when they exec.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once SIGINT or SIGTERM arrived, so the caller stops and cleans up.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
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
