//! Init containers in order, and the volumes a pod's containers see.

use harness::cluster::ControlPlane;

use crate::common::Agent;

/// Init containers run first and in order, and volumes reach containers:
/// an emptyDir shared between init and app containers, a configMap as
/// files, downward API labels, and environment from the pod's fields.
#[test]
fn init_containers_and_volumes() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{color: blue}}
---
apiVersion: v1
kind: Pod
metadata: {{name: layered, labels: {{tier: web}}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  initContainers:
  - name: first
    image: busybox
    command: [sh, -c, 'echo first > /work/order']
    volumeMounts: [{{name: work, mountPath: /work}}]
  - name: second
    image: busybox
    command: [sh, -c, 'echo second >> /work/order']
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'cat /work/order /config/color /info/labels; echo "pod=$POD ns=$NS"']
    env:
    - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: config, mountPath: /config, readOnly: true}}
    - {{name: info, mountPath: /info}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: settings}}}}
  - name: info
    downwardAPI:
      items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]
"#
    ));
    let p = agent.wait(30, "layered to complete", || {
        let p = k.get_json(&["pod", "layered"]);
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Succeeded", "{p}");
    let inits = p["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    assert!(inits
        .iter()
        .all(|c| c["state"]["terminated"]["reason"] == "Completed"));
    let logs = k.run(&["logs", "layered"]).unwrap();
    assert_eq!(
        logs,
        "first\nsecond\nbluetier=\"web\"\npod=layered ns=default\n"
    );
}
