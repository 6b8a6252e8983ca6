//! etcd of several control planes trusts only its own CA: a node's client
//! certificate, from the cluster CA, gets into neither the client port nor
//! the peer port, while the API server's etcd client certificate does. An
//! install from before etcd had its own CA moves to it, keeping etcd's data.
//!
//! etcd runs as install.sh configured it, with its listeners moved to
//! loopback ports of this machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::cluster::binary;
use harness::dist::{install, start_apiserver, stderr};
use harness::kubectl::Kubectl;
use harness::ports::free_port;
use harness::process::{wait_for, Guarded};

const PEERS: &str = "192.0.2.11,192.0.2.12,192.0.2.13";

/// The first of three control planes installed below `root`.
fn install_first(root: &Path) {
    let out = install(&[
        "--root",
        root.to_str().expect("utf-8"),
        "control-plane",
        "--advertise-address",
        "192.0.2.11",
        "--peers",
        PEERS,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A running etcd member with the TLS files installed below `root`, on
/// loopback: its client URL and peer URL.
struct Member {
    _etcd: Guarded,
    client: String,
    peer: String,
}

fn start_member(root: &Path, data: &Path) -> Member {
    let pki = root.join("var/lib/kestrel/pki");
    // member.conf hands etcd these three files; the same ones here.
    let conf =
        std::fs::read_to_string(root.join("etc/systemd/system/kestrel-etcd.service.d/member.conf"))
            .expect("member.conf");
    let credential = |name: &str| -> String {
        let line = conf
            .lines()
            .find_map(|l| l.strip_prefix(&format!("LoadCredential={name}:")))
            .unwrap_or_else(|| panic!("member.conf loads no {name}"));
        format!("{}{line}", root.display())
    };
    let (client, peer) = (
        format!("https://127.0.0.1:{}", free_port()),
        format!("https://127.0.0.1:{}", free_port()),
    );
    let mut cmd = Command::new("etcd");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let env = std::fs::read_to_string(root.join("etc/kestrel/etcd.env")).expect("etcd.env");
    for line in env.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            // The unit's credentials directory is this root's pki here.
            let v = v
                .replace(
                    "/run/credentials/kestrel-etcd.service/member.crt",
                    &credential("member.crt"),
                )
                .replace(
                    "/run/credentials/kestrel-etcd.service/member.key",
                    &credential("member.key"),
                )
                .replace(
                    "/run/credentials/kestrel-etcd.service/ca.crt",
                    &credential("ca.crt"),
                );
            cmd.env(k, v);
        }
    }
    cmd.env("ETCD_DATA_DIR", data)
        .env("ETCD_LISTEN_CLIENT_URLS", &client)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &client)
        .env("ETCD_LISTEN_PEER_URLS", &peer)
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer)
        .env("ETCD_INITIAL_CLUSTER", format!("etcd-192-0-2-11={peer}"))
        .env("ETCD_NAME", "etcd-192-0-2-11");
    let mut etcd = Guarded::spawn("etcd", &mut cmd).expect("start etcd");
    let client_cert = pki.join("apiserver-etcd-client");
    let healthy = wait_for(Duration::from_secs(20), || {
        if !etcd.is_running() {
            return Some(false);
        }
        etcdctl(
            &client,
            &pki.join("etcd/ca.crt"),
            &client_cert,
            &["endpoint", "health"],
        )
        .then_some(true)
    });
    assert_eq!(
        healthy,
        Some(true),
        "etcd did not start with the installed TLS files"
    );
    Member {
        _etcd: etcd,
        client,
        peer,
    }
}

/// etcdctl against `url` with the client certificate `cert`.crt/.key.
fn etcdctl(url: &str, ca: &Path, cert: &Path, args: &[&str]) -> bool {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg(format!("--cert={}.crt", cert.display()))
        .arg(format!("--key={}.key", cert.display()))
        .arg("--command-timeout=5s")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a TLS handshake with `url`, presenting `cert`.crt/.key, gets an
/// HTTP answer: etcd refuses a client certificate it does not trust in the
/// handshake.
fn gets_in(url: &str, ca: &Path, cert: &Path) -> bool {
    Command::new("curl")
        .args(["-sS", "--http1.1", "-o", "/dev/null", "--max-time", "5"])
        .arg("--cacert")
        .arg(ca)
        .arg("--cert")
        .arg(cert.with_extension("crt"))
        .arg("--key")
        .arg(cert.with_extension("key"))
        .arg(format!("{url}/version"))
        .output()
        .map(|o| {
            eprintln!(
                "curl {url}: {} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            o.status.success()
        })
        .unwrap_or(false)
}

/// A node's client certificate, from the cluster CA, as add-node issues it.
fn node_certificate(pki: &Path, out: &Path) {
    let status = Command::new(binary("control-plane"))
        .args(["certificate", "--cert-dir"])
        .arg(pki)
        .args(["--cn", "system:node:node-a", "--out"])
        .arg(out)
        .arg("--client")
        .status()
        .expect("control-plane certificate");
    assert!(status.success());
}

#[test]
fn a_node_certificate_gets_into_neither_etcd_port_while_the_api_server_does() {
    let root = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    install_first(root.path());
    let pki = root.path().join("var/lib/kestrel/pki");
    let etcd_ca = pki.join("etcd/ca.crt");
    assert_ne!(
        std::fs::read(&etcd_ca).expect("etcd CA"),
        std::fs::read(pki.join("ca.crt")).expect("cluster CA"),
        "etcd's CA is the cluster CA"
    );
    let member = start_member(root.path(), &scratch.path().join("etcd"));
    let node = scratch.path().join("node");
    node_certificate(&pki, &node);

    // The attack: a node's own certificate against both ports.
    assert!(
        !gets_in(&member.client, &etcd_ca, &node),
        "a node's certificate got into etcd's client port"
    );
    assert!(
        !etcdctl(
            &member.client,
            &etcd_ca,
            &node,
            &["put", "/registry/x", "y"]
        ),
        "a node's certificate wrote to etcd"
    );
    assert!(
        !gets_in(&member.peer, &etcd_ca, &node),
        "a node's certificate got into etcd's peer port"
    );
    // The ones meant to get in do.
    let client = pki.join("apiserver-etcd-client");
    assert!(gets_in(&member.client, &etcd_ca, &client));
    assert!(gets_in(&member.peer, &etcd_ca, &pki.join("etcd/member")));

    // The API server, with the flags install.sh gave it, reads and writes
    // through it. Its admin kubeconfig names the advertised address, which
    // is not this machine's: kubectl goes to loopback instead.
    let port = free_port();
    let mut apiserver = start_apiserver(root.path(), &member.client, port);
    let admin = root.path().join("etc/kestrel/admin.kubeconfig");
    let server = format!("https://127.0.0.1:{port}");
    let created = wait_for(Duration::from_secs(60), || {
        if !apiserver.is_running() {
            return Some(false);
        }
        let kubectl = Kubectl::new(&admin).ok()?.with_server(&server);
        kubectl
            .run(&["create", "configmap", "through-etcd"])
            .ok()
            .map(|_| true)
    });
    assert_eq!(created, Some(true), "the API server did not write to etcd");
}

#[test]
fn an_install_from_before_moves_etcd_to_its_own_ca_and_keeps_its_data() {
    let root = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    install_first(root.path());
    let pki = root.path().join("var/lib/kestrel/pki");
    // What an install from before left: etcd's certificates from the
    // cluster CA, no etcd CA, and the unit trusting the cluster CA.
    std::fs::remove_dir_all(pki.join("etcd")).expect("rm");
    std::fs::create_dir_all(pki.join("etcd")).expect("mkdir");
    for (out, cn, extra) in [
        (
            "etcd/member",
            "etcd-192-0-2-11",
            &["--server", "--client", "--san", "127.0.0.1"][..],
        ),
        (
            "apiserver-etcd-client",
            "kube-apiserver-etcd-client",
            &["--client"][..],
        ),
    ] {
        std::fs::remove_file(pki.join(format!("{out}.crt"))).ok();
        std::fs::remove_file(pki.join(format!("{out}.key"))).ok();
        let status = Command::new(binary("control-plane"))
            .args(["certificate", "--cert-dir"])
            .arg(&pki)
            .args(["--cn", cn, "--out"])
            .arg(pki.join(out))
            .args(extra)
            .status()
            .expect("control-plane certificate");
        assert!(status.success());
    }
    std::fs::copy(pki.join("ca.crt"), pki.join("etcd/ca.crt")).expect("copy");
    let data = scratch.path().join("etcd");
    let client = pki.join("apiserver-etcd-client");
    {
        let member = start_member(root.path(), &data);
        assert!(etcdctl(
            &member.client,
            &pki.join("ca.crt"),
            &client,
            &["put", "/registry/kept", "yes"]
        ));
    }
    std::fs::remove_file(pki.join("etcd/ca.crt")).expect("rm");

    // Run again: etcd gets its own CA and its certificates from it.
    install_first(root.path());
    let etcd_ca = pki.join("etcd/ca.crt");
    assert!(pki.join("etcd/ca.key").exists());
    let member = start_member(root.path(), &data);
    let got = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", member.client))
        .arg(format!("--cacert={}", etcd_ca.display()))
        .arg(format!("--cert={}.crt", client.display()))
        .arg(format!("--key={}.key", client.display()))
        .args(["get", "--print-value-only", "/registry/kept"])
        .output()
        .expect("etcdctl");
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "yes");
    let node = scratch.path().join("node");
    node_certificate(&pki, &node);
    assert!(!gets_in(&member.client, &etcd_ca, &node));
    assert!(!gets_in(&member.peer, &etcd_ca, &node));
}
