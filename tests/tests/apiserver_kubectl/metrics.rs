//! The API server's `/metrics` as an operator scrapes it.

use std::process::Stdio;
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::wait_for;

/// An operator scrapes the API server: `/metrics` counts requests by verb,
/// resource and code, has their latency by verb and resource, and shows the
/// watches open now.
#[test]
fn metrics_count_requests_by_verb_resource_and_code() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    k.run(&["create", "configmap", "m1", "--from-literal=a=b"])
        .unwrap();
    k.run(&["get", "configmap", "m1"]).unwrap();
    k.run(&["get", "configmaps"]).unwrap();
    assert!(k.run(&["get", "configmap", "missing"]).is_err());
    // A watch held open while the metrics are read.
    let mut watch = std::process::Command::new(harness::kubectl::binary())
        .args(["--kubeconfig"])
        .arg(cp.kubeconfig())
        .args(["get", "configmaps", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let open = "apiserver_longrunning_requests{verb=\"WATCH\",resource=\"configmaps\"} 1";
    let text = wait_for(Duration::from_secs(10), || {
        let t = k.run(&["get", "--raw", "/metrics"]).ok()?;
        t.contains(open).then_some(t)
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let text = text.unwrap_or_else(|| panic!("no open watch counted"));
    for want in [
        "apiserver_request_total{verb=\"POST\",resource=\"configmaps\",code=\"201\"} 1",
        "apiserver_request_total{verb=\"GET\",resource=\"configmaps\",code=\"200\"}",
        "apiserver_request_total{verb=\"GET\",resource=\"configmaps\",code=\"404\"} 1",
        "apiserver_request_total{verb=\"LIST\",resource=\"configmaps\",code=\"200\"}",
        "apiserver_request_duration_seconds_count{verb=\"POST\",resource=\"configmaps\"} 1",
        "apiserver_request_duration_seconds_bucket{verb=\"GET\",resource=\"configmaps\",le=\"+Inf\"}",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // The watch went when kubectl did (noticed, at the latest, when the
    // next event finds the connection closed).
    k.run(&["create", "configmap", "m2"]).unwrap();
    let closed = "apiserver_longrunning_requests{verb=\"WATCH\",resource=\"configmaps\"} 0";
    assert!(
        wait_for(Duration::from_secs(10), || {
            k.run(&["get", "--raw", "/metrics"])
                .ok()?
                .contains(closed)
                .then_some(())
        })
        .is_some(),
        "the closed watch still counts"
    );
}
