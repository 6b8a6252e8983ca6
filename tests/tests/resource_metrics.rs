//! User story: `kubectl top`. The API server serves metrics.k8s.io itself
//! from what every agent samples of its node and containers, so a busy
//! container shows its CPU, an idle one does not, and the node shows its
//! own, with no metrics-server to install.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::networked::NetCluster;
use harness::process::wait_for;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: busy, labels: {app: busy}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: spin, image: busybox, command: [sh, -c, "while :; do :; done"]}
  - {name: idle, image: busybox, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: quiet}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: idle, image: busybox, command: [sleep, "3600"]}
"#;

/// Millicores from kubectl's CPU column ("250m", or whole cores "1").
fn millicores(s: &str) -> u64 {
    match s.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or_else(|_| panic!("CPU {s:?}")),
        None => s
            .parse::<u64>()
            .map(|c| c * 1000)
            .unwrap_or_else(|_| panic!("CPU {s:?}")),
    }
}

#[test]
fn kubectl_top_shows_a_busy_containers_cpu_and_the_nodes() {
    let c = NetCluster::start(1);
    c.apply(PODS);
    // `kubectl top pods --containers`: POD NAME CPU(cores) MEMORY(bytes).
    let cpu: BTreeMap<(String, String), u64> = wait_for(Duration::from_secs(120), || {
        let out =
            c.k.run(&["top", "pods", "--containers", "--no-headers"])
                .ok()?;
        let rows: BTreeMap<(String, String), u64> = out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert!(f[3].ends_with("Mi"), "memory column of {l:?}");
                Some(((f[0].to_string(), f[1].to_string()), millicores(f.get(2)?)))
            })
            .collect();
        (rows.len() == 3).then_some(rows)
    })
    .unwrap_or_else(|| {
        panic!(
            "kubectl top pods never listed the three containers: {:?}\n{}",
            c.k.run(&["top", "pods", "--containers"]),
            c.logs(40)
        )
    });
    let of = |pod: &str, container: &str| cpu[&(pod.to_string(), container.to_string())];
    eprintln!("kubectl top pods --containers: {cpu:?}");
    assert!(of("busy", "spin") >= 100, "a spinning shell: {cpu:?}");
    assert!(
        of("busy", "idle") * 5 < of("busy", "spin") && of("quiet", "idle") * 5 < of("busy", "spin"),
        "sleeping containers use next to nothing: {cpu:?}"
    );

    // A label selector, as `kubectl top pods -l` sends it.
    let out =
        c.k.run(&["top", "pods", "-l", "app=busy", "--no-headers"])
            .unwrap();
    assert!(out.starts_with("busy ") && !out.contains("quiet"), "{out}");

    // The node: NAME CPU(cores) CPU% MEMORY(bytes) MEMORY%.
    let out = c.k.run(&["top", "nodes", "--no-headers"]).unwrap();
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], c.nodes[0].name, "{out}");
    assert!(millicores(f[1]) >= of("busy", "spin") / 2, "{out}");
    assert!(f[2].ends_with('%') && f[3].ends_with("Mi"), "{out}");

    // The objects themselves, as an autoscaler reads them.
    let raw =
        c.k.run(&[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/busy",
        ])
        .unwrap();
    let pod: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(pod["kind"], "PodMetrics");
    assert_eq!(pod["window"], "10s", "{pod}");
    assert_eq!(pod["containers"].as_array().map(Vec::len), Some(2), "{pod}");
    let missing =
        c.k.run(&[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nobody",
        ])
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("NotFound") || missing.contains("not found"),
        "{missing}"
    );
}
