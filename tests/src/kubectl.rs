//! The real kubectl, at a fixed version, with a private discovery cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// kubectl minor version the tests drive; the API server reports the same.
pub const MINOR: u32 = 32;

/// Path of the version-pinned kubectl binary.
pub fn binary() -> PathBuf {
    PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{MINOR}"))
}

/// kubectl bound to one kubeconfig and a fresh cache directory.
pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
    /// Overrides the kubeconfig's server (`--server`).
    server: Option<String>,
}

impl Kubectl {
    /// Uses `kubeconfig`; discovery is cached in a new temporary directory.
    pub fn new(kubeconfig: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            binary().exists(),
            "{} is missing: kubectl 1.{MINOR} is needed for the end-to-end tests",
            binary().display()
        );
        Ok(Self {
            kubeconfig: kubeconfig.to_path_buf(),
            cache: tempfile::Builder::new()
                .prefix("kubectl-cache-")
                .tempdir()?,
            server: None,
        })
    }

    /// The same kubeconfig, sent to `url` instead of its server (one API
    /// server of several).
    pub fn with_server(mut self, url: &str) -> Self {
        self.server = Some(url.to_string());
        self
    }

    /// A command with the kubeconfig and cache directory set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path());
        if let Some(url) = &self.server {
            c.arg("--server").arg(url);
        }
        c.args(args);
        c
    }

    /// Runs kubectl and returns its output, whatever the exit status.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command(args).output()?)
    }

    /// Runs kubectl, failing with its stderr unless it exits 0; returns stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(args)?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {}: exit {:?}: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs kubectl with `stdin` piped in (for `apply -f -`).
    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<Output> {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// `kubectl apply -f -` of `yaml`, panicking with kubectl's stderr when
    /// it fails: for tests, where a refused manifest is the test's failure.
    pub fn apply(&self, yaml: &str) {
        let out = self
            .run_stdin(&["apply", "-f", "-"], yaml)
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get ARGS -o json`, parsed; panics when kubectl fails.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self
            .run(&all)
            .unwrap_or_else(|e| panic!("kubectl get: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl get -o json: {e}: {out}"))
    }
}

/// kubectl's stdout; panics with what it said when it failed.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl's stderr; panics when it succeeded.
pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "kubectl should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
