//! What the benchmark programs share: etcd, the API server, hollow nodes
//! and control-plane components as child processes in a temporary
//! directory, a plain HTTP/1 client, CPU accounting from /proc, and the
//! way a program ends (its table written, its error printed).
//!
//! These are the release binaries with their own etcd and no TLS, started
//! from async code that reports errors instead of panicking; the
//! end-to-end tests' [`HollowCluster`](crate::hollow::HollowCluster) is
//! the debug-build, kubectl-driven counterpart.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use etcd_client::ConnectOptions;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `$CARGO_TARGET_DIR` (relative to the current directory) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d)
            }
        }
        None => crate::workspace_root().join("target"),
    }
}

pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port on 127.0.0.1")?;
    Ok(l.local_addr()
        .context("local address of a bound port")?
        .port())
}

// ---------------------------------------------------------------------------
// Processes

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Self> {
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

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// utime + stime of the process so far, in seconds.
    pub fn cpu(&self) -> f64 {
        process_cpu(&self.child.id().to_string())
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
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
pub struct Env {
    pub apiserver: Option<Proc>,
    pub etcd: Option<Proc>,
    pub etcd_url: String,
    pub api_url: String,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Result<Self> {
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

    pub async fn start_etcd(&mut self, bin: &Path) -> Result<etcd_client::Client> {
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

    pub async fn start_apiserver(&mut self, bin: &Path, http: &Http) -> Result<()> {
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
                    .arg(format!("--insecure-bind-address=127.0.0.1:{port}"))
                    .arg("--no-tls")
                    // Pods are created here without a controller-manager
                    // to make their `default` accounts.
                    .arg("--disable-admission-plugins=ServiceAccount"),
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

    /// A new directory with etcd and the API server of `control_plane` running.
    pub async fn started(etcd: &Path, control_plane: &Path, http: &Http) -> Result<Self> {
        let mut env = Self::new()?;
        env.start_etcd(etcd).await?;
        env.start_apiserver(control_plane, http).await?;
        Ok(env)
    }

    /// Starts `count` hollow nodes (`control-plane hollow-nodes`, 64
    /// registering at once, with `extra` flags) and waits until all have
    /// registered.
    pub async fn start_hollow_nodes(
        &self,
        control_plane: &Path,
        count: usize,
        extra: &[&str],
    ) -> Result<Proc> {
        let log = self.dir.path().join("hollow.log");
        let mut hollow = Proc::spawn(
            "hollow-nodes",
            Command::new(control_plane)
                .args(["hollow-nodes", "--master", &self.api_url])
                .args(["--count", &count.to_string(), "--parallelism", "64"])
                .args(extra),
            &log,
        )?;
        // It prints this line once the last node is registered.
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready:")
        {
            if hollow.exited() {
                bail!("hollow-nodes exited\n{}", hollow.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(hollow)
    }

    /// Starts the component `name` of `control_plane` (`scheduler`,
    /// `controller-manager`) against the API server, without leader
    /// election, serving health on a free loopback port; returns it and
    /// that port's URL without waiting for it (see [`wait_ok`]).
    pub fn spawn_component(
        &self,
        control_plane: &Path,
        name: &'static str,
        extra: &[&str],
    ) -> Result<(Proc, String)> {
        let port = free_port()?;
        let p = Proc::spawn(
            name,
            Command::new(control_plane)
                .args([name, "--master", &self.api_url, "--leader-elect=false"])
                .arg(format!("--bind-address=127.0.0.1:{port}"))
                .args(extra)
                .env("RUST_LOG", "warn"),
            &self.dir.path().join(format!("{name}.log")),
        )?;
        Ok((p, format!("http://127.0.0.1:{port}")))
    }

    pub fn cpu(&self, since: Instant) -> CpuUse {
        let of = |p: &Option<Proc>| p.as_ref().map_or(0.0, Proc::cpu);
        CpuUse {
            etcd: of(&self.etcd),
            apiserver: of(&self.apiserver),
            bench: process_cpu("self"),
            stalled: cpu_stalled(),
            wall: since.elapsed().as_secs_f64(),
        }
    }

    /// Fails with the API server's log when it has died.
    pub fn check_alive(&mut self) -> Result<()> {
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

/// Polls `GET <url><path>` every `poll` until it answers 200 OK; fails
/// when `proc` exits first or `timeout` passes, with the end of its log.
pub async fn wait_ok(
    http: &Http,
    url: &str,
    path: &str,
    proc: &mut Proc,
    timeout: Duration,
    poll: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((StatusCode::OK, _)) = call(http, Method::GET, url, path, None).await {
            return Ok(());
        }
        if proc.exited() {
            bail!("{} exited\n{}", proc.name, proc.log_tail(20));
        }
        if Instant::now() > deadline {
            bail!(
                "{} not answering {path} after {} s\n{}",
                proc.name,
                timeout.as_secs(),
                proc.log_tail(20)
            );
        }
        tokio::time::sleep(poll).await;
    }
}

pub async fn etcd_connect(url: &str) -> Result<etcd_client::Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    etcd_client::Client::connect([url], Some(opts))
        .await
        .with_context(|| format!("connect to etcd at {url}"))
}

// ---------------------------------------------------------------------------
// HTTP

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> Http {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(conn)
}

pub fn build_request(
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
pub async fn call(
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
pub async fn expect(
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

/// The body of `GET <base><path>` as JSON, whatever the status.
pub async fn get_json(http: &Http, base: &str, path: &str) -> Result<serde_json::Value> {
    let (_, body) = call(http, Method::GET, base, path, None).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Creates the namespace `name`.
pub async fn create_namespace(http: &Http, base: &str, name: &str) -> Result<()> {
    let ns =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    expect(
        http,
        Method::POST,
        base,
        "/api/v1/namespaces",
        Some(Bytes::from(ns.to_string())),
        StatusCode::CREATED,
    )
    .await
    .map(|_| ())
}

/// CPU seconds used during a phase, and its wall time.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub etcd: f64,
    pub apiserver: f64,
    pub bench: f64,
    /// Time in which some runnable task of the machine (other tenants
    /// included) waited for a CPU, from /proc/pressure/cpu.
    pub stalled: f64,
    pub wall: f64,
}

impl CpuUse {
    pub fn minus(self, o: Self) -> Self {
        Self {
            etcd: self.etcd - o.etcd,
            apiserver: self.apiserver - o.apiserver,
            bench: self.bench - o.bench,
            stalled: self.stalled - o.stalled,
            wall: self.wall - o.wall,
        }
    }
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process in seconds (0 when it cannot be read).
pub fn process_cpu(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may hold spaces: state is the first.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Seconds in which some task waited for a CPU (0 without PSI).
pub fn cpu_stalled() -> f64 {
    let psi = std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    psi.lines()
        .find(|l| l.starts_with("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
        .and_then(|t| t.parse::<f64>().ok())
        .map_or(0.0, |us| us / 1e6)
}

/// A target a benchmark holds itself to.
pub struct Goal {
    pub what: String,
    pub measured: f64,
    pub bound: f64,
    /// Whether the measurement must reach `bound` (else stay under it).
    pub at_least: bool,
}

impl Goal {
    pub fn met(&self) -> bool {
        if self.at_least {
            self.measured >= self.bound
        } else {
            self.measured <= self.bound
        }
    }
}

/// The goals as a Markdown table whose last column, `met`, is `yes` or
/// `**no**`: the column `cargo xtask bench <what> --check` reads.
pub fn goals_table(goals: &[Goal]) -> String {
    let mut s = String::from("| target | measured | goal | met |\n|---|---:|---:|---|\n");
    for g in goals {
        let sign = if g.at_least { "≥" } else { "≤" };
        s.push_str(&format!(
            "| {} | {:.2} | {sign} {:.2} | {} |\n",
            g.what,
            g.measured,
            g.bound,
            if g.met() { "yes" } else { "**no**" }
        ));
    }
    s
}

/// `given`, or the release control-plane binary of the target directory;
/// fails when it is missing, naming the `cargo xtask bench <bench>` that
/// builds it.
pub fn control_plane_bin(given: Option<&Path>, bench: &str) -> Result<PathBuf> {
    let bin = given.map_or_else(
        || target_dir().join("release").join("control-plane"),
        Path::to_path_buf,
    );
    ensure!(
        bin.exists(),
        "{} is missing: run `cargo xtask bench {bench}`, which builds it",
        bin.display()
    );
    Ok(bin)
}

/// Prints `table` on stdout and writes it to `<target>/bench/<name>.md`,
/// where `cargo xtask bench` collects it.
pub fn write_table(name: &str, table: &str) -> Result<()> {
    println!("{table}");
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let file = out.join(format!("{name}.md"));
    std::fs::write(&file, table)?;
    eprintln!("written to {}", file.display());
    Ok(())
}

/// Runs a program's `main` on a new tokio runtime; an error is printed
/// after the program's name and ends the process with status 1.
pub fn run_main(program: &str, main: impl std::future::Future<Output = Result<()>>) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(e) = rt.block_on(main) {
        eprintln!("{program}: {e:#}");
        std::process::exit(1);
    }
}
