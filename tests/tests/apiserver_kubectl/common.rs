//! JSON from kubectl's output, and an API server over HTTPS that makes its
//! own certificates.

use serde_json::Value;

pub(crate) fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// An HTTPS API server over `etcd` with its CA in DIR/pki, its admin
/// kubeconfig at DIR/NAME.kubeconfig and its log at DIR/NAME.log.
pub(crate) fn tls_apiserver(
    etcd: &harness::etcd::Etcd,
    dir: &std::path::Path,
    name: &str,
    args: &[String],
) -> harness::process::Guarded {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    harness::process::Guarded::spawn(
        "apiserver",
        std::process::Command::new(harness::cluster::binary("control-plane"))
            .args(["apiserver", "--etcd-servers", &etcd.client_url()])
            .arg(format!("--cert-dir={}", dir.join("pki").display()))
            .arg(format!(
                "--admin-kubeconfig={}",
                dir.join(format!("{name}.kubeconfig")).display()
            ))
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap()
}
