//! A control plane for tests: a real etcd and the real `control-plane`
//! binary, reached by the real kubectl.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::etcd::Etcd;
use crate::forward::Forward;
use crate::kubectl::Kubectl;
use crate::net::Segment;
use crate::ports::free_port;
use crate::process::{wait_for, Guarded};

/// Path of a binary built from this workspace (`cargo build --workspace`):
/// the debug build, or the one in `$KESTREL_BIN_DIR` when that is set
/// (benchmarks run the harness on release builds).
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("KESTREL_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::workspace_root().join("target"))
            .join("debug"),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

/// etcd plus an API server on a plain-HTTP loopback port, and a kubeconfig.
pub struct ControlPlane {
    pub etcd: Etcd,
    /// The other members of a highly available control plane's etcd.
    pub etcd_peers: Vec<Etcd>,
    /// One API server per control plane, by index (`None` while killed).
    apiservers: Vec<Option<Guarded>>,
    /// The first API server's port.
    pub port: u16,
    /// Every API server's port, by index.
    ports: Vec<u16>,
    dir: tempfile::TempDir,
    apiserver_args: Vec<String>,
    net: Option<Network>,
    /// Whether the API servers also serve HTTPS on the node network.
    tls: bool,
    /// The first API server's HTTPS port on loopback, where the scheduler
    /// and the controller-manager connect as their own RBAC users
    /// ([`ControlPlane::start_with_component_identities`]).
    component_tls_port: Option<u16>,
}

/// The node network of a control plane that serves nodes in namespaces: a
/// segment whose bridge holds the API server's address, and the relays
/// that let the test (and components it starts) reach the API server, and
/// the API server reach etcd, from their own namespace.
struct Network {
    // Relays first: they hold sockets in the segment's namespace.
    _forwards: Vec<Forward>,
    segment: Segment,
}

/// Who reaches the API server over HTTPS besides plain HTTP for the test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secure {
    No,
    /// Nodes, on the node network.
    Nodes,
    /// The scheduler and the controller-manager, on loopback.
    Components,
}

/// Address of the API server on the node network (the segment's bridge).
pub const API_ADDRESS: &str = "10.99.0.1";
/// Prefix length of the node network.
pub const NODE_NET_PREFIX: u8 = 24;
/// HTTPS port of the first API server of a TLS control plane on the node
/// network (the next ones count up).
pub const TLS_PORT: u16 = 6443;

impl ControlPlane {
    /// Starts etcd and the API server and waits until it is ready.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Like `start`, with extra API server flags.
    pub fn start_with(apiserver_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_inner(apiserver_args, false, 1)
    }

    /// Like `start_with`, with the API server also serving HTTPS on
    /// loopback with a CA of its own: the scheduler and the
    /// controller-manager started with [`ControlPlane::component`] connect
    /// there with client certificates of `system:kube-scheduler` and
    /// `system:kube-controller-manager`, so they hold only what RBAC grants
    /// them. The test stays the admin over plain HTTP.
    pub fn start_with_component_identities(apiserver_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_full(apiserver_args, false, 1, Secure::Components)
    }

    /// Starts a control plane for nodes in network namespaces: the API
    /// server runs in the namespace of a segment (a bridge) that nodes join
    /// with [`ControlPlane::segment`], at [`API_ADDRESS`]. The test still
    /// reaches it at [`ControlPlane::url`].
    pub fn start_networked(apiserver_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_inner(apiserver_args, true, 1)
    }

    /// Like `start_networked`, with the API server serving HTTPS to the
    /// nodes at [`API_ADDRESS`]:[`TLS_PORT`] with a CA of its own: nodes
    /// authenticate as themselves with client certificates, pods with
    /// their ServiceAccount tokens (the ServiceAccount admission is on),
    /// and the scheduler and controller-manager as their own users.
    /// The test stays the admin at [`ControlPlane::url`], over plain HTTP
    /// that only the test's own loopback reaches.
    pub fn start_networked_tls(apiserver_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_full(apiserver_args, true, 1, Secure::Nodes)
    }

    /// A highly available control plane for nodes in namespaces: an etcd
    /// cluster of `n` members and `n` API servers over it, each on a port
    /// of its own at [`API_ADDRESS`] (see [`ControlPlane::node_urls`]).
    pub fn start_ha(n: usize, apiserver_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_inner(apiserver_args, true, n)
    }

    /// Like `start_ha`, with every API server serving HTTPS to the nodes
    /// and components on the node network, as `start_networked_tls` does.
    pub fn start_ha_tls(n: usize, apiserver_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_full(apiserver_args, true, n, Secure::Nodes)
    }

    fn start_inner(apiserver_args: &[&str], networked: bool, n: usize) -> anyhow::Result<Self> {
        Self::start_full(apiserver_args, networked, n, Secure::No)
    }

    fn start_full(
        apiserver_args: &[&str],
        networked: bool,
        n: usize,
        secure: Secure,
    ) -> anyhow::Result<Self> {
        let mut members = if n == 1 {
            vec![Etcd::start()?]
        } else {
            Etcd::start_cluster(n)?
        };
        let etcd = members.remove(0);
        let dir = tempfile::Builder::new().prefix("kestrel-cp-").tempdir()?;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut cp = Self {
            etcd,
            etcd_peers: members,
            apiservers: (0..n).map(|_| None).collect(),
            port: ports[0],
            ports,
            dir,
            apiserver_args: apiserver_args.iter().map(|s| s.to_string()).collect(),
            net: None,
            tls: secure == Secure::Nodes,
            component_tls_port: (secure == Secure::Components).then(free_port),
        };
        if networked {
            let segment = Segment::new()?;
            segment.ns.addr_up(
                segment.bridge(),
                &format!("{API_ADDRESS}/{NODE_NET_PREFIX}"),
            )?;
            let mut forwards = Vec::new();
            for url in cp.etcd_urls() {
                let etcd_addr: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
                forwards.push(Forward::start(
                    Some(&segment.ns.path()),
                    etcd_addr,
                    None,
                    etcd_addr,
                )?);
            }
            for port in &cp.ports {
                let api_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
                forwards.push(Forward::start(
                    None,
                    api_addr,
                    Some(&segment.ns.path()),
                    api_addr,
                )?);
            }
            cp.net = Some(Network {
                _forwards: forwards,
                segment,
            });
        }
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: admin\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
            cp.url()
        );
        std::fs::write(cp.kubeconfig(), kubeconfig)?;
        for i in 0..n {
            cp.start_apiserver_at(i)?;
        }
        Ok(cp)
    }

    /// `http://127.0.0.1:PORT`, the first API server.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every API server's URL as the test reaches it, by index.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// Every etcd member's client URL.
    pub fn etcd_urls(&self) -> Vec<String> {
        std::iter::once(&self.etcd)
            .chain(&self.etcd_peers)
            .map(Etcd::client_url)
            .collect()
    }

    /// The admin kubeconfig for this control plane.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// kubectl pointed at this control plane.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.kubeconfig()).expect("kubectl is installed")
    }

    /// The API server's log so far.
    pub fn apiserver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// The segment nodes join (only for [`ControlPlane::start_networked`]).
    pub fn segment(&self) -> &Segment {
        &self
            .net
            .as_ref()
            .expect("a networked control plane (ControlPlane::start_networked)")
            .segment
    }

    /// Whether the API servers serve HTTPS to the nodes
    /// ([`ControlPlane::start_networked_tls`]).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The cluster CA's certificate and key, and the ServiceAccount key,
    /// of a control plane that serves HTTPS
    /// ([`ControlPlane::start_networked_tls`],
    /// [`ControlPlane::start_with_component_identities`]).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Every API server's HTTPS URL as nodes on the segment reach it, by
    /// index (TLS control planes only).
    pub fn node_tls_urls(&self) -> Vec<String> {
        (0..self.ports.len())
            .map(|i| format!("https://{API_ADDRESS}:{}", TLS_PORT + i as u16))
            .collect()
    }

    /// A kubeconfig at `out` for `user` in `group` with a new client
    /// certificate from the cluster CA, naming the first API server's
    /// HTTPS address on the node network (TLS control planes only).
    pub fn client_kubeconfig(&self, user: &str, group: &str, out: &Path) -> anyhow::Result<()> {
        self.client_kubeconfig_expiring(user, group, out, None)
    }

    /// Like [`ControlPlane::client_kubeconfig`], with a certificate that
    /// lapses `expires_in` seconds from now.
    pub fn client_kubeconfig_expiring(
        &self,
        user: &str,
        group: &str,
        out: &Path,
        expires_in: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary("control-plane"));
        cmd.args(["kubeconfig", "--group", group]);
        if let Some(secs) = expires_in {
            cmd.arg(format!("--expires-in={secs}"));
        }
        let status = cmd
            .arg(format!("--cert-dir={}", self.pki().display()))
            .arg(format!("--user={user}"))
            .arg(format!("--server={}", self.node_tls_urls()[0]))
            .arg("--out")
            .arg(out)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "control-plane kubeconfig for {user} failed"
        );
        Ok(())
    }

    /// The API server's URL as nodes on the segment reach it.
    pub fn node_url(&self) -> String {
        format!("http://{API_ADDRESS}:{}", self.port)
    }

    /// Every API server's URL as nodes on the segment reach it, by index.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://{API_ADDRESS}:{p}"))
            .collect()
    }

    /// (Re)starts the API server on the same port.
    pub fn start_apiserver(&mut self) -> anyhow::Result<()> {
        self.start_apiserver_at(0)
    }

    /// (Re)starts API server `i` on its port.
    pub fn start_apiserver_at(&mut self, i: usize) -> anyhow::Result<()> {
        self.apiservers[i] = None;
        let port = self.ports[i];
        let log_name = if i == 0 {
            "apiserver.log".to_string()
        } else {
            format!("apiserver-{i}.log")
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(&log_name))?;
        let mut cmd = Command::new(binary("control-plane"));
        cmd.args(["apiserver", "--etcd-servers", &self.etcd_urls().join(",")])
            .args(&self.apiserver_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let names_admission = self
            .apiserver_args
            .iter()
            .any(|a| a.contains("-admission-plugins"));
        if !self.tls && !names_admission {
            // Without a CA there is no kube-root-ca.crt for the token
            // volume, and most of these tests run no controller-manager
            // to make the `default` accounts.
            cmd.arg("--disable-admission-plugins=ServiceAccount");
        }
        match &self.net {
            Some(net) if self.tls => {
                // Plain HTTP on the segment namespace's loopback, which
                // only the relay from the test's loopback reaches.
                cmd.arg(format!("--insecure-bind-address=127.0.0.1:{port}"))
                    .arg(format!("--cert-dir={}", self.pki().display()))
                    .arg(format!("--tls-san={API_ADDRESS}"))
                    .arg(format!(
                        "--bind-address={API_ADDRESS}:{}",
                        TLS_PORT + i as u16
                    ));
                crate::net::in_netns(&mut cmd, &net.segment.ns)?;
            }
            Some(net) => {
                cmd.arg("--no-tls")
                    .arg(format!("--insecure-bind-address=0.0.0.0:{port}"));
                crate::net::in_netns(&mut cmd, &net.segment.ns)?;
            }
            None => match self.component_tls_port {
                Some(tls_port) => {
                    cmd.arg(format!("--insecure-bind-address=127.0.0.1:{port}"))
                        .arg(format!("--cert-dir={}", self.pki().display()))
                        .arg(format!("--bind-address=127.0.0.1:{tls_port}"));
                }
                None => {
                    cmd.arg("--no-tls")
                        .arg(format!("--insecure-bind-address=127.0.0.1:{port}"));
                }
            },
        }
        self.apiservers[i] = Some(Guarded::spawn("apiserver", &mut cmd)?);
        let url = format!("127.0.0.1:{port}");
        // An answer, not just a connection: a relay accepts before the API
        // server behind it listens.
        // And with TLS, its CA written: components' kubeconfigs are made
        // from it as soon as this returns, and the plain port may answer
        // before the secure one is set up.
        let pki = (self.tls || self.component_tls_port.is_some()).then(|| self.pki());
        let ready = wait_for(Duration::from_secs(30), || {
            let written = pki.as_ref().is_none_or(|p| p.join("ca.crt").exists());
            (written && healthy(&url)).then_some(())
        });
        anyhow::ensure!(
            ready.is_some(),
            "apiserver did not listen on {url}:\n{}",
            std::fs::read_to_string(self.dir.path().join(&log_name)).unwrap_or_default()
        );
        Ok(())
    }

    /// Starts another control-plane component (`scheduler`,
    /// `controller-manager`, `hollow-nodes`, ...) against this API server;
    /// `log_name` names its log file. Health endpoints get free ports.
    pub fn component(&self, log_name: &str, args: &[&str]) -> anyhow::Result<Guarded> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{log_name}.log")))?;
        let mut cmd = Command::new(binary("control-plane"));
        cmd.args(args);
        let identity = match args.first() {
            Some(&c @ ("scheduler" | "controller-manager")) => Some(c),
            _ => None,
        };
        match (&self.net, identity) {
            // On a TLS node network the scheduler and the controller-manager
            // dial the API servers' HTTPS addresses with certificates of
            // their own users; with several API servers they are given
            // them all and fail over between them. They run on the node
            // network: a relay in the test's namespace would accept
            // connections for an API server that is gone.
            (Some(net), Some(c)) if self.tls => {
                cmd.arg("--kubeconfig").arg(self.component_kubeconfig(c)?);
                if self.ports.len() > 1 {
                    cmd.arg("--master").arg(self.node_tls_urls().join(","));
                }
                crate::net::in_netns(&mut cmd, &net.segment.ns)?;
            }
            (Some(net), None) if self.ports.len() > 1 => {
                cmd.arg("--master").arg(self.node_urls().join(","));
                crate::net::in_netns(&mut cmd, &net.segment.ns)?;
            }
            (None, Some(c)) if self.component_tls_port.is_some() => {
                cmd.arg("--kubeconfig").arg(self.component_kubeconfig(c)?);
            }
            _ => {
                cmd.arg("--master").arg(self.url());
            }
        }
        if matches!(args.first(), Some(&"scheduler" | &"controller-manager")) {
            // Short leases so a killed component's successor takes over fast.
            cmd.args([
                "--bind-address",
                "127.0.0.1:0",
                "--leader-elect-lease-duration",
                "3",
                "--leader-elect-retry-period",
                "1",
            ]);
        }
        Ok(Guarded::spawn(
            log_name,
            cmd.env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?)
    }

    /// A kubeconfig with a client certificate of `system:kube-COMPONENT`,
    /// naming the first API server's HTTPS address: on the node network
    /// for [`ControlPlane::start_networked_tls`], else on loopback
    /// ([`ControlPlane::start_with_component_identities`]).
    pub fn component_kubeconfig(&self, component: &str) -> anyhow::Result<PathBuf> {
        let server = match (&self.net, self.component_tls_port) {
            (Some(_), _) if self.tls => self.node_tls_urls()[0].clone(),
            (None, Some(port)) => format!("https://127.0.0.1:{port}"),
            _ => anyhow::bail!("not started with component identities"),
        };
        let out = self.dir.path().join(format!("{component}.kubeconfig"));
        if !out.exists() {
            let status = Command::new(binary("control-plane"))
                .arg("kubeconfig")
                .arg(format!("--cert-dir={}", self.pki().display()))
                .arg(format!("--user=system:kube-{component}"))
                .arg(format!("--server={server}"))
                .arg("--out")
                .arg(&out)
                .status()?;
            anyhow::ensure!(
                status.success(),
                "control-plane kubeconfig for {component} failed"
            );
        }
        Ok(out)
    }

    /// A component's log so far.
    pub fn log(&self, log_name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{log_name}.log"))).unwrap_or_default()
    }

    /// Kills the API server (SIGKILL).
    pub fn kill_apiserver(&mut self) {
        self.kill_apiserver_at(0);
    }

    /// Kills API server `i` (SIGKILL).
    pub fn kill_apiserver_at(&mut self, i: usize) {
        self.apiservers[i] = None;
    }
}

/// Whether `GET /healthz` at `addr` answers 200.
fn healthy(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}
