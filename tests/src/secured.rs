//! An HTTPS API server over its own etcd with the cluster CA, and client
//! certificates of any identity, for tests of who may do what.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::binary;
use crate::etcd::Etcd;
use crate::kubectl::Kubectl;
use crate::ports::free_port;
use crate::process::{wait_for, Guarded};

/// An HTTPS API server over its own etcd, with admin and node credentials.
pub struct Secured {
    _apiserver: Guarded,
    _etcd: Etcd,
    /// Holds the PKI, the kubeconfigs and the API server's log.
    pub dir: tempfile::TempDir,
    /// The HTTPS port on loopback.
    pub port: u16,
}

/// Client certificate and key files of one identity.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Secured {
    /// Starts etcd and the API server with `extra` flags; waits until the
    /// admin is answered.
    pub fn start(extra: &[&str]) -> Self {
        let etcd = Etcd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).unwrap();
        let apiserver = Guarded::spawn(
            "apiserver",
            Command::new(binary("control-plane"))
                .args(["apiserver", "--etcd-servers", &etcd.client_url()])
                .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
                .arg(format!(
                    "--admin-kubeconfig={}",
                    dir.path().join("admin.kubeconfig").display()
                ))
                .arg(format!("--bind-address=127.0.0.1:{port}"))
                // No controller-manager makes `default` accounts here: pods
                // are checked against the node rules as they are sent.
                .arg("--disable-admission-plugins=ServiceAccount")
                .args(extra)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        let s = Self {
            _apiserver: apiserver,
            _etcd: etcd,
            dir,
            port,
        };
        let up = wait_for(Duration::from_secs(30), || {
            (s.curl(&s.admin(), "GET", "/api/v1/namespaces/default", None)
                .0
                == 200)
                .then_some(())
        });
        assert!(up.is_some(), "API server did not start:\n{}", s.log());
        s
    }

    /// The API server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// The certificate directory (the cluster CA and the admin's files).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The admin's client certificate (`system:masters`).
    pub fn admin(&self) -> Identity {
        Identity {
            cert: self.pki().join("admin.crt"),
            key: self.pki().join("admin.key"),
        }
    }

    /// kubectl with the admin kubeconfig the API server wrote.
    pub fn admin_kubectl(&self) -> Kubectl {
        Kubectl::new(&self.dir.path().join("admin.kubeconfig")).unwrap()
    }

    /// A client certificate for node `name`, as `install.sh add-node` makes.
    pub fn node(&self, name: &str) -> Identity {
        self.client(&format!("system:node:{name}"), &["system:nodes"])
    }

    /// A client certificate from the cluster CA for user `cn` in `groups`.
    pub fn client(&self, cn: &str, groups: &[&str]) -> Identity {
        let out = self.dir.path().join(cn.replace(':', "_"));
        let mut cmd = Command::new(binary("control-plane"));
        cmd.args(["certificate", "--client"]);
        for g in groups {
            cmd.arg(format!("--group={g}"));
        }
        let status = cmd
            .arg(format!("--cert-dir={}", self.pki().display()))
            .arg(format!("--cn={cn}"))
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        Identity {
            cert: out.with_extension("crt"),
            key: out.with_extension("key"),
        }
    }

    /// kubectl with node `name`'s kubeconfig, as the agent has it.
    pub fn node_kubeconfig(&self, name: &str) -> PathBuf {
        self.kubeconfig(&format!("system:node:{name}"), &["system:nodes"])
    }

    /// A kubeconfig for user `user` in `groups`, with a new client
    /// certificate from the cluster CA.
    pub fn kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let out = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", user.replace(':', "_")));
        let mut cmd = Command::new(binary("control-plane"));
        cmd.arg("kubeconfig");
        for g in groups {
            cmd.arg(format!("--group={g}"));
        }
        let status = cmd
            .arg(format!("--cert-dir={}", self.pki().display()))
            .arg(format!("--user={user}"))
            .arg(format!("--server=https://127.0.0.1:{}", self.port))
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        out
    }

    /// One request without credentials: (status code, body).
    pub fn curl_anonymous(&self, method: &str, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-m",
                "20",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
                "--cacert",
            ])
            .arg(self.pki().join("ca.crt"))
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// One request with curl: (status code, body).
    pub fn curl(
        &self,
        who: &Identity,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-m",
            "20",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "--cacert",
        ])
        .arg(self.pki().join("ca.crt"))
        .arg("--cert")
        .arg(&who.cert)
        .arg("--key")
        .arg(&who.key);
        if let Some((ct, _)) = body {
            cmd.args(["-H", &format!("Content-Type: {ct}"), "--data-binary", "@-"]);
        }
        cmd.arg(format!("https://127.0.0.1:{}{path}", self.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some((_, b)) = body {
            stdin.write_all(b.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Creates `obj` at `path` as the admin, which must succeed.
    pub fn admin_create(&self, path: &str, obj: Value) {
        let (code, body) = self.curl(
            &self.admin(),
            "POST",
            path,
            Some(("application/json", &obj.to_string())),
        );
        assert_eq!(code, 201, "creating at {path}: {body}");
    }
}
