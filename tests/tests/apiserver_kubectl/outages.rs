//! etcd and API server outages: 5xx while etcd is gone, and no write or
//! watch event lost across either coming back.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::wait_for;
use serde_json::Value;

use crate::common::json;

/// Stopping etcd turns requests into 5xx Statuses; when it returns, the
/// API server serves again and every acknowledged write is there.
#[test]
fn etcd_outage_gives_5xx_then_recovers_without_losing_writes() {
    let mut cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    for i in 0..5 {
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{k: '{i}'}}\n"
        );
        let out = k.run_stdin(&["create", "-f", "-"], &cm).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cp.etcd.kill();
    let out = k
        .output(&["get", "configmaps", "--request-timeout=30s"])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ServiceUnavailable") || err.contains("503") || err.contains("etcd"),
        "{err}"
    );
    cp.etcd.restart().unwrap();
    let names = wait_for(Duration::from_secs(30), || {
        k.run(&["get", "configmaps", "-o", "name"])
            .ok()
            .filter(|s| s.lines().count() == 5)
    });
    assert!(names.is_some(), "configmaps after recovery");
    let out = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after}\n",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarting the API server: a client that re-watches from the version
/// it last saw misses nothing written in between.
#[test]
fn apiserver_restart_loses_no_watch_events() {
    let mut cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let out = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before}\n",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rv = json(&k.run(&["get", "configmaps", "-o", "json"]).unwrap())["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    cp.kill_apiserver();
    // Written straight to etcd while no API server runs.
    let obj = r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"during","namespace":"default","uid":"u-1","creationTimestamp":"2026-01-01T00:00:00Z"},"data":{"k":"v"}}"#;
    cp.etcd
        .etcdctl(&["put", "/registry/configmaps/default/during", obj])
        .unwrap();
    cp.start_apiserver().unwrap();
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2",
        cp.url()
    );
    let out = std::process::Command::new("curl")
        .args(["-sN", &url])
        .output();
    let body = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(_) => {
            // No curl: use kubectl's raw mode.
            k.run(&["get", "--raw", &url[cp.url().len()..]]).unwrap()
        }
    };
    let events: Vec<Value> = body.lines().map(json).collect();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "during"),
        "events after restart: {events:?}"
    );
}
