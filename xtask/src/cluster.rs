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
    /// A cluster of N nodes, each a network namespace on a bridge in the
    /// control plane's namespace, instead of one node on this machine.
    #[arg(long)]
    nodes: Option<u32>,
    /// A highly available control plane: N etcd members, API servers,
    /// schedulers and controller-managers (leader-elected), control plane
    /// i at 10.99.0.i; every agent fails over between the API servers.
    /// Runs in namespaces, with as many nodes as control planes unless
    /// --nodes says otherwise.
    #[arg(long, default_value_t = 1)]
    control_planes: u32,
    /// Also run a cluster-local image registry (Debian's docker-registry,
    /// data in .cluster/registry) that every node pulls from over plain
    /// HTTP; `cargo xtask image push` fills it.
    #[arg(long)]
    registry: bool,
    /// The registry's port.
    #[arg(long, default_value_t = 5000)]
    registry_port: u16,
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
    name: String,
}

impl Component {
    fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
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

/// Where a component stands in start order: etcd, API servers, the
/// scheduler, the controller-manager, then agents.
fn start_rank(name: &str) -> usize {
    [
        "etcd",
        "apiserver",
        "scheduler",
        "controller-manager",
        "agent",
    ]
    .iter()
    .position(|p| name.starts_with(p))
    .unwrap_or(usize::MAX)
}

/// Every component with a pid file, in start order; `down` stops them in
/// reverse.
fn all_components() -> Vec<Component> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir().join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".pid").map(String::from)
        })
        .collect();
    names.sort_by(|a, b| (start_rank(a), a).cmp(&(start_rank(b), b)));
    names.into_iter().map(Component::named).collect()
}

/// The node's name: the host name, as kubelet does.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// Namespace of the control plane and the node segment (`--nodes`).
const CP_NETNS: &str = "kestrel-cp";
/// The segment's bridge address: the API server as nodes reach it.
const CP_ADDRESS: &str = "10.99.0.1";

/// Control plane `i`'s address (1-based; the first is CP_ADDRESS).
fn cp_address(i: u32) -> String {
    format!("10.99.0.{i}")
}

fn node_netns(i: u32) -> String {
    format!("kestrel-node-{i}")
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    util::run(Command::new("ip").args(args))
}

/// Makes `cmd` run in the network namespace `ns` (only that one: the
/// agent's mounts must stay visible to the processes that follow it).
fn in_netns(cmd: &mut Command, ns: &str) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let fd: OwnedFd = std::fs::File::open(Path::new("/run/netns").join(ns))?.into();
    // SAFETY: setns is async-signal-safe; the closure owns the fd.
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

/// A command run with `ip netns exec NS` (for short checks).
fn netns_command(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Builds the namespaces of a `--nodes N` cluster unless they exist: the
/// control plane's, holding a bridge at CP_ADDRESS, and one per node with
/// an `eth0` on that bridge at 10.99.0.(10+i). Nothing touches the
/// machine's own interfaces.
fn build_namespaces(nodes: u32, control_planes: u32) -> anyhow::Result<()> {
    let exists = |ns: &str| Path::new("/run/netns").join(ns).exists();
    if !exists(CP_NETNS) {
        ip(&["netns", "add", CP_NETNS])?;
        ip(&["-n", CP_NETNS, "link", "set", "lo", "up"])?;
        ip(&["-n", CP_NETNS, "link", "add", "kbr0", "type", "bridge"])?;
        ip(&[
            "-n",
            CP_NETNS,
            "addr",
            "add",
            &format!("{CP_ADDRESS}/24"),
            "dev",
            "kbr0",
        ])?;
        ip(&["-n", CP_NETNS, "link", "set", "kbr0", "up"])?;
    }
    // Control planes 2..N: more addresses on the same bridge (nodes start
    // at .10); a namespace from an earlier, smaller cluster gets them too.
    let out = Command::new("ip")
        .args(["-n", CP_NETNS, "-4", "-o", "addr", "show", "dev", "kbr0"])
        .output()?;
    let have = String::from_utf8_lossy(&out.stdout).into_owned();
    for i in 2..=control_planes {
        let addr = format!("{}/24", cp_address(i));
        if !have.contains(&format!(" {addr} ")) {
            ip(&["-n", CP_NETNS, "addr", "add", &addr, "dev", "kbr0"])?;
        }
    }
    for i in 1..=nodes {
        let ns = node_netns(i);
        if exists(&ns) {
            continue;
        }
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let port = format!("kn{i}");
        ip(&[
            "-n", CP_NETNS, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", CP_NETNS, "link", "set", &port, "master", "kbr0"])?;
        ip(&["-n", CP_NETNS, "link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.99.0.{}/24", 9 + i),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// The node namespaces that exist, by index.
fn existing_nodes() -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("kestrel-node-")?
                .parse()
                .ok()
        })
        .collect();
    out.sort();
    out
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    crate::setup::run(false)?;
    util::step("building the binaries");
    let mut build = vec!["build", "--workspace", "--bins"];
    if !args.debug {
        build.push("--release");
    }
    util::cargo(&build)?;
    let cps = args.control_planes;
    anyhow::ensure!(
        matches!(cps, 1 | 3 | 5 | 7),
        "--control-planes takes 1, 3, 5 or 7: etcd needs a majority of its members"
    );
    // A highly available control plane lives on the node network, so it
    // comes with nodes in namespaces.
    let node_count = match (args.nodes, cps) {
        (Some(n), _) => Some(n),
        (None, 1) => None,
        (None, n) => Some(n),
    };
    if let Some(n) = node_count {
        anyhow::ensure!((1..=50).contains(&n), "--nodes takes 1 to 50");
        util::step(&format!(
            "building the network: namespace {CP_NETNS} (bridge at {CP_ADDRESS}) and {n} node namespaces"
        ));
        build_namespaces(n, cps)?;
    }
    let cp_ns = node_count.map(|_| CP_NETNS);
    let spawn_in = |cmd: &mut Command| -> anyhow::Result<()> {
        if let Some(ns) = cp_ns {
            in_netns(cmd, ns)?;
        }
        Ok(())
    };
    // Component names: `etcd`, or `etcd-1` .. `etcd-N` for several.
    let named = |base: &str, i: u32| -> String {
        if cps == 1 {
            base.to_string()
        } else {
            format!("{base}-{i}")
        }
    };
    // Where control plane i listens: loopback for a single node on this
    // machine; the bridge (all of its addresses) for one control plane
    // with nodes; its own address for several.
    let listen_host = |i: u32| -> String {
        match (cp_ns, cps) {
            (None, _) => "127.0.0.1".into(),
            (Some(_), 1) => "0.0.0.0".into(),
            (Some(_), _) => cp_address(i),
        }
    };
    // How the others reach control plane i.
    let reach_host = |i: u32| -> String {
        match cp_ns {
            None => "127.0.0.1".into(),
            Some(_) => cp_address(i),
        }
    };

    util::step(&if cps == 1 {
        "starting etcd".to_string()
    } else {
        format!("starting a {cps}-member etcd cluster")
    });
    let etcd_urls: Vec<String> = (1..=cps)
        .map(|i| format!("http://{}:{}", reach_host(i), args.etcd_port))
        .collect();
    let peer_url = |i: u32| format!("http://{}:{}", reach_host(i), args.etcd_port + 1);
    let initial_cluster = (1..=cps)
        .map(|i| format!("{}={}", named("kestrel", i), peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    // Members start together: none is healthy before a majority runs.
    for i in 1..=cps {
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", named("kestrel", i)))
            .arg(format!(
                "--data-dir={}",
                state_dir().join(named("etcd", i)).display()
            ))
            .arg(format!(
                "--listen-client-urls={}",
                etcd_urls[i as usize - 1]
            ))
            .arg(format!(
                "--advertise-client-urls={}",
                etcd_urls[i as usize - 1]
            ))
            .arg(format!("--listen-peer-urls={}", peer_url(i)))
            .arg(format!("--initial-advertise-peer-urls={}", peer_url(i)))
            .arg(format!("--initial-cluster={initial_cluster}"));
        spawn_in(&mut cmd)?;
        Component::named(named("etcd", i)).start(&mut cmd)?;
    }
    for i in 1..=cps {
        let url = &etcd_urls[i as usize - 1];
        Component::named(named("etcd", i)).wait_ready(Duration::from_secs(30), || {
            util::succeeds(
                netns_command(cp_ns, "etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", url, "endpoint", "health"]),
            )
        })?;
    }

    util::step(&if cps == 1 {
        "starting the API server".to_string()
    } else {
        format!("starting {cps} API servers")
    });
    let profile = if args.debug { "debug" } else { "release" };
    let bin = util::root()
        .join("target")
        .join(profile)
        .join("control-plane");
    let kubeconfig_path = state_dir().join("kubeconfig");
    let api_urls: Vec<String> = (1..=cps)
        .map(|i| format!("https://{}:{}", reach_host(i), args.apiserver_port))
        .collect();
    // One at a time: they share the CA in pki/, and each re-issues its
    // serving certificate there as it starts.
    for i in 1..=cps {
        let apiserver = Component::named(named("apiserver", i));
        // The user's kubectl reaches API server i on this machine at
        // 127.0.0.1:(port + i - 1).
        let host_port = args.apiserver_port + (i as u16 - 1);
        let mut cmd = Command::new(&bin);
        cmd.arg("apiserver")
            .arg(format!("--etcd-servers={}", etcd_urls.join(",")))
            .arg(format!("--cert-dir={}", state_dir().join("pki").display()))
            .arg(format!(
                "--bind-address={}:{}",
                listen_host(i),
                args.apiserver_port
            ));
        if i == 1 {
            cmd.arg(format!("--admin-kubeconfig={}", kubeconfig_path.display()));
        }
        // Kept open until the API server has its copy.
        let mut _host_socket = None;
        if cp_ns.is_some() {
            // The API server lives in the control plane's namespace, where
            // the nodes reach it; the user's kubectl reaches it on this
            // machine's loopback through a socket made here and handed
            // over (socket activation).
            for j in 1..=cps {
                cmd.arg(format!("--tls-san={}", cp_address(j)));
            }
            // Where pods reach it: its endpoint in Service default/kubernetes.
            cmd.arg(format!("--advertise-address={}", cp_address(i)));
            if apiserver.pid().is_none() {
                let l = std::net::TcpListener::bind(("127.0.0.1", host_port))
                    .map_err(|e| anyhow::anyhow!("127.0.0.1:{host_port}: {e}"))?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
                cmd.env("LISTEN_FDS", "1");
                // SAFETY: dup2 is async-signal-safe; fd 3 is where socket
                // activation puts the first socket.
                unsafe {
                    cmd.pre_exec(move || {
                        // Already fd 3: only its close-on-exec flag must go.
                        let r = if fd == 3 {
                            libc::fcntl(3, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(fd, 3)
                        };
                        if r < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                _host_socket = Some(l);
            }
            spawn_in(&mut cmd)?;
        }
        apiserver.start(&mut cmd)?;
        drop(_host_socket);
        // Ready when the admin, through TLS and its client certificate, is
        // answered.
        apiserver.wait_ready(Duration::from_secs(30), || {
            kubeconfig_path.exists()
                && util::succeeds(
                    Command::new(kubectl_path())
                        .arg("--kubeconfig")
                        .arg(&kubeconfig_path)
                        .arg(format!("--server=https://127.0.0.1:{host_port}"))
                        .args(["get", "--raw", "/readyz"]),
                )
        })?;
    }

    util::step(&if cps == 1 {
        "starting the scheduler and the controller-manager".to_string()
    } else {
        format!("starting {cps} schedulers and {cps} controller-managers (one of each leads)")
    });
    for i in 1..=cps {
        for (base, health) in [("scheduler", 10259), ("controller-manager", 10257)] {
            let c = Component::named(named(base, i));
            let mut cmd = Command::new(&bin);
            cmd.arg(base).arg("--kubeconfig").arg(&kubeconfig_path);
            if cps > 1 {
                // Every API server, so the component fails over.
                cmd.arg(format!("--master={}", api_urls.join(",")))
                    .arg(format!("--bind-address={}:{health}", cp_address(i)));
            }
            spawn_in(&mut cmd)?;
            c.start(&mut cmd)?;
            // A standby is live but not ready until it leads.
            // One component binds its default, loopback; several bind
            // their control plane's address.
            let url = if cps == 1 {
                format!("http://127.0.0.1:{health}/readyz")
            } else {
                format!("http://{}:{health}/healthz", cp_address(i))
            };
            c.wait_ready(Duration::from_secs(30), || {
                util::succeeds(netns_command(cp_ns, "curl").args(["-sf", &url]))
            })?;
        }
    }

    // Where nodes reach the registry: this machine's loopback for a single
    // node, the control plane's address on the node network otherwise.
    let registry = args
        .registry
        .then(|| format!("{}:{}", reach_host(1), args.registry_port));
    if let Some(addr) = &registry {
        util::step(&format!("starting the cluster registry at {addr}"));
        let dir = state_dir().join("registry");
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "# Written by `cargo xtask up --registry`.\nversion: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}:{}\n",
                dir.join("data").display(),
                listen_host(1),
                args.registry_port
            ),
        )?;
        let c = Component::named("registry");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        spawn_in(&mut cmd)?;
        c.start(&mut cmd)?;
        let url = format!("http://{addr}/v2/");
        c.wait_ready(Duration::from_secs(30), || {
            util::succeeds(netns_command(cp_ns, "curl").args(["-sf", &url]))
        })?;
    }

    let agent = bin.with_file_name("agent");
    // (name, namespace, state dir) of each node.
    let nodes: Vec<(String, Option<String>, PathBuf)> = match node_count {
        None => vec![(node_name(), None, state_dir().join("agent"))],
        Some(n) => (1..=n)
            .map(|i| {
                let name = format!("kestrel-node-{i}");
                let dir = state_dir().join("nodes").join(&name);
                (name, Some(node_netns(i)), dir)
            })
            .collect(),
    };
    util::step(&format!("starting {} node agent(s)", nodes.len()));
    let server = match cp_ns {
        Some(_) => format!("https://{CP_ADDRESS}:{}", args.apiserver_port),
        None => format!("https://127.0.0.1:{}", args.apiserver_port),
    };
    for (node, ns, dir) in &nodes {
        std::fs::create_dir_all(dir)?;
        // The agent authenticates as its node, with a certificate from the CA.
        let node_kubeconfig = dir.join("kubeconfig");
        util::run(
            Command::new(&bin)
                .arg("kubeconfig")
                .arg(format!("--cert-dir={}", state_dir().join("pki").display()))
                .arg(format!("--user=system:node:{node}"))
                .arg("--group=system:nodes")
                .arg(format!("--server={server}"))
                .arg("--out")
                .arg(&node_kubeconfig),
        )?;
        // A busybox image from Debian's busybox-static, so pods run without
        // a registry.
        let archive = state_dir().join("busybox.tar");
        if !archive.exists() {
            util::run(
                Command::new(&agent)
                    .args(["image", "build-busybox"])
                    .arg(&archive)
                    .arg("--state-dir")
                    .arg(dir),
            )?;
        }
        if !dir.join("images").exists() {
            util::run(
                Command::new(&agent)
                    .args(["image", "import"])
                    .arg(&archive)
                    .arg("--state-dir")
                    .arg(dir),
            )?;
        }
        let c = Component::named(match ns {
            Some(_) => format!("agent-{node}"),
            None => "agent".into(),
        });
        let mut cmd = Command::new(&agent);
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(&node_kubeconfig)
            // Every API server: with several, the agent fails over.
            .arg(format!("--master={}", api_urls.join(",")))
            .args(registry.iter().map(|r| format!("--insecure-registry={r}")))
            .arg("--node-name")
            .arg(node)
            .arg("--state-dir")
            .arg(dir);
        if let Some(ns) = ns {
            cmd.arg("--log-dir")
                .arg(dir.join("pod-logs"))
                .arg("--cgroup-root")
                .arg(format!("/{node}"));
            in_netns(&mut cmd, ns)?;
        } else {
            // The only agent on this machine: every process of it reaches
            // ClusterIPs, as with kube-proxy.
            cmd.arg("--log-dir")
                .arg(state_dir().join("logs").join("pods"))
                .args(["--service-cgroup", "/"]);
        }
        c.start(&mut cmd)?;
    }
    for (node, ns, _) in &nodes {
        let c = Component::named(match ns {
            Some(_) => format!("agent-{node}"),
            None => "agent".into(),
        });
        c.wait_ready(Duration::from_secs(90), || {
            Command::new(kubectl_path())
                .arg("--kubeconfig")
                .arg(&kubeconfig_path)
                .args([
                    "get",
                    "node",
                    node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .output()
                .is_ok_and(|o| o.stdout == b"True")
        })?;
        eprintln!("    node {node} is Ready");
    }

    eprintln!();
    if cps == 1 {
        eprintln!(
            "the cluster is ready: API server at https://127.0.0.1:{}, {} node(s)",
            args.apiserver_port,
            nodes.len()
        );
    } else {
        eprintln!(
            "the cluster is ready: {cps} control planes, API servers at https://127.0.0.1:{}..{} \
             (the kubeconfig names the first; `kubectl --server` picks another), {} node(s)",
            args.apiserver_port,
            args.apiserver_port + cps as u16 - 1,
            nodes.len()
        );
    }
    eprintln!();
    eprintln!("    export KUBECONFIG={}", kubeconfig_path.display());
    eprintln!("    kubectl get nodes -o wide");
    eprintln!("    kubectl run hello --image=busybox --restart=Never -- echo hello");
    eprintln!();

    if let Some(addr) = &registry {
        eprintln!("the cluster registry is at {addr}; fill it from an image archive and run it:");
        eprintln!("    cargo xtask image push app.tar {addr}/app:1");
        eprintln!("    kubectl create deployment app --image={addr}/app:1");
        eprintln!();
    }
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
        for c in all_components() {
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
    for c in all_components().iter().rev() {
        c.stop();
    }
    // Containers outlive the agent by design; a stopped cluster runs none.
    let agent = ["release", "debug"]
        .iter()
        .map(|p| util::root().join("target").join(p).join("agent"))
        .find(|p| p.exists());
    let mut nodes: Vec<(PathBuf, Option<String>, String)> =
        vec![(state_dir().join("agent"), None, "/kestrel".to_string())];
    for i in existing_nodes() {
        let name = format!("kestrel-node-{i}");
        nodes.push((
            state_dir().join("nodes").join(&name),
            Some(node_netns(i)),
            format!("/{name}"),
        ));
    }
    for (dir, ns, cgroup_root) in nodes {
        let Some(agent) = &agent else { break };
        if !dir.join("runtime.sock").exists() && ns.is_none() {
            continue;
        }
        let mut cmd = Command::new(agent);
        cmd.arg("reset")
            .arg("--state-dir")
            .arg(&dir)
            .arg("--cgroup-root")
            .arg(&cgroup_root);
        if let Some(ns) = &ns {
            let name = ns.clone();
            cmd.arg("--bpffs-dir")
                .arg(Path::new("/sys/fs/bpf/kestrel").join(&name));
            in_netns(&mut cmd, ns)?;
        }
        if dir.exists() {
            let _ = util::run(&mut cmd);
        }
    }
    eprintln!("    containers stopped");
    // The namespaces go with everything in them; data stays for the next
    // `up`.
    for i in existing_nodes() {
        let _ = ip(&["netns", "delete", &node_netns(i)]);
    }
    if Path::new("/run/netns").join(CP_NETNS).exists() {
        let _ = ip(&["netns", "delete", CP_NETNS]);
        eprintln!("    network namespaces removed");
    }
    let _ = std::fs::remove_dir_all(state_dir().join("run"));
    if args.purge {
        remove_all(&state_dir())?;
        eprintln!("    removed {}", state_dir().display());
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum ImageTask {
    /// Make a `docker save` or OCI image archive available on every node of
    /// the local cluster (each node imports it into its own store).
    Load {
        /// The archive.
        file: PathBuf,
    },
    /// Push the image in a `docker save` or OCI archive to the cluster
    /// registry (`up --registry`) as TARGET, e.g. 10.99.0.1:5000/app:1.
    Push {
        /// The archive.
        file: PathBuf,
        /// REGISTRY/NAME:TAG, the registry as `up` printed it.
        target: String,
    },
}

/// The state directories of the local cluster's nodes.
fn node_state_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state_dir().join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let single = state_dir().join("agent");
    if single.exists() {
        dirs.insert(0, single);
    }
    dirs
}

pub fn image(task: ImageTask) -> anyhow::Result<()> {
    let (ImageTask::Push { file, .. } | ImageTask::Load { file }) = &task;
    let file = file
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let agent = ["release", "debug"]
        .iter()
        .map(|p| util::root().join("target").join(p).join("agent"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no agent binary: run `cargo xtask up` first"))?;
    match task {
        ImageTask::Push { target, .. } => {
            anyhow::ensure!(
                Component::named("registry").pid().is_some(),
                "no cluster registry runs: start the cluster with `cargo xtask up --registry`"
            );
            let registry = target.split('/').next().unwrap_or_default().to_string();
            let mut cmd = Command::new(&agent);
            cmd.args(["image", "push"])
                .arg(&file)
                .arg(&target)
                .arg(format!("--insecure-registry={registry}"));
            // With nodes in namespaces the registry lives on the node
            // network, reached from the control plane's namespace.
            if Path::new("/run/netns").join(CP_NETNS).exists() {
                in_netns(&mut cmd, CP_NETNS)?;
            }
            util::run(&mut cmd)
        }
        ImageTask::Load { .. } => {
            let dirs = node_state_dirs();
            anyhow::ensure!(
                !dirs.is_empty(),
                "no local cluster: run `cargo xtask up` first"
            );
            for dir in dirs {
                util::step(&format!("loading into {}", dir.display()));
                // The store writes by rename, so a running agent sees the
                // image complete or not at all.
                util::run(
                    Command::new(&agent)
                        .args(["image", "import"])
                        .arg(&file)
                        .arg("--state-dir")
                        .arg(&dir),
                )?;
            }
            Ok(())
        }
    }
}

fn remove_all(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes network namespaces and bpffs pin directories left by test
/// processes that were killed before their clean-up ran (names
/// `kt<pid>-…` whose pid is gone).
pub fn sweep_stale_test_namespaces() {
    let stale = |name: &str| {
        name.strip_prefix("kt")
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| u32::from_str_radix(p, 36).ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        }
    }
    // Pinned links detach when their pins go; pinned maps are freed.
    for entry in std::fs::read_dir("/sys/fs/bpf/kestrel")
        .into_iter()
        .flatten()
        .flatten()
    {
        if stale(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
