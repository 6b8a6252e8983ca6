//! A node for tests: a network namespace on the control plane's segment,
//! with its own address, and a real agent inside it with its own state,
//! logs, cgroup subtree and bpffs directory, all removed on drop (pods
//! first, so their sandboxes and veths are torn down).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::cluster::{binary, ControlPlane, NODE_NET_PREFIX};
use crate::kubectl::Kubectl;
use crate::net::{self, Netns};
use crate::process::Guarded;

/// Node addresses on the segment: 10.99.0.10 and up, one per node started
/// by this test process.
static NEXT_HOST: AtomicU8 = AtomicU8::new(10);

/// One node: namespace, agent and everything the agent made.
pub struct Node {
    pub proc: Option<Guarded>,
    pub state: tempfile::TempDir,
    pub logs: tempfile::TempDir,
    pub cgroup_root: String,
    pub name: String,
    /// The node's address on the segment (its InternalIP).
    pub ip: String,
    /// The node's pod CIDR.
    pub pod_cidr: String,
    /// Its link to the segment, inside its namespace.
    pub uplink: String,
    pub bpffs_dir: PathBuf,
    master: String,
    /// This node's own credentials, on a TLS control plane.
    kubeconfig: Option<PathBuf>,
    admin: PathBuf,
    extra: Vec<String>,
    // Last: the namespace goes after the agent has cleaned up inside it.
    pub netns: Netns,
}

impl Node {
    /// Creates the node's namespace on `cp`'s segment, imports the
    /// project's busybox image and starts the agent.
    pub fn start(cp: &ControlPlane) -> Self {
        Self::start_with(cp, &[])
    }

    /// Like `start`, with extra `agent run` flags.
    pub fn start_with(cp: &ControlPlane, extra: &[&str]) -> Self {
        crate::require_root("the agent runs containers and builds pod networks");
        let host = NEXT_HOST.fetch_add(1, Ordering::SeqCst);
        let name = crate::names::unique("node");
        let netns = Netns::new("n").unwrap();
        let link = cp.segment().attach(&netns).unwrap();
        let ip = format!("10.99.0.{host}");
        netns
            .addr_up(&link, &format!("{ip}/{NODE_NET_PREFIX}"))
            .unwrap();
        let mut n = Node {
            proc: None,
            state: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
            cgroup_root: format!("/{name}"),
            pod_cidr: format!("10.244.{host}.0/24"),
            uplink: link,
            bpffs_dir: Path::new("/sys/fs/bpf/kestrel").join(&name),
            name,
            ip,
            // Every API server: with several, the agent fails over.
            master: if cp.tls() {
                cp.node_tls_urls().join(",")
            } else {
                cp.node_urls().join(",")
            },
            kubeconfig: None,
            admin: cp.kubeconfig(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns,
        };
        if cp.tls() {
            let path = n.state.path().join("node.kubeconfig");
            cp.client_kubeconfig(&format!("system:node:{}", n.name), "system:nodes", &path)
                .unwrap();
            n.kubeconfig = Some(path);
        }
        // The project's busybox image, made from Debian's busybox-static.
        let archive = n.state.path().join("busybox.tar");
        let ok = n
            .agent(&["image", "build-busybox"])
            .arg(&archive)
            .status()
            .unwrap();
        assert!(ok.success(), "building the busybox image");
        let ok = n
            .agent(&["image", "import"])
            .arg(&archive)
            .status()
            .unwrap();
        assert!(ok.success(), "importing the busybox image");
        n.launch();
        n
    }

    /// The node's own kubeconfig, on a TLS control plane.
    pub fn kubeconfig(&self) -> Option<&Path> {
        self.kubeconfig.as_deref()
    }

    /// An `agent` command; `image` subcommands get this node's state dir.
    pub fn agent(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary("agent"));
        c.args(args);
        if args.first() == Some(&"image") {
            c.arg("--state-dir").arg(self.state.path());
        }
        c
    }

    /// (Re)starts the agent inside the node's namespace.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("agent.log"))
            .unwrap();
        let mut cmd = self.agent(&["run", "--master", &self.master, "--node-name", &self.name]);
        if let Some(k) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        cmd.arg("--state-dir")
            .arg(self.state.path())
            .arg("--log-dir")
            .arg(self.logs.path())
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .args([
                "--cgroup-root",
                &self.cgroup_root,
                "--node-lease-interval",
                "2",
                "--node-ip",
                &self.ip,
                "--pod-cidr",
                &self.pod_cidr,
            ])
            // The test clusters have no CA: logs and exec over plain HTTP,
            // on the node's own address only.
            .arg(format!("--node-api-insecure-address={}:10250", self.ip))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        net::in_netns(&mut cmd, &self.netns).unwrap();
        self.proc = Some(Guarded::spawn("agent", &mut cmd).unwrap());
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default()
    }

    /// Polls `f` for up to `secs` seconds; on timeout panics naming `what`
    /// and showing this agent's log, which is where the reason usually is.
    pub fn wait<T>(&self, secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
        crate::process::wait_for(std::time::Duration::from_secs(secs), f)
            .unwrap_or_else(|| panic!("timed out: {what}\n--- agent log\n{}", self.log()))
    }

    /// Every container log file the agent wrote.
    pub fn log_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.logs.path(), &mut out);
        out
    }

    /// `agent bpf status` for this node.
    pub fn bpf_status(&self) -> String {
        let mut cmd = self.agent(&["bpf", "status", "--bpffs-dir"]);
        cmd.arg(&self.bpffs_dir);
        net::in_netns(&mut cmd, &self.netns).unwrap();
        let out = cmd.output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Stops the agent and runs `agent reset`, which leaves the node as it
    /// was before the agent ran.
    pub fn reset(&mut self) -> anyhow::Result<()> {
        self.proc = None;
        let mut cmd = Command::new(binary("agent"));
        cmd.args(["reset", "--cgroup-root", &self.cgroup_root])
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .stdout(Stdio::null());
        net::in_netns(&mut cmd, &self.netns)?;
        let o = cmd.output()?;
        anyhow::ensure!(
            o.status.success(),
            "resetting node {}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    }

    /// Runs a command in the node's namespace (the node's own view).
    pub fn exec(&self, cmd: &[&str]) -> anyhow::Result<String> {
        self.netns.exec(cmd)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Delete this node's pods so the agent tears their sandboxes down,
        // then stop the agent and reset what is left.
        if self.proc.is_some() {
            if let Ok(k) = Kubectl::new(&self.admin) {
                let sel = format!("spec.nodeName={}", self.name);
                let _ = k.output(&[
                    "delete",
                    "pods",
                    "--all-namespaces",
                    "--field-selector",
                    &sel,
                    "--grace-period=1",
                    "--timeout=30s",
                ]);
            }
        }
        if let Err(e) = self.reset() {
            eprintln!("{e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.bpffs_dir);
        // The shared parent goes with its last child; while other nodes
        // still pin there, removing it fails and it stays.
        if let Some(parent) = self.bpffs_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Where this machine mounts its cgroup v2 hierarchy (`/sys/fs/cgroup` on
/// a unified host, `/sys/fs/cgroup/unified` on a hybrid one): the socket
/// programs attach there, and tests place processes under it.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            (tail.split_whitespace().next()? == "cgroup2")
                .then(|| head.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .next()
        .expect("a cgroup v2 hierarchy")
}
