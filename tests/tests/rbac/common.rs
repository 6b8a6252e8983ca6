//! The HTTPS API server over its own etcd these tests share, with kubectl
//! as the administrator or as a user of a certificate made on the spot.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::kubectl::Kubectl;
use harness::process::wait_for;

/// An HTTPS API server over its own etcd.
pub(crate) struct Cluster {
    _apiserver: harness::process::Guarded,
    _etcd: harness::etcd::Etcd,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    pub(crate) fn start() -> Self {
        let etcd = harness::etcd::Etcd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = harness::ports::free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).unwrap();
        let apiserver = harness::process::Guarded::spawn(
            "apiserver",
            Command::new(harness::cluster::binary("control-plane"))
                .args(["apiserver", "--etcd-servers", &etcd.client_url()])
                .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
                .arg(format!(
                    "--admin-kubeconfig={}",
                    dir.path().join("admin.kubeconfig").display()
                ))
                .arg(format!("--bind-address=127.0.0.1:{port}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        let c = Self {
            _apiserver: apiserver,
            _etcd: etcd,
            dir,
            port,
        };
        let up = wait_for(Duration::from_secs(30), || {
            let kc = c.dir.path().join("admin.kubeconfig");
            if !kc.exists() {
                return None;
            }
            Kubectl::new(&kc)
                .ok()?
                .run(&["get", "namespace", "default"])
                .ok()
        });
        assert!(up.is_some(), "API server did not start:\n{}", c.log());
        c
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    pub(crate) fn admin(&self) -> Kubectl {
        Kubectl::new(&self.dir.path().join("admin.kubeconfig")).unwrap()
    }

    /// kubectl with a new client certificate for `user` in `groups`.
    pub(crate) fn user(&self, user: &str, groups: &[&str]) -> Kubectl {
        let out: PathBuf = self.dir.path().join(format!("{user}.kubeconfig"));
        let mut cmd = Command::new(harness::cluster::binary("control-plane"));
        cmd.arg("kubeconfig")
            .arg(format!(
                "--cert-dir={}",
                self.dir.path().join("pki").display()
            ))
            .arg(format!("--user={user}"))
            .arg(format!("--server=https://127.0.0.1:{}", self.port))
            .arg("--out")
            .arg(&out);
        for g in groups {
            cmd.arg(format!("--group={g}"));
        }
        assert!(cmd.status().unwrap().success());
        Kubectl::new(&out).unwrap()
    }
}

pub(crate) fn stderr(k: &Kubectl, args: &[&str]) -> (bool, String) {
    let out = k.output(args).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls until `k args` succeeds (true) or is refused (false): a binding
/// reaches the authorizer through the watch, a moment after it is stored.
pub(crate) fn becomes(k: &Kubectl, args: &[&str], allowed: bool) -> bool {
    wait_for(Duration::from_secs(10), || {
        (k.output(args).unwrap().status.success() == allowed).then_some(())
    })
    .is_some()
}
