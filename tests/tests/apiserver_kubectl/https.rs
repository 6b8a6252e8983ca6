//! HTTPS with certificates the API server makes itself, client
//! certificates and tokens.

use std::time::Duration;

use harness::process::wait_for;

use crate::common::tls_apiserver;

/// The API server serves HTTPS with certificates it makes on first start:
/// the admin kubeconfig it writes works, anonymous requests get 401, and a
/// token user without rights gets 403.
#[test]
fn https_with_client_certificates_and_tokens() {
    let etcd = harness::etcd::Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = harness::ports::free_port();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret,alice,1001\n").unwrap();
    let kubeconfig = dir.path().join("apiserver.kubeconfig");
    let _apiserver = tls_apiserver(
        &etcd,
        dir.path(),
        "apiserver",
        &[
            format!("--bind-address=127.0.0.1:{port}"),
            format!("--token-auth-file={}", tokens.display()),
        ],
    );
    let k = harness::kubectl::Kubectl::new(&kubeconfig).unwrap();
    let ready = wait_for(Duration::from_secs(30), || {
        kubeconfig
            .exists()
            .then(|| k.run(&["get", "ns", "-o", "name"]).ok())
            .flatten()
    });
    let log = || std::fs::read_to_string(dir.path().join("apiserver.log")).unwrap_or_default();
    assert!(
        ready.unwrap_or_default().contains("namespace/default"),
        "{}",
        log()
    );

    let ca = dir.path().join("pki/ca.crt");
    let url = format!("https://127.0.0.1:{port}/api/v1/namespaces");
    let anon = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anon.stdout), "401");
    let alice = std::process::Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Authorization: Bearer s3cret",
            "--cacert",
        ])
        .arg(&ca)
        .arg(&url)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&alice.stdout);
    assert!(out.ends_with("403"), "{out}");
    assert!(
        out.contains("User \\\"alice\\\" cannot list resource \\\"namespaces\\\""),
        "{out}"
    );
}
