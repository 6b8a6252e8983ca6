//! Readiness and liveness probes.

use std::time::Duration;

use harness::cluster::ControlPlane;
use serde_json::Value;

use crate::common::Agent;

/// Probes: a readiness probe keeps a pod out of Ready until its check
/// passes, and a failing liveness probe restarts the container.
#[test]
fn readiness_and_liveness_probes() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: gated}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'mkdir /www; echo ok > /www/index.html; httpd -p 8080 -h /www; sleep 3600']
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      exec: {{command: [test, -f, /tmp/ready]}}
      periodSeconds: 1
    livenessProbe:
      httpGet: {{path: /, port: http}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: sick}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    livenessProbe:
      tcpSocket: {{port: 9999}}
      periodSeconds: 1
      failureThreshold: 2
"#
    ));
    let ready = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"] == "True")
            .unwrap_or(false)
    };
    agent.wait(30, "gated running but not ready", || {
        let p = k.get_json(&["pod", "gated"]);
        (p["status"]["phase"] == "Running" && !ready(&p)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let p = k.get_json(&["pod", "gated"]);
    assert!(!ready(&p), "ready before its probe passed");
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"],
        0,
        "the HTTP liveness probe failed: {}",
        k.run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=gated"
        ])
        .unwrap_or_default()
    );
    k.run(&["exec", "gated", "--", "touch", "/tmp/ready"])
        .unwrap();
    agent.wait(15, "gated ready once /tmp/ready exists", || {
        ready(&k.get_json(&["pod", "gated"])).then_some(())
    });

    let sick = agent.wait(40, "sick restarted by its liveness probe", || {
        let p = k.get_json(&["pod", "sick"]);
        (p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1)
            .then_some(p)
    });
    assert_eq!(
        sick["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        137
    );
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sick",
        ])
        .unwrap();
    assert!(events.contains("Liveness probe failed"), "{events}");
}
