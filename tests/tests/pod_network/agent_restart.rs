//! Pods stay connected while the agent is killed and restarted.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::node::Node;
use harness::process::wait_for;

use crate::common::{counter, http, running_ip, server_pod};

/// Killing the agent with SIGKILL leaves the datapath pinned: pods keep
/// talking while no agent runs (a client pod keeps fetching from a pod on
/// its node and one on the other node, and logs each try to a hostPath
/// file), and after the restart the new agent takes the programs over and
/// new pods join.
#[test]
fn pods_stay_connected_across_an_agent_restart() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let mut n1 = Node::start(&cp);
    let n2 = Node::start(&cp);
    k.apply(
        &(server_pod("a1", &n1.name) + &server_pod("a2", &n1.name) + &server_pod("b1", &n2.name)),
    );
    let a2 = running_ip(&k, "a2", &[&n1, &n2]);
    let b1 = running_ip(&k, "b1", &[&n1, &n2]);
    running_ip(&k, "a1", &[&n1, &n2]);
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("log");
    k.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  volumes: [{{name: out, hostPath: {{path: {dir}}}}}]
  containers:
  - name: c
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'while true; do for t in {a2} {b1}; do if printf "GET /index.html HTTP/1.0\r\n\r\n" | nc -w 2 $t 8080 | grep -q hello; then echo "ok $t"; else echo "fail $t"; fi >> /out/log; done; sleep 0.1; done']
"#,
            node = n1.name,
            dir = out.path().display()
        ),
    );
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    wait_for(Duration::from_secs(60), || {
        (lines().len() >= 4).then_some(())
    })
    .unwrap_or_else(|| panic!("the client pod logged nothing\n{}", n1.log()));

    n1.proc.as_mut().unwrap().kill();
    let from = lines().len();
    let before = counter(&n1, "pod_to_local_pod");
    wait_for(Duration::from_secs(30), || {
        (lines().len() >= from + 20).then_some(())
    })
    .expect("the client stopped while the agent was down");
    let during = lines()[from..from + 20].to_vec();
    assert!(
        during.iter().all(|l| l.starts_with("ok ")),
        "tries failed while the agent was down: {during:?}"
    );
    assert!(during.contains(&format!("ok {a2}")) && during.contains(&format!("ok {b1}")));
    assert!(
        counter(&n1, "pod_to_local_pod") > before,
        "no agent, still eBPF"
    );
    // The other node reaches the pod through node 1's uplink program too.
    let page = n2
        .exec(&[
            "curl",
            "-sS",
            "-m",
            "3",
            &format!("http://{a2}:8080/index.html"),
        ])
        .unwrap();
    assert_eq!(page.trim(), "hello from a2");

    n1.launch();
    k.apply(&server_pod("a3", &n1.name));
    let a3 = running_ip(&k, "a3", &[&n1, &n2]);
    assert_ne!(a3, a2, "a restarted agent handed out a used address");
    http(&k, "a3", &a2, "a2", &[&n1, &n2]);
    http(&k, "a1", &b1, "b1", &[&n1, &n2]);
    http(&k, "b1", &a3, "a3", &[&n1, &n2]);
    let after = lines();
    let failed: Vec<&String> = after[from..]
        .iter()
        .filter(|l| l.starts_with("fail"))
        .collect();
    assert!(
        failed.is_empty(),
        "tries failed across the restart: {failed:?}"
    );
    let agent_log = n1.log();
    assert!(!agent_log.contains("panicked"), "{agent_log}");
}
