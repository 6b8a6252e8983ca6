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

const AUTOSCALED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "while :; do :; done"]
        resources: {requests: {cpu: 50m}, limits: {cpu: 100m}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior: {scaleDown: {stabilizationWindowSeconds: 0}}
"#;

/// `kubectl get hpa web`: NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE,
/// TARGETS being `cpu: 200%/50%` (with a space).
fn hpa_row(c: &NetCluster) -> String {
    c.k.run(&["get", "hpa", "web", "--no-headers"])
        .unwrap_or_default()
}

/// The CPU utilization the row shows, once measured.
fn shown_utilization(row: &str) -> Option<u64> {
    row.split("cpu: ").nth(1)?.split('%').next()?.parse().ok()
}

fn jsonpath(c: &NetCluster, what: &str, path: &str) -> String {
    c.k.run(&["get", what, "web", "-o", &format!("jsonpath={path}")])
        .unwrap_or_default()
}

#[test]
fn an_autoscaler_scales_a_busy_deployment_up_and_back_down() {
    let c = NetCluster::start(1);
    // A malformed autoscaler is refused, naming the field.
    let bad = c
        .k
        .run_stdin(
            &["apply", "-f", "-"],
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec: {scaleTargetRef: {kind: Deployment, name: web}, minReplicas: 5, maxReplicas: 2}\n",
        )
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("spec.maxReplicas"),
        "{err}"
    );

    c.apply(AUTOSCALED);
    // Each pod spins at its 100m limit against a 50m request: 200% of the
    // requests against a 50% target, so it scales to its maximum.
    let up = wait_for(Duration::from_secs(180), || {
        (jsonpath(&c, "hpa", "{.status.currentReplicas}") == "3").then(|| hpa_row(&c))
    })
    .unwrap_or_else(|| panic!("never scaled up: {}\n{}", hpa_row(&c), c.logs(40)));
    eprintln!("scaled up: {up}");
    assert!(up.contains("Deployment/web"), "{up}");
    let busy = shown_utilization(&up).unwrap_or_else(|| panic!("TARGETS of {up}"));
    assert!(
        busy > 55,
        "the measured utilization is above the target: {up}"
    );
    assert_eq!(jsonpath(&c, "deploy", "{.spec.replicas}"), "3");

    // The load goes: the pods now sleep, and it scales back to one.
    c.k.run(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": ["sleep", "3600"]}]"#,
    ])
    .unwrap();
    let down = wait_for(Duration::from_secs(240), || {
        (jsonpath(&c, "deploy", "{.spec.replicas}") == "1").then(|| hpa_row(&c))
    })
    .unwrap_or_else(|| panic!("never scaled down: {}\n{}", hpa_row(&c), c.logs(40)));
    eprintln!("scaled down: {down}");
    assert!(
        shown_utilization(&down).is_some_and(|u| u < 50),
        "scaled down below the target: {down}"
    );
}
