//! What the bare-metal install tests (`tests/tests/dist_*`) share: the
//! release `xtask dist` lays out once per test process, `install.sh`, and
//! daemons started as the installed systemd units would start them.
//!
//! The release is made from the debug binaries (`xtask dist --bin-dir`), so
//! no release build is needed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::cluster::binary;
use crate::kubectl::Kubectl;
use crate::ports::free_port;
use crate::process::{wait_for, Guarded};

pub const BINARIES: &[&str] = &["control-plane", "agent", "kestrel-cni"];
pub const UNITS: &[&str] = &[
    "kestrel-etcd",
    "kestrel-apiserver",
    "kestrel-scheduler",
    "kestrel-controller-manager",
    "kestrel-agent",
];
/// (env file, its variable, the command whose flags it documents).
pub const DAEMONS: &[(&str, &str, &[&str])] = &[
    (
        "apiserver",
        "APISERVER_ARGS",
        &["control-plane", "apiserver"],
    ),
    (
        "scheduler",
        "SCHEDULER_ARGS",
        &["control-plane", "scheduler"],
    ),
    (
        "controller-manager",
        "CONTROLLER_MANAGER_ARGS",
        &["control-plane", "controller-manager"],
    ),
    ("agent", "AGENT_ARGS", &["agent", "run"]),
];

static RELEASE: OnceLock<tempfile::TempDir> = OnceLock::new();

/// Removes the shared release when the test process exits (statics are
/// never dropped).
extern "C" fn remove_release() {
    if let Some(dir) = RELEASE.get() {
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

/// The directory `xtask dist` writes the release and its tarball to.
pub fn dist_out() -> &'static Path {
    RELEASE
        .get_or_init(|| {
            let xtask = binary("xtask");
            let out = tempfile::Builder::new()
                .prefix("kestrel-dist-test-")
                .tempdir()
                .expect("temporary directory");
            // SAFETY: registers a plain function with no preconditions.
            unsafe { libc::atexit(remove_release) };
            let bin_dir = binary("control-plane")
                .parent()
                .expect("binaries are in a directory")
                .to_path_buf();
            let started = std::time::Instant::now();
            let status = Command::new(xtask)
                .arg("dist")
                .arg("--bin-dir")
                .arg(&bin_dir)
                .arg("--out")
                .arg(out.path())
                .status()
                .expect("run xtask dist");
            assert!(status.success(), "xtask dist failed: {status}");
            eprintln!("xtask dist took {:?}", started.elapsed());
            out
        })
        .path()
}

pub fn release_name() -> String {
    format!(
        "kestrel-{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// The unpacked release directory.
pub fn release() -> PathBuf {
    dist_out().join(release_name())
}

/// Runs `install.sh ARGS` from the release; DESTDIR is never inherited.
pub fn install(args: &[&str]) -> Output {
    let out = Command::new(release().join("install.sh"))
        .args(args)
        .env_remove("DESTDIR")
        .output()
        .expect("run install.sh");
    eprintln!(
        "install.sh {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file below `dir`, as paths relative to it.
pub fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("below base");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The words of `VAR="..."` in an environment file.
pub fn env_args(file: &Path, var: &str) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("no {var}= in {}", file.display()));
    line.trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The long flags a `--help` text lists (not --help and --version).
pub fn help_flags(command: &[&str]) -> Vec<String> {
    let out = Command::new(binary(command[0]))
        .args(&command[1..])
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    stdout(&out)
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(',').to_string())
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// `bin subcommand ARGS` parses: the flags exist and take these values
/// (`--help` stops it before it does anything).
pub fn assert_accepts(bin: &Path, subcommand: &str, args: &[String]) {
    let out = Command::new(bin)
        .arg(subcommand)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {subcommand} {args:?}: {}",
        bin.display(),
        stderr(&out)
    );
}

/// The hash install.sh prints for the CA, computed independently: SHA-256
/// of the certificate's DER encoding.
pub fn openssl_ca_hash(ca: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$1\" -outform der | sha256sum")
        .arg("sh")
        .arg(ca)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", stderr(&out));
    format!(
        "sha256:{}",
        stdout(&out).split_whitespace().next().unwrap_or("")
    )
}

/// etcd started as kestrel-etcd.service would start it: its flags from the
/// installed etcd.env, with the addresses and data directory moved to free
/// loopback ports and a temporary directory.
pub fn start_etcd(env_file: &Path, data: &Path) -> (Guarded, String) {
    let text = std::fs::read_to_string(env_file).expect("etcd.env");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new("etcd");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.env("ETCD_DATA_DIR", data)
        .env("ETCD_LISTEN_CLIENT_URLS", &client_url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &client_url)
        .env("ETCD_LISTEN_PEER_URLS", &peer_url)
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer_url)
        .env("ETCD_INITIAL_CLUSTER", format!("kestrel={peer_url}"));
    let mut etcd = Guarded::spawn("etcd", &mut cmd).expect("start etcd");
    let healthy = wait_for(Duration::from_secs(20), || {
        if !etcd.is_running() {
            return Some(false);
        }
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &client_url, "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
            .then_some(true)
    });
    assert_eq!(healthy, Some(true), "etcd from etcd.env did not start");
    (etcd, client_url)
}

/// The API server started as kestrel-apiserver.service would start it, from
/// the installed binary and APISERVER_ARGS, with absolute paths moved below
/// `root`, etcd at `etcd`, and the listener on loopback only.
pub fn start_apiserver(root: &Path, etcd: &str, port: u16) -> Guarded {
    let args: Vec<String> = env_args(&root.join("etc/kestrel/apiserver.env"), "APISERVER_ARGS")
        .into_iter()
        .map(|a| match a.split_once('=') {
            Some(("--etcd-servers", _)) => format!("--etcd-servers={etcd}"),
            Some(("--bind-address", _)) => format!("--bind-address=127.0.0.1:{port}"),
            Some((flag, path)) if path.starts_with('/') => {
                format!("{flag}={}{path}", root.display())
            }
            _ => a,
        })
        .collect();
    let mut cmd = Command::new(root.join("usr/local/bin/control-plane"));
    cmd.arg("apiserver")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guarded::spawn("apiserver", &mut cmd).expect("start the API server")
}

pub fn wait_ready(apiserver: &mut Guarded, kubeconfig: &Path) {
    let ready = wait_for(Duration::from_secs(30), || {
        if !apiserver.is_running() {
            return Some(false);
        }
        let ok = kubeconfig.exists()
            && Command::new(crate::kubectl::binary())
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["get", "--raw", "/readyz"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        ok.then_some(true)
    });
    assert_eq!(ready, Some(true), "the API server did not become ready");
}

/// `systemd-analyze verify` of `units` as installed below `root`. Units
/// they depend on (sysinit.target, …) come from this machine's systemd,
/// copied into the root so the root alone is read.
pub fn verify_units(root: &Path, units: &[&str]) {
    let lib = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&lib).expect("mkdir");
    let status = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(&lib)
        .status()
        .expect("cp");
    assert!(status.success());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units.iter().map(|u| format!("{u}.service")))
        .output()
        .expect("systemd-analyze is missing: `cargo xtask setup` installs systemd");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {units:?}: {}\n{}",
        out.status,
        stderr(&out)
    );
}

/// Replaces the client certificate and key of a kubeconfig with those of
/// another one.
pub fn swap_client_credentials(kubeconfig: &str, from: &str) -> String {
    let field = |text: &str, name: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name}"))
            .to_string()
    };
    let mut out = kubeconfig.to_string();
    for name in ["client-certificate-data", "client-key-data"] {
        out = out.replace(&field(kubeconfig, name), &field(from, name));
    }
    out
}

pub fn kubectl_create(kubectl: &Kubectl, manifest: &str) -> Output {
    let mut child = kubectl
        .command(&["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("write manifest");
    child.wait_with_output().expect("kubectl")
}

pub fn node_manifest(name: &str) -> String {
    format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#)
}

/// An `ETCD_*=value` line of an etcd environment file.
pub fn etcd_var(file: &Path, var: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("no {var} in {}", file.display()))
        .to_string()
}

/// openssl's view of a certificate: `verify` against `ca` and its text.
pub fn openssl_cert(cert: &Path, ca: &Path) -> String {
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "{} is not signed by {}: {}",
        cert.display(),
        ca.display(),
        stdout(&verify)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    stdout(&text)
}
