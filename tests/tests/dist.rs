//! Bare-metal installs: `cargo xtask dist` lays out a release (binaries,
//! systemd units, configuration that documents every flag, `install.sh`),
//! and `install.sh` installs a control plane and joins a node whose identity
//! it checks.
//!
//! `install.sh` runs against root prefixes (`--root DIR`) in temporary
//! directories, so it installs no package and starts no service; the test
//! plays systemd's part and starts etcd and the API server itself from the
//! installed configuration, on loopback ports. Nothing outside the temporary
//! directories changes.
//!
//! The release is made once per test process from the debug binaries
//! (`xtask dist --bin-dir`), so no release build is needed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use harness::cluster::binary;
use harness::kubectl::Kubectl;
use harness::ports::free_port;
use harness::process::{wait_for, Guarded};

const BINARIES: &[&str] = &["control-plane", "agent", "kestrel-cni"];
const UNITS: &[&str] = &[
    "kestrel-etcd",
    "kestrel-apiserver",
    "kestrel-scheduler",
    "kestrel-controller-manager",
    "kestrel-agent",
];
/// (env file, its variable, the command whose flags it documents).
const DAEMONS: &[(&str, &str, &[&str])] = &[
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
fn dist_out() -> &'static Path {
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

fn release_name() -> String {
    format!(
        "kestrel-{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// The unpacked release directory.
fn release() -> PathBuf {
    dist_out().join(release_name())
}

/// Runs `install.sh ARGS` from the release; DESTDIR is never inherited.
fn install(args: &[&str]) -> Output {
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file below `dir`, as paths relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
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

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The words of `VAR="..."` in an environment file.
fn env_args(file: &Path, var: &str) -> Vec<String> {
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
fn help_flags(command: &[&str]) -> Vec<String> {
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
fn assert_accepts(bin: &Path, subcommand: &str, args: &[String]) {
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
fn openssl_ca_hash(ca: &Path) -> String {
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

#[test]
fn a_release_holds_binaries_units_documented_configuration_and_the_installer() {
    let dir = release();
    let files = files_under(&dir);
    let mut expected: BTreeSet<String> = ["install.sh", "README.md", "VERSION"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    expected.extend(BINARIES.iter().map(|b| format!("bin/{b}")));
    expected.extend(UNITS.iter().map(|u| format!("systemd/{u}.service")));
    expected.extend(
        [
            "etcd",
            "apiserver",
            "scheduler",
            "controller-manager",
            "agent",
        ]
        .iter()
        .map(|c| format!("config/{c}.env")),
    );
    expected.insert("config/etcd-member.env".into());
    expected.insert("systemd/kestrel-etcd.service.d/member.conf".into());
    assert_eq!(files, expected);
    assert_eq!(mode(&dir.join("install.sh")), 0o755);
    for b in BINARIES {
        assert_eq!(mode(&dir.join("bin").join(b)), 0o755, "{b}");
    }
    for b in ["control-plane", "agent"] {
        let out = Command::new(dir.join("bin").join(b))
            .arg("--version")
            .output()
            .expect("run the packaged binary");
        assert!(out.status.success(), "bin/{b} --version: {}", stderr(&out));
    }

    // The tarball holds the same files under the release's name.
    let tarball = dist_out().join(format!("{}.tar.gz", release_name()));
    let out = Command::new("tar")
        .arg("-tzvf")
        .arg(&tarball)
        .output()
        .expect("tar");
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    let in_tar: BTreeSet<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.strip_prefix(&format!("{}/", release_name())))
        .map(str::to_string)
        .collect();
    assert_eq!(in_tar, expected);
    assert!(
        listing.lines().all(|l| l.contains(" 0/0 ")),
        "files in the tarball are owned by root: {listing}"
    );

    // Every flag of every daemon is documented in its environment file, and
    // the variable the unit expands is there, empty until install.sh sets it.
    for (name, var, command) in DAEMONS {
        let file = dir.join("config").join(format!("{name}.env"));
        let text = std::fs::read_to_string(&file).expect("env file");
        for flag in help_flags(command) {
            assert!(
                text.contains(&format!("#   {flag}")),
                "{name}.env does not document {flag}:\n{text}"
            );
        }
        assert!(text.ends_with(&format!("\n{var}=\"\"\n")), "{text}");
        let unit = std::fs::read_to_string(dir.join(format!("systemd/kestrel-{name}.service")))
            .expect("unit");
        assert!(
            unit.contains(&format!("EnvironmentFile=/etc/kestrel/{name}.env")),
            "{unit}"
        );
        assert!(
            unit.contains(&format!(
                "ExecStart=/usr/local/bin/{} ${var}",
                command.join(" ")
            )),
            "{unit}"
        );
    }
}

#[test]
fn install_sh_is_posix_sh_that_shellcheck_accepts() {
    let script = release().join("install.sh");
    let out = Command::new("sh")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .arg(&script)
        .output()
        .expect("shellcheck is missing: `cargo xtask setup` installs it");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn a_dry_run_prints_the_plan_and_changes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path().to_str().expect("utf-8 path");
    let out = install(&[
        "--root",
        r,
        "--dry-run",
        "control-plane",
        "--advertise-address",
        "192.0.2.10",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    for line in [
        "would install: /usr/local/bin/control-plane",
        "would install: /etc/systemd/system/kestrel-apiserver.service",
        "would install: /etc/kestrel/apiserver.env",
        "would run: systemctl enable kestrel-etcd kestrel-apiserver",
        "would run: systemctl enable kestrel-scheduler kestrel-controller-manager",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(files_under(root.path()).is_empty(), "a dry run wrote files");
    // DESTDIR is the same as --root.
    let out = Command::new(release().join("install.sh"))
        .args([
            "--dry-run",
            "control-plane",
            "--advertise-address",
            "192.0.2.10",
        ])
        .env("DESTDIR", root.path())
        .output()
        .expect("install.sh");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("would install: /usr/local/bin/control-plane"));
    assert!(files_under(root.path()).is_empty(), "a dry run wrote files");

    // Bad input is refused before anything happens.
    let out = install(&["--root", r, "control-plane", "--advertise-address", "x;y"]);
    assert!(!out.status.success());
    let out = install(&["--root", r, "add-node", "Bad_Name"]);
    assert!(!out.status.success());
    assert!(files_under(root.path()).is_empty());
}

/// etcd started as kestrel-etcd.service would start it: its flags from the
/// installed etcd.env, with the addresses and data directory moved to free
/// loopback ports and a temporary directory.
fn start_etcd(env_file: &Path, data: &Path) -> (Guarded, String) {
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
fn start_apiserver(root: &Path, etcd: &str, port: u16) -> Guarded {
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

fn wait_ready(apiserver: &mut Guarded, kubeconfig: &Path) {
    let ready = wait_for(Duration::from_secs(30), || {
        if !apiserver.is_running() {
            return Some(false);
        }
        let ok = kubeconfig.exists()
            && Command::new(harness::kubectl::binary())
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
fn verify_units(root: &Path, units: &[&str]) {
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
fn swap_client_credentials(kubeconfig: &str, from: &str) -> String {
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

fn kubectl_create(kubectl: &Kubectl, manifest: &str) -> Output {
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

fn node_manifest(name: &str) -> String {
    format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#)
}

#[test]
fn an_operator_installs_a_control_plane_and_joins_a_node_that_can_act_only_as_itself() {
    let cp = tempfile::tempdir().expect("tempdir");
    let node = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let cp_root = cp.path().to_str().expect("utf-8").to_string();
    let node_root = node.path().to_str().expect("utf-8").to_string();
    let port = free_port();
    let port_s = port.to_string();
    let control_plane = [
        "--root",
        &cp_root,
        "control-plane",
        "--advertise-address",
        "127.0.0.1",
        "--port",
        &port_s,
    ];

    // 1. The control plane's files, laid out as on a machine.
    let out = install(&control_plane);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("skipped under --root: systemctl enable kestrel-etcd kestrel-apiserver"));
    // The CA comes first, so the scheduler and controller-manager get their
    // credentials before anything starts.
    assert!(
        text.contains("made the cluster CA: /var/lib/kestrel/pki/ca.crt"),
        "{text}"
    );
    assert_eq!(mode(&cp.path().join("var/lib/kestrel/pki")), 0o700);
    assert_eq!(mode(&cp.path().join("var/lib/kestrel/pki/ca.key")), 0o600);
    for c in ["scheduler", "controller-manager"] {
        assert!(
            text.contains(&format!("written: /etc/kestrel/{c}.kubeconfig")),
            "{text}"
        );
    }
    let files = files_under(cp.path());
    for f in [
        "usr/local/bin/control-plane",
        "usr/local/bin/agent",
        "usr/local/bin/kestrel-cni",
        "etc/systemd/system/kestrel-etcd.service",
        "etc/systemd/system/kestrel-apiserver.service",
        "etc/systemd/system/kestrel-scheduler.service",
        "etc/systemd/system/kestrel-controller-manager.service",
        "etc/kestrel/etcd.env",
        "etc/kestrel/apiserver.env",
        "etc/kestrel/scheduler.env",
        "etc/kestrel/controller-manager.env",
        "etc/kestrel/apiservers",
    ] {
        assert!(files.contains(f), "{f} missing from {files:?}");
    }
    assert!(!files.contains("etc/systemd/system/kestrel-agent.service"));
    assert_eq!(
        env_args(
            &cp.path().join("etc/kestrel/apiserver.env"),
            "APISERVER_ARGS"
        ),
        [
            format!("--bind-address=0.0.0.0:{port}"),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--cert-dir=/var/lib/kestrel/pki".into(),
            "--tls-san=127.0.0.1".into(),
            format!("--advertise-url=https://127.0.0.1:{port}"),
            "--admin-kubeconfig=/etc/kestrel/admin.kubeconfig".into(),
        ]
    );

    // 2. What systemd would start: etcd from etcd.env, and the API server
    // from its binary and APISERVER_ARGS, which makes the CA on first start.
    let (_etcd, etcd_url) = start_etcd(
        &cp.path().join("etc/kestrel/etcd.env"),
        &scratch.path().join("etcd"),
    );
    let mut apiserver = start_apiserver(cp.path(), &etcd_url, port);
    let admin = cp.path().join("etc/kestrel/admin.kubeconfig");
    wait_ready(&mut apiserver, &admin);
    let ca = cp.path().join("var/lib/kestrel/pki/ca.crt");
    assert!(ca.exists());

    // 3. Run again: nothing changes, and the credentials made before the
    // API server ever ran are accepted by it.
    let out = install(&control_plane);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        !text.contains("installed:") && !text.contains("kept:") && !text.contains("written:"),
        "{text}"
    );
    assert_eq!(mode(&admin), 0o600, "the admin kubeconfig holds a key");
    for c in ["scheduler", "controller-manager"] {
        let kc = cp.path().join(format!("etc/kestrel/{c}.kubeconfig"));
        assert_eq!(mode(&kc), 0o600);
        Kubectl::new(&kc)
            .expect("kubectl")
            .run(&["get", "nodes"])
            .unwrap_or_else(|e| panic!("{c}'s credentials: {e:#}"));
    }

    // 4. The node's credentials, and the hash the operator carries to the node.
    let out = install(&["--root", &cp_root, "add-node", "node-a"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let hash = text
        .split_whitespace()
        .skip_while(|w| *w != "--ca-cert-hash")
        .nth(1)
        .expect("add-node prints the join command")
        .to_string();
    assert_eq!(hash, openssl_ca_hash(&ca));
    let out = install(&["--root", &cp_root, "ca-cert-hash"]);
    assert_eq!(stdout(&out).trim(), hash);
    let bundle_path = cp.path().join("etc/kestrel/nodes/node-a.kubeconfig");
    assert_eq!(mode(&bundle_path), 0o600);
    let bundle = std::fs::read_to_string(&bundle_path).expect("node kubeconfig");
    // What the operator copied to the node.
    let copied = scratch.path().join("node-a.kubeconfig");
    std::fs::write(&copied, &bundle).expect("write");
    let copied_s = copied.to_str().expect("utf-8").to_string();

    // 5. Joins that must be refused, each before anything is installed.
    let join = |kubeconfig: &str, hash: &str, name: &str, extra: &[&str]| -> Output {
        let mut args = vec![
            "--root",
            &node_root,
            "join",
            "--kubeconfig",
            kubeconfig,
            "--ca-cert-hash",
            hash,
            "--node-name",
            name,
            "--node-ip",
            "192.0.2.11",
        ];
        args.extend_from_slice(extra);
        install(&args)
    };
    let mut wrong_hash = hash.clone();
    let last = wrong_hash.pop().expect("non-empty");
    wrong_hash.push(if last == '0' { '1' } else { '0' });
    let out = join(&copied_s, &wrong_hash, "node-a", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not the cluster's"),
        "{}",
        stderr(&out)
    );

    let out = join(&copied_s, &hash, "node-b", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not for this node"),
        "{}",
        stderr(&out)
    );

    // The admin's certificate is signed by the same CA but is no node's.
    let admin_creds = scratch.path().join("admin-as-node.kubeconfig");
    std::fs::write(
        &admin_creds,
        swap_client_credentials(&bundle, &std::fs::read_to_string(&admin).expect("admin")),
    )
    .expect("write");
    let out = join(admin_creds.to_str().expect("utf-8"), &hash, "node-a", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("kubernetes-admin"),
        "{}",
        stderr(&out)
    );

    // Another cluster's API server (its own CA) is not trusted.
    let other_port = free_port();
    let other_pki = scratch.path().join("other-pki");
    let mut other = Guarded::spawn(
        "other apiserver",
        Command::new(binary("control-plane"))
            .arg("apiserver")
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address=127.0.0.1:{other_port}"))
            .arg("--cert-dir")
            .arg(&other_pki)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start");
    let other_url = format!("https://127.0.0.1:{other_port}");
    let up = wait_for(Duration::from_secs(30), || {
        if !other.is_running() {
            return Some(false);
        }
        Command::new("curl")
            .args(["-skf", &format!("{other_url}/readyz")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(true)
    });
    assert_eq!(up, Some(true), "the other API server did not start");
    let out = join(&copied_s, &hash, "node-a", &["--server", &other_url]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not prove"), "{}", stderr(&out));
    drop(other);
    assert!(
        files_under(node.path()).is_empty(),
        "a refused join installed files"
    );

    // 6. The join that succeeds.
    let out = join(&copied_s, &hash, "node-a", &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("CA matches {hash}")), "{text}");
    assert!(text.contains("credentials are for node node-a"), "{text}");
    assert!(text.contains("accepts node node-a"), "{text}");
    assert!(
        text.contains("skipped under --root: systemctl enable kestrel-agent"),
        "{text}"
    );
    let files = files_under(node.path());
    for f in [
        "usr/local/bin/agent",
        "etc/systemd/system/kestrel-agent.service",
        "etc/kestrel/agent.env",
        "etc/kestrel/agent.kubeconfig",
    ] {
        assert!(files.contains(f), "{f} missing from {files:?}");
    }
    assert!(!files
        .iter()
        .any(|f| f.contains("apiserver") || f.contains("etcd")));
    let agent_kubeconfig = node.path().join("etc/kestrel/agent.kubeconfig");
    assert_eq!(mode(&agent_kubeconfig), 0o600);
    assert_eq!(
        std::fs::read_to_string(&agent_kubeconfig).expect("read"),
        bundle
    );
    let agent_args = env_args(&node.path().join("etc/kestrel/agent.env"), "AGENT_ARGS");
    assert_eq!(
        agent_args,
        [
            "--kubeconfig=/etc/kestrel/agent.kubeconfig",
            "--node-name=node-a",
            "--service-cgroup=/",
            "--node-ip=192.0.2.11"
        ]
    );
    // The agent accepts these flags.
    assert_accepts(&node.path().join("usr/local/bin/agent"), "run", &agent_args);

    // A second join changes nothing.
    let out = join(&copied_s, &hash, "node-a", &[]);
    assert!(out.status.success());
    assert!(!stdout(&out).contains("installed:"), "{}", stdout(&out));

    // 7. The node's credentials act as node-a and nothing more: it may
    // change its own Node but not another's.
    let admin_kubectl = Kubectl::new(&admin).expect("kubectl");
    let out = kubectl_create(&admin_kubectl, &node_manifest("node-b"));
    assert!(out.status.success(), "{}", stderr(&out));
    let as_node = Kubectl::new(&agent_kubeconfig).expect("kubectl");
    let out = kubectl_create(&as_node, &node_manifest("node-a"));
    assert!(
        out.status.success(),
        "node-a creating its Node: {}",
        stderr(&out)
    );
    as_node
        .run(&["label", "node", "node-a", "kestrel.test/own=yes"])
        .expect("node-a labels its own Node");
    let out = as_node
        .output(&["label", "node", "node-b", "kestrel.test/other=yes"])
        .expect("kubectl");
    assert!(!out.status.success(), "node-a changed node-b's Node");
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));

    // 8. Every installed unit passes systemd-analyze verify (ExecStart
    // binaries included: etcd comes from this machine's etcd-server).
    std::fs::create_dir_all(cp.path().join("usr/bin")).expect("mkdir");
    std::fs::copy("/usr/bin/etcd", cp.path().join("usr/bin/etcd")).expect("copy etcd");
    verify_units(
        cp.path(),
        &[
            "kestrel-etcd",
            "kestrel-apiserver",
            "kestrel-scheduler",
            "kestrel-controller-manager",
        ],
    );
    verify_units(node.path(), &["kestrel-agent"]);
}

/// Machine `i` of a test's machines, which must still be up.
fn m(machines: &[Option<Machine>], i: usize) -> &Machine {
    machines[i].as_ref().expect("machine is up")
}

/// An `ETCD_*=value` line of an etcd environment file.
fn etcd_var(file: &Path, var: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("no {var} in {}", file.display()))
        .to_string()
}

/// openssl's view of a certificate: `verify` against `ca` and its text.
fn openssl_cert(cert: &Path, ca: &Path) -> String {
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

#[test]
fn three_control_planes_share_one_ca_and_lay_out_an_etcd_cluster_over_tls() {
    let peers = "192.0.2.11,192.0.2.12,192.0.2.13";
    let roots: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let root = |i: usize| roots[i].path().to_str().expect("utf-8").to_string();
    let scratch = tempfile::tempdir().expect("tempdir");
    let cp = |i: usize, extra: &[&str]| -> Output {
        let r = root(i);
        let address = format!("192.0.2.1{}", i + 1);
        let mut args = vec![
            "--root",
            &r,
            "control-plane",
            "--advertise-address",
            &address,
            "--peers",
            peers,
        ];
        args.extend_from_slice(extra);
        install(&args)
    };

    // Bad peer lists are refused before anything is written.
    let r = root(1);
    for (bad, says) in [
        ("192.0.2.11,192.0.2.13,192.0.2.14", "own address"),
        ("192.0.2.11,192.0.2.12", "give 3, 5 or 7"),
        ("192.0.2.11,192.0.2.12,192.0.2.12", "listed twice"),
        ("192.0.2.11,192.0.2.12,x", "not an IP address"),
    ] {
        let out = install(&[
            "--root",
            &r,
            "control-plane",
            "--advertise-address",
            "192.0.2.12",
            "--peers",
            bad,
        ]);
        assert!(!out.status.success(), "--peers {bad} was accepted");
        assert!(
            stderr(&out).contains(says),
            "--peers {bad}: {}",
            stderr(&out)
        );
    }
    assert!(files_under(roots[1].path()).is_empty());

    // 1. The first control plane makes the CA and its member's certificate.
    let out = cp(0, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("made the cluster CA"), "{text}");
    assert!(text.contains(&format!("--peers {peers} --ca")), "{text}");
    // A member waits for its peers, so nothing blocks on starting it.
    assert!(
        text.contains("skipped under --root: systemctl restart --no-block kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager"),
        "{text}"
    );
    let r0 = roots[0].path();
    let ca = r0.join("var/lib/kestrel/pki/ca.crt");
    let env = r0.join("etc/kestrel/etcd.env");
    assert_eq!(etcd_var(&env, "ETCD_NAME"), "etcd-192-0-2-11");
    assert_eq!(
        etcd_var(&env, "ETCD_INITIAL_CLUSTER"),
        "etcd-192-0-2-11=https://192.0.2.11:2380,etcd-192-0-2-12=https://192.0.2.12:2380,etcd-192-0-2-13=https://192.0.2.13:2380"
    );
    assert_eq!(
        etcd_var(&env, "ETCD_LISTEN_PEER_URLS"),
        "https://192.0.2.11:2380"
    );
    assert_eq!(etcd_var(&env, "ETCD_CLIENT_CERT_AUTH"), "true");
    assert_eq!(etcd_var(&env, "ETCD_PEER_CLIENT_CERT_AUTH"), "true");
    assert!(!std::fs::read_to_string(&env)
        .expect("etcd.env")
        .contains('@'));
    let member = openssl_cert(&r0.join("var/lib/kestrel/pki/etcd/member.crt"), &ca);
    assert!(member.contains("IP Address:192.0.2.11"), "{member}");
    assert!(member.contains("IP Address:127.0.0.1"), "{member}");
    assert!(
        member.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{member}"
    );
    assert_eq!(mode(&r0.join("var/lib/kestrel/pki/etcd/member.key")), 0o600);
    let client = openssl_cert(
        &r0.join("var/lib/kestrel/pki/apiserver-etcd-client.crt"),
        &ca,
    );
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    assert!(!client.contains("Server Authentication"), "{client}");
    assert_eq!(
        env_args(&r0.join("etc/kestrel/apiserver.env"), "APISERVER_ARGS"),
        [
            "--bind-address=0.0.0.0:6443",
            "--etcd-servers=https://192.0.2.11:2379,https://192.0.2.12:2379,https://192.0.2.13:2379",
            "--etcd-cafile=/var/lib/kestrel/pki/ca.crt",
            "--etcd-certfile=/var/lib/kestrel/pki/apiserver-etcd-client.crt",
            "--etcd-keyfile=/var/lib/kestrel/pki/apiserver-etcd-client.key",
            "--cert-dir=/var/lib/kestrel/pki",
            "--tls-san=192.0.2.11",
            "--advertise-url=https://192.0.2.11:6443",
            "--admin-kubeconfig=/etc/kestrel/admin.kubeconfig",
        ]
    );
    // The scheduler and controller-manager start with this machine's API
    // server and fail over to the others.
    for (c, var) in [
        ("scheduler", "SCHEDULER_ARGS"),
        ("controller-manager", "CONTROLLER_MANAGER_ARGS"),
    ] {
        assert_eq!(
            env_args(&r0.join(format!("etc/kestrel/{c}.env")), var),
            ["--master=https://127.0.0.1:6443,https://192.0.2.12:6443,https://192.0.2.13:6443"]
        );
    }
    // The API server and the components accept these flags.
    let args = env_args(&r0.join("etc/kestrel/apiserver.env"), "APISERVER_ARGS");
    assert_accepts(&binary("control-plane"), "apiserver", &args);

    // 2. The others get a copy of the CA. A wrong copy is refused.
    let copied = scratch.path().join("ca");
    std::fs::create_dir_all(&copied).expect("mkdir");
    let copied_s = copied.to_str().expect("utf-8").to_string();
    std::fs::copy(&ca, copied.join("ca.crt")).expect("copy");
    let out = cp(1, &["--ca", &copied_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no ca.key"), "{}", stderr(&out));
    let other = scratch.path().join("other");
    let made = Command::new(binary("control-plane"))
        .args(["ca", "--cert-dir"])
        .arg(&other)
        .status()
        .expect("control-plane ca");
    assert!(made.success());
    std::fs::copy(other.join("ca.key"), copied.join("ca.key")).expect("copy");
    let out = cp(1, &["--ca", &copied_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not the key"), "{}", stderr(&out));
    assert!(
        files_under(roots[1].path()).is_empty(),
        "a refused install wrote files"
    );

    std::fs::copy(r0.join("var/lib/kestrel/pki/ca.key"), copied.join("ca.key")).expect("copy");
    for i in [1, 2] {
        let out = cp(i, &["--ca", &copied_s]);
        assert!(out.status.success(), "{}", stderr(&out));
        let ri = roots[i].path();
        assert_eq!(
            std::fs::read(ri.join("var/lib/kestrel/pki/ca.crt")).expect("ca"),
            std::fs::read(&ca).expect("ca")
        );
        assert_eq!(mode(&ri.join("var/lib/kestrel/pki/ca.key")), 0o600);
        // Its member's certificate comes from the shared CA, for its own address.
        let member = openssl_cert(&ri.join("var/lib/kestrel/pki/etcd/member.crt"), &ca);
        assert!(
            member.contains(&format!("IP Address:192.0.2.1{}", i + 1)),
            "{member}"
        );
        assert_eq!(
            etcd_var(&ri.join("etc/kestrel/etcd.env"), "ETCD_INITIAL_CLUSTER"),
            etcd_var(&env, "ETCD_INITIAL_CLUSTER"),
            "every member is given the same cluster"
        );
    }
    // Given another cluster's CA later, a control plane refuses it.
    std::fs::copy(other.join("ca.crt"), copied.join("ca.crt")).expect("copy");
    std::fs::copy(other.join("ca.key"), copied.join("ca.key")).expect("copy");
    let out = cp(1, &["--ca", &copied_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another CA"), "{}", stderr(&out));

    // A member run again without --peers is refused; so is a machine with a
    // single control plane given --peers.
    let out = install(&[
        "--root",
        &root(1),
        "control-plane",
        "--advertise-address",
        "192.0.2.12",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("same --peers"), "{}", stderr(&out));
    let single = tempfile::tempdir().expect("tempdir");
    let single_root = single.path().to_str().expect("utf-8").to_string();
    let single_cp = |extra: &[&str]| -> Output {
        let mut args = vec![
            "--root",
            &single_root,
            "control-plane",
            "--advertise-address",
            "192.0.2.11",
        ];
        args.extend_from_slice(extra);
        install(&args)
    };
    assert!(single_cp(&[]).status.success());
    let out = single_cp(&["--peers", peers]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("single control plane"),
        "{}",
        stderr(&out)
    );

    // 3. A node learns every API server, this control plane's first.
    let out = install(&["--root", &root(1), "add-node", "node-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let servers = "https://192.0.2.12:6443,https://192.0.2.11:6443,https://192.0.2.13:6443";
    assert!(
        stdout(&out).contains(&format!("--node-name node-a --server {servers}")),
        "{}",
        stdout(&out)
    );
    let bundle = roots[1].path().join("etc/kestrel/nodes/node-a.kubeconfig");
    let text = std::fs::read_to_string(&bundle).expect("kubeconfig");
    assert!(text.contains("server: https://192.0.2.12:6443\n"), "{text}");
    let hash = stdout(&install(&["--root", &root(1), "ca-cert-hash"]))
        .trim()
        .to_string();
    let node = tempfile::tempdir().expect("tempdir");
    let node_root = node.path().to_str().expect("utf-8").to_string();
    let out = install(&[
        "--root",
        &node_root,
        "join",
        "--kubeconfig",
        bundle.to_str().expect("utf-8"),
        "--ca-cert-hash",
        &hash,
        "--node-name",
        "node-a",
        "--server",
        servers,
        "--skip-server-check",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agent_args = env_args(&node.path().join("etc/kestrel/agent.env"), "AGENT_ARGS");
    assert_eq!(
        agent_args,
        [
            "--kubeconfig=/etc/kestrel/agent.kubeconfig",
            "--node-name=node-a",
            "--service-cgroup=/",
            &format!("--master={servers}"),
        ]
    );
    assert_accepts(&binary("agent"), "run", &agent_args);

    // 4. etcd's unit with the member's drop-in passes systemd-analyze.
    std::fs::create_dir_all(r0.join("usr/bin")).expect("mkdir");
    std::fs::copy("/usr/bin/etcd", r0.join("usr/bin/etcd")).expect("copy etcd");
    assert!(r0
        .join("etc/systemd/system/kestrel-etcd.service.d/member.conf")
        .exists());
    verify_units(r0, &["kestrel-etcd", "kestrel-apiserver"]);
}

#[test]
fn the_vagrantfile_is_valid() {
    // A copy, so what the Vagrantfile stages when read (`.kestrel/`) stays
    // out of the checkout.
    let dir = tempfile::tempdir().expect("tempdir");
    let vagrantfile = dir.path().join("Vagrantfile");
    std::fs::copy(
        harness::workspace_root().join("vagrant/Vagrantfile"),
        &vagrantfile,
    )
    .expect("copy the Vagrantfile");
    let out = Command::new("ruby")
        .arg("-c")
        .arg(&vagrantfile)
        .output()
        .expect("ruby is missing: `cargo xtask setup` installs vagrant, which brings it");
    assert!(out.status.success(), "{}", stderr(&out));
    // Vagrant reads the file for real: machine definitions, provisioners
    // (whose upload sources must exist), triggers, and the libvirt
    // provider's settings; no box is needed.
    let home = tempfile::tempdir().expect("tempdir");
    let validate = |control_planes: &str| -> Output {
        Command::new("vagrant")
            .arg("validate")
            .current_dir(dir.path())
            .env("VAGRANT_HOME", home.path())
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("KESTREL_CONTROL_PLANES", control_planes)
            .output()
            .expect("vagrant is missing: `cargo xtask setup` installs it")
    };
    // One control plane, and three (cp, cp-2 and cp-3 with --peers).
    for n in ["1", "3"] {
        let out = validate(n);
        assert!(
            out.status.success() && stdout(&out).contains("validated successfully"),
            "vagrant validate with {n} control planes: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let out = validate("2");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must be 1, 3, 5 or 7"),
        "{}",
        stderr(&out)
    );
}

/// A Debian 12 root file system with systemd, etcd-server and what
/// install.sh needs, made once with debootstrap from Debian's mirror and
/// kept in `~/.cache/kestrel/` (later runs copy it).
fn debian_rootfs() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cache = PathBuf::from(home).join(".cache/kestrel");
    let base = cache.join("rootfs-bookworm-systemd");
    if base.join(".complete").exists() {
        return base;
    }
    std::fs::create_dir_all(&cache).expect("mkdir");
    // Built beside and renamed, so a killed run never leaves half a tree
    // that looks complete.
    let partial = cache.join(format!("rootfs-partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    eprintln!(
        "building {} with debootstrap (once; about two minutes)",
        base.display()
    );
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,etcd-server,curl,openssl,libseccomp2,iproute2,ca-certificates",
            "bookworm",
        ])
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap is missing: `cargo xtask setup` installs it");
    assert!(
        out.status.success(),
        "debootstrap: {}{}",
        stdout(&out),
        stderr(&out)
    );
    std::fs::write(partial.join(".complete"), "").expect("mark");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::rename(&partial, &base).expect("rename");
    base
}

/// A machine: the Debian root booted by systemd-nspawn with systemd as its
/// init, in a network namespace the test made. The root is read-only with
/// a tmpfs over it (`--volatile=overlay`), so the cached tree is never
/// changed and nothing is copied; the release comes in by a read-only bind
/// mount at /opt/kestrel, and `/root/xfer` is a directory shared with the
/// test. Killed on drop.
struct Machine {
    nspawn: Guarded,
    leader: u32,
    /// The host side of `/root/xfer`.
    xfer: PathBuf,
}

impl Machine {
    fn boot(base: &Path, dir: &Path, name: &str, netns: &harness::net::Netns) -> Self {
        let xfer = dir.join(format!("{name}-xfer"));
        std::fs::create_dir_all(&xfer).expect("mkdir");
        let log = std::fs::File::create(dir.join(format!("{name}.console"))).expect("log");
        // systemd sets the host name from /etc/hostname, over nspawn's.
        let hostname = dir.join(format!("{name}.hostname"));
        std::fs::write(&hostname, format!("{name}\n")).expect("hostname");
        // --register=no and --keep-unit: no machined or host systemd needed.
        let nspawn = Guarded::spawn(
            "systemd-nspawn",
            Command::new("systemd-nspawn")
                .arg("--directory")
                .arg(base)
                .args(["--boot", "--volatile=overlay"])
                .arg(format!("--machine={name}"))
                .arg(format!("--hostname={name}"))
                .arg(format!("--bind-ro={}:/etc/hostname", hostname.display()))
                .arg(format!(
                    "--network-namespace-path={}",
                    netns.path().display()
                ))
                .arg(format!("--bind-ro={}:/opt/kestrel", release().display()))
                .arg(format!(
                    "--bind-ro={}:/usr/local/lib/kubectl",
                    harness::kubectl::binary().display()
                ))
                .arg(format!("--bind={}:/root/xfer", xfer.display()))
                .args(["--register=no", "--keep-unit", "--quiet"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        )
        .expect("systemd-nspawn is missing: `cargo xtask setup` installs systemd-container");
        let pid = nspawn.pid();
        // nspawn forks short-lived helpers too: the leader is the child
        // that has become systemd.
        let leader = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()?
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .find(|c| {
                    std::fs::read_to_string(format!("/proc/{c}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
        })
        .expect("the container's init started");
        let mut machine = Self {
            nspawn,
            leader,
            xfer,
        };
        let started = std::time::Instant::now();
        let booted = wait_for(Duration::from_secs(150), || {
            if !machine.nspawn.is_running() {
                return Some(false);
            }
            let out = machine.sh("systemctl is-system-running");
            let state = stdout(&out);
            (state.starts_with("running") || state.starts_with("degraded")).then_some(true)
        });
        if booted != Some(true) {
            let state = machine.sh(
                "systemctl is-system-running; systemctl list-jobs --no-pager; systemctl --failed --no-pager",
            );
            panic!(
                "{name} did not boot: {}{}\nconsole:\n{}",
                stdout(&state),
                stderr(&state),
                std::fs::read_to_string(dir.join(format!("{name}.console"))).unwrap_or_default()
            );
        }
        eprintln!("{name} booted in {:?}", started.elapsed());
        machine
    }

    /// Runs a shell command inside the machine, as root, with a clean
    /// environment.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "sh",
                "-c",
                script,
            ])
            .output()
            .expect("nsenter")
    }

    /// Like `sh`, failing with the output unless it exits 0.
    fn run(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The container's init is PID 1 of its PID namespace: killing it
        // ends every process in the container at once, and nspawn exits
        // with it, taking its mounts along.
        // SAFETY: plain signal delivery to a process of ours.
        unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
        let _ = wait_for(Duration::from_secs(10), || {
            (!self.nspawn.is_running()).then_some(())
        });
        self.nspawn.kill();
    }
}

#[test]
fn install_sh_provisions_a_control_plane_and_a_node_for_real_under_systemd() {
    harness::require_root("containers and network namespaces");
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let base = debian_rootfs();
    step("root file system ready");
    let dir = tempfile::Builder::new()
        .prefix("kestrel-machines-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    // Two machines on one link of their own; nothing reaches the host's
    // interfaces.
    let cp_net = harness::net::Netns::new("cp").expect("netns");
    let node_net = harness::net::Netns::new("nd").expect("netns");
    let (cp_if, node_if) = harness::net::veth_between(&cp_net, &node_net, "v").expect("veth");
    cp_net.addr_up(&cp_if, "10.88.0.1/24").expect("address");
    node_net.addr_up(&node_if, "10.88.0.2/24").expect("address");

    let cp = Machine::boot(&base, dir.path(), "kcp", &cp_net);
    let node = Machine::boot(&base, dir.path(), "knode", &node_net);

    step("machines booted");
    // The control plane, as an operator runs it.
    let text = cp.run("/opt/kestrel/install.sh control-plane --advertise-address 10.88.0.1");
    assert!(
        text.contains("control plane: https://10.88.0.1:6443"),
        "{text}"
    );
    let units = "kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager";
    let active = |m: &Machine, units: &str| -> bool {
        m.sh(&format!("systemctl is-active --quiet {units}"))
            .status
            .success()
    };
    assert!(
        active(&cp, units),
        "{}",
        cp.run(&format!("systemctl status --no-pager {units} || true"))
    );
    assert!(
        !active(&cp, "etcd"),
        "Debian's own etcd.service was left running"
    );
    step("control plane installed");
    let kubectl = "/usr/local/lib/kubectl --kubeconfig /etc/kestrel/admin.kubeconfig";
    // Both components hold their Leases, with their own certificates.
    let leases = wait_for(Duration::from_secs(30), || {
        let out = cp.sh(&format!("{kubectl} get leases -n kube-system -o name"));
        let text = stdout(&out);
        (text.contains("kube-scheduler") && text.contains("kube-controller-manager")).then_some(())
    });
    assert!(
        leases.is_some(),
        "the scheduler and controller-manager did not take their leases"
    );
    step("leases held");
    // Running it again changes nothing and leaves everything running.
    let text = cp.run("/opt/kestrel/install.sh control-plane --advertise-address 10.88.0.1");
    assert!(
        !text.contains("installed:") && !text.contains("written:"),
        "{text}"
    );
    assert!(active(&cp, units));

    step("second run done");
    // The node's credentials travel as a file (here: through the test), the
    // hash as text.
    cp.run("/opt/kestrel/install.sh add-node knode && cp /etc/kestrel/nodes/knode.kubeconfig /root/xfer/");
    let hash = cp
        .run("/opt/kestrel/install.sh ca-cert-hash")
        .trim()
        .to_string();
    std::fs::copy(
        cp.xfer.join("knode.kubeconfig"),
        node.xfer.join("knode.kubeconfig"),
    )
    .expect("copy the credentials");
    // The node's name defaults to its host name.
    let text = node.run(&format!(
        "/opt/kestrel/install.sh join --kubeconfig /root/xfer/knode.kubeconfig --ca-cert-hash {hash} --node-ip 10.88.0.2"
    ));
    assert!(text.contains("accepts node knode"), "{text}");
    assert!(node
        .run("cat /etc/kestrel/agent.env")
        .contains("--node-name=knode"));

    step("node joined");
    // The unit started the agent, which registered the Node with the
    // installed credentials. It then stops: the container may not load eBPF
    // programs.
    let registered = wait_for(Duration::from_secs(30), || {
        cp.sh(&format!("{kubectl} get node knode"))
            .status
            .success()
            .then_some(())
    });
    assert!(
        registered.is_some(),
        "kestrel-agent did not register knode: {}",
        node.run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    // As a node without pods it keeps running: status and Lease are the
    // real thing.
    node.run(
        "sed -i 's/^AGENT_ARGS=\"\\(.*\\)\"$/AGENT_ARGS=\"\\1 --no-pods\"/' /etc/kestrel/agent.env \
         && systemctl restart kestrel-agent",
    );
    let restarts = || node.run("systemctl show -p NRestarts --value kestrel-agent");
    let before = restarts();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        active(&node, "kestrel-agent") && restarts() == before,
        "kestrel-agent does not stay up: {}",
        node.run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    let ready = wait_for(Duration::from_secs(60), || {
        let out = cp.sh(&format!(
            "{kubectl} get node knode -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}} {{.spec.podCIDR}}' \
             && {kubectl} get lease -n kube-node-lease knode -o name"
        ));
        let text = stdout(&out);
        (text.starts_with("True 10.244.") && text.contains("lease")).then_some(text)
    });
    assert!(
        ready.is_some(),
        "knode did not become Ready with a pod CIDR and a Lease: {}",
        node.run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    step("node Ready");
}

#[test]
fn install_sh_provisions_three_control_planes_that_keep_serving_when_one_machine_dies() {
    harness::require_root("containers and network namespaces");
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let base = debian_rootfs();
    let dir = tempfile::Builder::new()
        .prefix("kestrel-machines-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    // Four machines on one switch of their own; nothing reaches the host's
    // interfaces.
    let switch = harness::net::Segment::new().expect("segment");
    let names = ["kcp1", "kcp2", "kcp3", "knode"];
    let addresses = ["10.88.0.1", "10.88.0.2", "10.88.0.3", "10.88.0.10"];
    let nets: Vec<harness::net::Netns> = names
        .iter()
        .zip(addresses)
        .map(|(name, address)| {
            let net = harness::net::Netns::new(&name[1..]).expect("netns");
            let link = switch.attach(&net).expect("attach");
            net.addr_up(&link, &format!("{address}/24"))
                .expect("address");
            net
        })
        .collect();
    let mut machines: Vec<Option<Machine>> = std::thread::scope(|s| {
        let booting: Vec<_> = names
            .iter()
            .zip(&nets)
            .map(|(name, net)| s.spawn(|| Machine::boot(&base, dir.path(), name, net)))
            .collect();
        booting
            .into_iter()
            .map(|b| Some(b.join().expect("boot")))
            .collect()
    });
    step("machines booted");
    let peers = addresses[..3].join(",");
    let units = "kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager";
    let kubectl = "/usr/local/lib/kubectl --kubeconfig /etc/kestrel/admin.kubeconfig";

    // The first control plane makes the CA; its etcd member waits for a
    // majority, so its API server is not up yet.
    let text = m(&machines, 0).run(&format!(
        "/opt/kestrel/install.sh control-plane --advertise-address 10.88.0.1 --peers {peers}"
    ));
    assert!(text.contains("etcd waits for a majority"), "{text}");
    m(&machines, 0).run("mkdir -p /root/xfer/ca && cp /var/lib/kestrel/pki/ca.crt /var/lib/kestrel/pki/ca.key /root/xfer/ca/");
    step("first control plane installed");
    for i in [1, 2] {
        let to = m(&machines, i).xfer.join("ca");
        std::fs::create_dir_all(&to).expect("mkdir");
        for f in ["ca.crt", "ca.key"] {
            std::fs::copy(m(&machines, 0).xfer.join("ca").join(f), to.join(f))
                .expect("copy the CA");
        }
        // From the second on, etcd has a majority and the API server answers.
        let text = m(&machines, i).run(&format!(
            "/opt/kestrel/install.sh control-plane --advertise-address {} --peers {peers} --ca /root/xfer/ca",
            addresses[i]
        ));
        assert!(
            text.contains(&format!("control plane: https://{}:6443", addresses[i])),
            "{text}"
        );
        assert!(!text.contains("etcd waits"), "{text}");
        step(&format!("control plane {} installed", i + 1));
    }
    let all_active = wait_for(Duration::from_secs(60), || {
        (0..3)
            .all(|i| {
                m(&machines, i)
                    .sh(&format!("systemctl is-active --quiet {units}"))
                    .status
                    .success()
            })
            .then_some(())
    });
    assert!(
        all_active.is_some(),
        "{}",
        m(&machines, 0).run(&format!("systemctl status --no-pager {units} || true"))
    );
    // Every API server sees the three members and both leaders.
    let healthy = |m: &Machine, want: &[&str]| -> Option<String> {
        let out = m.sh(&format!(
            "{kubectl} get cs -o jsonpath='{{range .items[*]}}{{.metadata.name}}={{.conditions[0].status}} {{end}}'"
        ));
        let text = stdout(&out);
        want.iter().all(|w| text.contains(w)).then_some(text)
    };
    let everything = [
        "etcd-0=True",
        "etcd-1=True",
        "etcd-2=True",
        "scheduler=True",
        "controller-manager=True",
    ];
    for i in 0..3 {
        let ok = wait_for(Duration::from_secs(60), || {
            healthy(m(&machines, i), &everything)
        });
        assert!(
            ok.is_some(),
            "kcp{}: {}",
            i + 1,
            stdout(&m(&machines, i).sh(&format!("{kubectl} get cs")))
        );
    }
    step("three control planes healthy");
    // Service default/kubernetes leads to the three API servers.
    let api_endpoints = |m: &Machine| -> String {
        stdout(&m.sh(&format!(
            "{kubectl} get endpoints kubernetes -o jsonpath='{{.subsets[*].addresses[*].ip}}'"
        )))
        .trim()
        .to_string()
    };
    let all_three = wait_for(Duration::from_secs(60), || {
        (api_endpoints(m(&machines, 0)) == "10.88.0.1 10.88.0.2 10.88.0.3").then_some(())
    });
    assert!(all_three.is_some(), "{}", api_endpoints(m(&machines, 0)));

    // A node joins with every API server.
    let text = m(&machines, 0).run(
        "/opt/kestrel/install.sh add-node knode && cp /etc/kestrel/nodes/knode.kubeconfig /root/xfer/",
    );
    let join = text
        .lines()
        .find(|l| l.contains("install.sh join"))
        .expect("add-node prints the join command")
        .trim()
        .to_string();
    assert!(
        join.ends_with(
            "--server https://10.88.0.1:6443,https://10.88.0.2:6443,https://10.88.0.3:6443"
        ),
        "{join}"
    );
    std::fs::copy(
        m(&machines, 0).xfer.join("knode.kubeconfig"),
        m(&machines, 3).xfer.join("knode.kubeconfig"),
    )
    .expect("copy the credentials");
    let text = m(&machines, 3).run(&format!(
        "cd /root/xfer && /opt/kestrel/{} --node-ip 10.88.0.10",
        join.trim_start_matches("./")
    ));
    for a in &addresses[..3] {
        assert!(
            text.contains(&format!(
                "the API server at https://{a}:6443 accepts node knode"
            )),
            "{text}"
        );
    }
    // The container may not load eBPF programs: a node without pods, whose
    // status and Lease are the real thing.
    m(&machines, 3).run(
        "sed -i 's/^AGENT_ARGS=\"\\(.*\\)\"$/AGENT_ARGS=\"\\1 --no-pods\"/' /etc/kestrel/agent.env \
         && systemctl restart kestrel-agent",
    );
    let renewed = |m: &Machine| -> Option<String> {
        let out = m.sh(&format!(
            "{kubectl} get lease -n kube-node-lease knode -o jsonpath='{{.spec.renewTime}}'"
        ));
        let t = stdout(&out).trim().to_string();
        (out.status.success() && !t.is_empty()).then_some(t)
    };
    let ready = wait_for(Duration::from_secs(60), || {
        let out = m(&machines, 1).sh(&format!(
            "{kubectl} get node knode -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"
        ));
        (stdout(&out) == "True").then_some(())
    });
    assert!(
        ready.is_some(),
        "knode is not Ready: {}",
        m(&machines, 3).run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    step("node Ready");

    // Both leaders move to kcp1: the others' stop (and give up their
    // Leases), then come back as standbys.
    let holder = |m: &Machine, lease: &str| -> String {
        stdout(&m.sh(&format!(
            "{kubectl} get lease -n kube-system {lease} -o jsonpath='{{.spec.holderIdentity}} {{.spec.renewTime}}'"
        )))
    };
    let leaders = "kestrel-scheduler kestrel-controller-manager";
    for i in [1, 2] {
        m(&machines, i).run(&format!("systemctl stop {leaders}"));
    }
    let on_kcp1 = wait_for(Duration::from_secs(60), || {
        ["kube-scheduler", "kube-controller-manager"]
            .iter()
            .all(|l| holder(m(&machines, 0), l).starts_with("kcp1"))
            .then_some(())
    });
    assert!(
        on_kcp1.is_some(),
        "{} / {}",
        holder(m(&machines, 0), "kube-scheduler"),
        holder(m(&machines, 0), "kube-controller-manager")
    );
    for i in [1, 2] {
        m(&machines, i).run(&format!("systemctl start {leaders}"));
    }
    step("kcp1 leads");

    // The first control plane's machine dies: its etcd member, its API
    // server (the node's first choice) and both leaders.
    m(&machines, 0).run(&format!(
        "{kubectl} create configmap before-the-loss --from-literal=k=v"
    ));
    let before = renewed(m(&machines, 1)).expect("knode's Lease");
    drop(machines[0].take());
    step("kcp1 killed");
    let survivor = m(&machines, 1);
    // Writes go on through the others, and are seen by both.
    let created = wait_for(Duration::from_secs(30), || {
        survivor
            .sh(&format!(
                "{kubectl} create configmap after-the-loss --from-literal=k=v"
            ))
            .status
            .success()
            .then_some(())
    });
    assert!(
        created.is_some(),
        "no write after losing one of three control planes"
    );
    let both = m(&machines, 2).run(&format!("{kubectl} get configmaps -o name"));
    assert!(
        both.contains("configmap/before-the-loss") && both.contains("configmap/after-the-loss"),
        "{both}"
    );
    // The node's agent moves to another API server and renews its Lease.
    let moved = wait_for(Duration::from_secs(60), || {
        renewed(survivor).filter(|t| *t != before)
    });
    assert!(
        moved.is_some(),
        "knode's Lease was not renewed after kcp1 died: {}",
        m(&machines, 3).run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    // The standbys take the Leases over.
    let taken = wait_for(Duration::from_secs(90), || {
        ["kube-scheduler", "kube-controller-manager"]
            .iter()
            .all(|l| {
                let h = holder(survivor, l);
                h.starts_with("kcp2") || h.starts_with("kcp3")
            })
            .then_some(())
    });
    assert!(
        taken.is_some(),
        "the leaders did not move off kcp1: {} / {}",
        holder(survivor, "kube-scheduler"),
        holder(survivor, "kube-controller-manager")
    );
    step("leaders moved");
    // ...and act: a Deployment made now gets its pods, bound to the node.
    survivor.run(&format!(
        "{kubectl} create deployment web --image=registry.invalid/web:1 --replicas=2"
    ));
    let bound = wait_for(Duration::from_secs(60), || {
        let out = survivor.sh(&format!(
            "{kubectl} get pods -l app=web -o jsonpath='{{range .items[*]}}{{.spec.nodeName}} {{end}}'"
        ));
        (stdout(&out).trim() == "knode knode").then_some(())
    });
    assert!(
        bound.is_some(),
        "{}",
        stdout(&survivor.sh(&format!("{kubectl} get deploy,rs,pods -o wide")))
    );
    // The lost member shows; the leaders are held by the remaining machines.
    let after = wait_for(Duration::from_secs(60), || {
        healthy(
            survivor,
            &[
                "etcd-0=False",
                "etcd-1=True",
                "etcd-2=True",
                "scheduler=True",
                "controller-manager=True",
            ],
        )
    });
    assert!(
        after.is_some(),
        "{}",
        stdout(&survivor.sh(&format!("{kubectl} get cs")))
    );
    let node_ready = survivor.run(&format!(
        "{kubectl} get node knode -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"
    ));
    assert_eq!(node_ready, "True");
    // The dead API server's announcement expires.
    let two = wait_for(Duration::from_secs(90), || {
        (api_endpoints(survivor) == "10.88.0.2 10.88.0.3").then_some(())
    });
    assert!(two.is_some(), "{}", api_endpoints(survivor));
    step("cluster serving without kcp1");
}
