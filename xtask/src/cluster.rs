//! `cargo xtask up` and `cargo xtask down`: a local cluster whose state
//! lives in `.cluster/` at the workspace root.
//!
//! Layout: `etcd/` (data, kept across restarts), `pki/` (kept), `kubeconfig`,
//! `run/<component>.pid` and `logs/<component>.log`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util;

/// kubectl minor version the project's API server reports and tests drive.
pub const KUBECTL_MINOR: u32 = 32;

/// Path of the version-pinned kubectl.
pub fn kubectl_path() -> String {
    format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{KUBECTL_MINOR}")
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Return once the cluster is ready and leave it running.
    #[arg(long)]
    detach: bool,
    /// etcd client port on 127.0.0.1.
    #[arg(long, default_value_t = 2379)]
    etcd_port: u16,
    /// API server port on 127.0.0.1.
    #[arg(long, default_value_t = 6443)]
    apiserver_port: u16,
    /// Build and run debug binaries (faster to build, slower to run).
    #[arg(long)]
    debug: bool,
}

#[derive(clap::Args)]
pub struct DownArgs {
    /// Also delete the cluster's data (etcd, certificates, kubeconfig).
    #[arg(long)]
    purge: bool,
}

fn state_dir() -> PathBuf {
    util::root().join(".cluster")
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// A process of the cluster, found again through its pid file.
struct Component {
    name: &'static str,
}

impl Component {
    fn pid_file(&self) -> PathBuf {
        state_dir().join("run").join(format!("{}.pid", self.name))
    }

    fn log_file(&self) -> PathBuf {
        state_dir().join("logs").join(format!("{}.log", self.name))
    }

    fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }

    /// Starts `cmd` in a session of its own (so a terminal's Ctrl-C reaches
    /// only `up`, which then stops everything in order) unless it runs.
    fn start(&self, cmd: &mut Command) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            eprintln!("    {} already running (pid {pid})", self.name);
            return Ok(());
        }
        std::fs::create_dir_all(state_dir().join("run"))?;
        std::fs::create_dir_all(state_dir().join("logs"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())?;
        // SAFETY: setsid is async-signal-safe and touches no Rust state.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("start {}: {e}", self.name))?;
        std::fs::write(self.pid_file(), child.id().to_string())?;
        eprintln!(
            "    {} started (pid {}, log {})",
            self.name,
            child.id(),
            self.log_file().display()
        );
        Ok(())
    }

    /// SIGTERM, up to 10 s of grace, then SIGKILL.
    fn stop(&self) {
        let Some(pid) = self.pid() else {
            let _ = std::fs::remove_file(self.pid_file());
            return;
        };
        // SAFETY: plain signal delivery to a pid we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pid().is_some() && Instant::now() < deadline {
            reap();
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.pid().is_some() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        reap();
        let _ = std::fs::remove_file(self.pid_file());
        eprintln!("    {} stopped", self.name);
    }

    fn wait_ready(&self, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // Still alive a moment after answering: what answered was this
            // process and not an older one on the same port.
            if ready() {
                std::thread::sleep(Duration::from_millis(300));
                reap();
                if self.pid().is_some() {
                    return Ok(());
                }
            }
            if self.pid().is_none() {
                anyhow::bail!("{} exited; see {}", self.name, self.log_file().display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "{} not ready after {timeout:?}; see {}",
            self.name,
            self.log_file().display()
        )
    }
}

/// Reaps exited children of `up` so pid checks see them gone.
fn reap() {
    // SAFETY: waitpid with WNOHANG on any child never blocks.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

const ETCD: Component = Component { name: "etcd" };
const APISERVER: Component = Component { name: "apiserver" };
const SCHEDULER: Component = Component { name: "scheduler" };
const CONTROLLER_MANAGER: Component = Component {
    name: "controller-manager",
};
const AGENT: Component = Component { name: "agent" };

/// Components in start order; `down` stops them in reverse.
const ALL: &[Component] = &[ETCD, APISERVER, SCHEDULER, CONTROLLER_MANAGER, AGENT];

/// The node's name: the host name, as kubelet does.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    crate::setup::run(false)?;
    util::step("building the binaries");
    let mut build = vec!["build", "--workspace", "--bins"];
    if !args.debug {
        build.push("--release");
    }
    util::cargo(&build)?;

    util::step("starting etcd");
    let etcd_url = format!("http://127.0.0.1:{}", args.etcd_port);
    let peer_url = format!("http://127.0.0.1:{}", args.etcd_port + 1);
    ETCD.start(
        Command::new("etcd")
            .arg("--name=kestrel")
            .arg(format!("--data-dir={}", state_dir().join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=kestrel={peer_url}")),
    )?;
    ETCD.wait_ready(Duration::from_secs(30), || {
        util::succeeds(Command::new("etcdctl").env("ETCDCTL_API", "3").args([
            "--endpoints",
            &etcd_url,
            "endpoint",
            "health",
        ]))
    })?;

    util::step("starting the API server");
    let profile = if args.debug { "debug" } else { "release" };
    let bin = util::root()
        .join("target")
        .join(profile)
        .join("control-plane");
    let kubeconfig_path = state_dir().join("kubeconfig");
    APISERVER.start(
        Command::new(&bin)
            .arg("apiserver")
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address=127.0.0.1:{}", args.apiserver_port))
            .arg(format!("--cert-dir={}", state_dir().join("pki").display()))
            .arg(format!("--admin-kubeconfig={}", kubeconfig_path.display())),
    )?;
    // Ready when the admin, through TLS and its client certificate, is answered.
    APISERVER.wait_ready(Duration::from_secs(30), || {
        kubeconfig_path.exists()
            && util::succeeds(
                Command::new(kubectl_path())
                    .arg("--kubeconfig")
                    .arg(&kubeconfig_path)
                    .args(["get", "--raw", "/readyz"]),
            )
    })?;

    util::step("starting the scheduler and the controller-manager");
    for (c, health) in [(&SCHEDULER, 10259), (&CONTROLLER_MANAGER, 10257)] {
        c.start(
            Command::new(&bin)
                .arg(c.name)
                .arg("--kubeconfig")
                .arg(&kubeconfig_path),
        )?;
        let url = format!("127.0.0.1:{health}");
        c.wait_ready(Duration::from_secs(30), || {
            util::succeeds(Command::new("curl").args(["-sf", &format!("http://{url}/readyz")]))
        })?;
    }

    util::step("starting the node agent");
    let agent = bin.with_file_name("agent");
    let agent_dir = state_dir().join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let node = node_name();
    // The agent authenticates as its node, with a certificate from the CA.
    let node_kubeconfig = state_dir().join("node.kubeconfig");
    util::run(
        Command::new(&bin)
            .arg("kubeconfig")
            .arg(format!("--cert-dir={}", state_dir().join("pki").display()))
            .arg(format!("--user=system:node:{node}"))
            .arg("--group=system:nodes")
            .arg(format!(
                "--server=https://127.0.0.1:{}",
                args.apiserver_port
            ))
            .arg("--out")
            .arg(&node_kubeconfig),
    )?;
    // A busybox image from Debian's busybox-static, so pods run without a
    // registry.
    let archive = state_dir().join("busybox.tar");
    if !archive.exists() {
        util::run(
            Command::new(&agent)
                .args(["image", "build-busybox"])
                .arg(&archive)
                .arg("--state-dir")
                .arg(&agent_dir),
        )?;
        util::run(
            Command::new(&agent)
                .args(["image", "import"])
                .arg(&archive)
                .arg("--state-dir")
                .arg(&agent_dir),
        )?;
    }
    AGENT.start(
        Command::new(&agent)
            .arg("run")
            .arg("--kubeconfig")
            .arg(&node_kubeconfig)
            .arg("--node-name")
            .arg(&node)
            .arg("--state-dir")
            .arg(&agent_dir)
            .arg("--log-dir")
            .arg(state_dir().join("logs").join("pods")),
    )?;
    AGENT.wait_ready(Duration::from_secs(60), || {
        Command::new(kubectl_path())
            .arg("--kubeconfig")
            .arg(&kubeconfig_path)
            .args([
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .output()
            .is_ok_and(|o| o.stdout == b"True")
    })?;

    eprintln!();
    eprintln!(
        "the cluster is ready: etcd at {etcd_url}, API server at https://127.0.0.1:{}, node {node}",
        args.apiserver_port
    );
    eprintln!();
    eprintln!("    export KUBECONFIG={}", kubeconfig_path.display());
    eprintln!("    kubectl get nodes");
    eprintln!("    kubectl run hello --image=busybox --restart=Never -- echo hello");
    eprintln!();

    if args.detach {
        eprintln!("the cluster keeps running; stop it with `cargo xtask down`");
        return Ok(());
    }
    eprintln!("press Ctrl-C to stop the cluster");
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        reap();
        for c in ALL {
            if c.pid().is_none() {
                eprintln!("{} exited; see {}", c.name, c.log_file().display());
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        }
    }
    eprintln!();
    down(DownArgs { purge: false })
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    util::step("stopping the cluster");
    for c in ALL.iter().rev() {
        c.stop();
    }
    // Containers outlive the agent by design; a stopped cluster runs none.
    let agent_dir = state_dir().join("agent");
    if agent_dir.join("runtime.sock").exists() {
        let agent = ["release", "debug"]
            .iter()
            .map(|p| util::root().join("target").join(p).join("agent"))
            .find(|p| p.exists());
        if let Some(agent) = agent {
            let _ = util::run(
                Command::new(agent)
                    .arg("reset")
                    .arg("--state-dir")
                    .arg(&agent_dir),
            );
            eprintln!("    containers stopped");
        }
    }
    let _ = std::fs::remove_dir_all(state_dir().join("run"));
    if args.purge {
        remove_all(&state_dir())?;
        eprintln!("    removed {}", state_dir().display());
    }
    Ok(())
}

fn remove_all(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes network namespaces left by test processes that were killed
/// before their clean-up ran (names `kt<pid>-…` whose pid is gone).
pub fn sweep_stale_test_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("kt")
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| u32::from_str_radix(p, 36).ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "delete", &name]).status();
            }
        }
    }
}
