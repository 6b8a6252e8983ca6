//! Deployments: a rolling update within maxUnavailable and its undo, and a
//! rollout the controller-manager finishes after a restart.

use std::time::Duration;

use harness::kubectl::Kubectl;

use crate::common::{get, live_pods, tail, Cluster};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 4
  selector: {matchLabels: {app: shop}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 1, maxSurge: 1}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: shop, image: registry.local/shop:1}]
"#;

fn available(k: &Kubectl) -> i64 {
    get(k, &["deployment", "shop"])["status"]["availableReplicas"]
        .as_i64()
        .unwrap_or(0)
}

/// A rolling update replaces every pod without dropping below
/// replicas - maxUnavailable available, `rollout status` waits for it, and
/// `rollout pause` holds a template change until `resume`, and `rollout
/// undo` brings the previous image back.
#[test]
fn deployment_rolls_out_within_max_unavailable_and_undoes() {
    let c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.apply(DEPLOYMENT);
    c.rollout_done(60);

    c.k.run(&[
        "set",
        "image",
        "deployment/shop",
        "shop=registry.local/shop:2",
    ])
    .unwrap();
    // Watch availability through the rollout from another thread.
    let kubeconfig = c.cp.kubeconfig();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let k = Kubectl::new(&kubeconfig).unwrap();
            let mut lowest = i64::MAX;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                lowest = lowest.min(available(&k));
                std::thread::sleep(Duration::from_millis(20));
            }
            lowest
        })
    };
    let out =
        c.k.output(&["rollout", "status", "deployment/shop", "--timeout=90s"])
            .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lowest = watcher.join().unwrap();
    assert!(
        out.status.success(),
        "rollout status failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));
    assert!(
        lowest >= 3,
        "availability fell to {lowest} with maxUnavailable 1 of 4"
    );
    let pods = live_pods(&c.k, "app=shop");
    assert_eq!(pods.len(), 4);
    assert!(pods
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:2"));

    // Paused, a template change makes no new ReplicaSet; resumed, it rolls out.
    c.k.run(&["rollout", "pause", "deployment/shop"]).unwrap();
    c.k.run(&[
        "set",
        "image",
        "deployment/shop",
        "shop=registry.local/shop:3",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rs = get(&c.k, &["rs", "-l", "app=shop"]);
    assert_eq!(
        rs["items"].as_array().map(Vec::len),
        Some(2),
        "a paused deployment rolled out"
    );
    c.k.run(&["rollout", "resume", "deployment/shop"]).unwrap();
    c.rollout_done(90);
    c.wait(30, "only shop:3 pods after resume", || {
        let pods = live_pods(&c.k, "app=shop");
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:3"))
        .then_some(())
    });

    let history = c.k.run(&["rollout", "history", "deployment/shop"]).unwrap();
    assert!(
        history.contains("1 ") && history.contains("2 ") && history.contains("3 "),
        "{history}"
    );
    c.k.run(&["rollout", "undo", "deployment/shop"]).unwrap();
    c.rollout_done(90);
    c.wait(30, "only shop:2 pods after undo", || {
        let pods = live_pods(&c.k, "app=shop");
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:2"))
        .then_some(())
    });
    let image =
        c.k.run(&[
            "get",
            "deployment",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .unwrap();
    assert_eq!(
        image, "registry.local/shop:2",
        "undo goes back one revision"
    );
}

/// The controller-manager dies mid-rollout and a new one finishes the job:
/// no pod is lost or made twice.
#[test]
fn controller_manager_restart_mid_rollout_neither_loses_nor_duplicates() {
    let mut c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.apply(&DEPLOYMENT.replace("replicas: 4", "replicas: 6"));
    c.rollout_done(60);
    c.k.run(&[
        "set",
        "image",
        "deployment/shop",
        "shop=registry.local/shop:2",
    ])
    .unwrap();
    c.wait(30, "the rollout to be under way", || {
        let d = get(&c.k, &["deployment", "shop"]);
        (d["status"]["updatedReplicas"].as_i64().unwrap_or(0) >= 1).then_some(())
    });
    c.cm.kill();
    c.cm =
        c.cp.component("controller-manager-2", &["controller-manager"])
            .unwrap();
    let out =
        c.k.output(&["rollout", "status", "deployment/shop", "--timeout=90s"])
            .unwrap();
    assert!(
        out.status.success(),
        "{}\n--- rollout\n{}\n--- state\n{}\n--- controller-manager-2\n{}\n--- scheduler\n{}\n--- hollow nodes\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        c.k.run(&["get", "deploy,rs,pods", "-o", "wide"]).unwrap_or_default(),
        c.cp.log("controller-manager-2"),
        tail(&c.cp.log("scheduler")),
        tail(&c.cp.log("hollow-node")),
    );
    let pods = c.wait(30, "exactly 6 pods", || {
        let p = live_pods(&c.k, "app=shop");
        (p.len() == 6).then_some(p)
    });
    assert!(pods
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "registry.local/shop:2"));
    let rs = get(&c.k, &["rs", "-l", "app=shop"]);
    let total: i64 = rs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"]["replicas"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, 6, "ReplicaSets want {total} pods in all");
    let _ = &c.scheduler;
}
