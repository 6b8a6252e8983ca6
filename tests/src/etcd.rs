//! A real etcd on loopback with a temporary data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::process::{wait_for, Guarded};

/// A running etcd member, stopped and its data removed on drop.
pub struct Etcd {
    process: Guarded,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// The member's name and the cluster it was started in.
    member: Member,
}

/// Who a member is within its cluster (`--name`, `--initial-cluster`).
#[derive(Clone)]
struct Member {
    name: String,
    initial_cluster: String,
}

impl Etcd {
    /// Starts a single-member etcd on free loopback ports and waits until it
    /// answers its health endpoint.
    pub fn start() -> anyhow::Result<Self> {
        let mut data = tempfile::Builder::new().prefix("kestrel-etcd-").tempdir()?;
        let mut last_err = None;
        // A port picked as free can be taken before etcd binds it: retry.
        for _ in 0..3 {
            let (client_port, peer_port) = (free_port(), free_port());
            let member = Member {
                name: "test".into(),
                initial_cluster: format!("test=http://127.0.0.1:{peer_port}"),
            };
            let process = spawn(data.path(), client_port, peer_port, &member)?;
            let mut etcd = Self {
                process,
                data,
                client_port,
                peer_port,
                member,
            };
            if etcd.wait_healthy(Duration::from_secs(20)) {
                return Ok(etcd);
            }
            last_err = Some(anyhow::anyhow!(
                "etcd did not become healthy on 127.0.0.1:{client_port}"
            ));
            etcd.process.kill();
            data = tempfile::Builder::new().prefix("kestrel-etcd-").tempdir()?;
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Starts an etcd cluster of `n` members on free loopback ports and
    /// waits until every member is healthy (which needs a quorum).
    pub fn start_cluster(n: usize) -> anyhow::Result<Vec<Self>> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, &(client_port, peer_port)) in ports.iter().enumerate() {
            let data = tempfile::Builder::new().prefix("kestrel-etcd-").tempdir()?;
            let member = Member {
                name: format!("m{i}"),
                initial_cluster: initial_cluster.clone(),
            };
            let process = spawn(data.path(), client_port, peer_port, &member)?;
            members.push(Self {
                process,
                data,
                client_port,
                peer_port,
                member,
            });
        }
        for m in &mut members {
            anyhow::ensure!(
                m.wait_healthy(Duration::from_secs(30)),
                "etcd member {} did not become healthy on {}:\n{}",
                m.member.name,
                m.client_url(),
                std::fs::read_to_string(m.data.path().join("etcd.log")).unwrap_or_default()
            );
        }
        Ok(members)
    }

    /// Whether this member's process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    fn wait_healthy(&mut self, timeout: Duration) -> bool {
        let url = self.client_url();
        wait_for(timeout, || {
            if !self.process.is_running() {
                return Some(false);
            }
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &url, "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            out.success().then_some(true)
        })
        .unwrap_or(false)
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Kills etcd (SIGKILL), keeping its data directory.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts etcd again on the same ports and data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = spawn(
            self.data.path(),
            self.client_port,
            self.peer_port,
            &self.member,
        )?;
        anyhow::ensure!(
            self.wait_healthy(Duration::from_secs(20)),
            "etcd did not come back on {}",
            self.client_url()
        );
        Ok(())
    }

    /// Runs `etcdctl` against this member and returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.client_url()])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

fn spawn(data: &Path, client_port: u16, peer_port: u16, m: &Member) -> anyhow::Result<Guarded> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("etcd.log"))?;
    let member_dir: PathBuf = data.join("member-data");
    Ok(Guarded::spawn(
        "etcd",
        Command::new("etcd")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", member_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", m.initial_cluster))
            .arg("--log-level=warn")
            .stdout(log.try_clone()?)
            .stderr(log),
    )?)
}
