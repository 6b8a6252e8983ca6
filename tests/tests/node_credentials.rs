//! A node's client certificate lapses (a year, or sooner), and its agent
//! renews it before then: the node keeps working past the old
//! certificate's end without anyone making it new credentials.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::node::Node;
use harness::process::wait_for;

/// The client certificate a kubeconfig holds (base64, as written).
fn certificate(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("client-certificate-data"))
        .unwrap_or_else(|| panic!("no client certificate in {text}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .trim()
        .trim_matches(['"', ','])
        .to_string()
}

/// Whether `cert` (base64 PEM) is still valid `secs` seconds from now.
fn valid_for(cert: &str, secs: u64) -> bool {
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .expect("base64");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.pem");
    std::fs::write(&file, pem).unwrap();
    Command::new("openssl")
        .args(["x509", "-noout", "-checkend", &secs.to_string(), "-in"])
        .arg(&file)
        .status()
        .unwrap()
        .success()
}

fn renew_time(k: &Kubectl, node: &str) -> String {
    k.run(&[
        "get",
        "lease",
        node,
        "-n",
        "kube-node-lease",
        "-o",
        "jsonpath={.spec.renewTime}",
    ])
    .unwrap_or_default()
}

#[test]
fn an_agent_renews_its_certificate_and_keeps_working_after_the_old_one_lapsed() {
    let mut cp = ControlPlane::start_networked_tls(&[]).unwrap();
    let mut node = Node::start(&cp);
    let k = cp.kubectl();
    let lease = wait_for(Duration::from_secs(60), || {
        (!renew_time(&k, &node.name).is_empty()).then_some(())
    });
    assert!(
        lease.is_some(),
        "the node never renewed its Lease:\n{}",
        node.log()
    );

    // Credentials that lapse in 40 seconds. They start the day before, so
    // two thirds of their life is long gone: the agent renews at once.
    node.proc = None;
    let path = node.kubeconfig().expect("a TLS node").to_path_buf();
    let user = format!("system:node:{}", node.name);
    cp.client_kubeconfig_expiring(&user, "system:nodes", &path, Some(40))
        .unwrap();
    let issued = Instant::now();
    let short = certificate(&path);
    assert!(
        !valid_for(&short, 60),
        "the short certificate outlives a minute"
    );
    node.launch();

    let renewed = wait_for(Duration::from_secs(30), || {
        let now = certificate(&path);
        (now != short).then_some(now)
    })
    .unwrap_or_else(|| panic!("the agent did not renew its certificate:\n{}", node.log()));
    assert!(
        valid_for(&renewed, 300 * 86_400),
        "the renewed certificate is not valid for most of a year"
    );

    // Past the old certificate's end, every connection is made again: the
    // API server restarts. The node goes on renewing its Lease, so it now
    // presents the renewed certificate.
    let lapse = Duration::from_secs(45).saturating_sub(issued.elapsed());
    std::thread::sleep(lapse);
    cp.kill_apiserver();
    cp.start_apiserver().unwrap();
    let before = renew_time(&k, &node.name);
    let alive = wait_for(Duration::from_secs(30), || {
        let now = renew_time(&k, &node.name);
        (!now.is_empty() && now != before).then_some(())
    });
    assert!(
        alive.is_some(),
        "the node stopped renewing its Lease once the old certificate lapsed:\n{}\n--- apiserver\n{}",
        node.log(),
        cp.apiserver_log()
    );
    let _ = node.proc.take();
}
