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
            let process = spawn(data.path(), client_port, peer_port)?;
            let mut etcd = Self {
                process,
                data,
                client_port,
                peer_port,
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
        self.process = spawn(self.data.path(), self.client_port, self.peer_port)?;
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

fn spawn(data: &Path, client_port: u16, peer_port: u16) -> anyhow::Result<Guarded> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(data.join("etcd.log"))?;
    let member_dir: PathBuf = data.join("member-data");
    Ok(Guarded::spawn(
        "etcd",
        Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", member_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=warn")
            .stdout(log.try_clone()?)
            .stderr(log),
    )?)
}
