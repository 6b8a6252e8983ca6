//! The control plane on hollow nodes these stories share, the checks it
//! makes of the components' RBAC when a test ends, reading pods through
//! kubectl, and the ReplicationController most stories start from.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

pub(crate) fn get(k: &Kubectl, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = k.run(&a).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Pods matching `selector` that are not being deleted.
pub(crate) fn live_pods(k: &Kubectl, selector: &str) -> Vec<Value> {
    live_pods_in(k, selector, "default")
}

pub(crate) fn live_pods_in(k: &Kubectl, selector: &str, ns: &str) -> Vec<Value> {
    get(k, &["pods", "-n", ns, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .collect()
}

pub(crate) fn node_of(p: &Value) -> &str {
    p["spec"]["nodeName"].as_str().unwrap_or("")
}

pub(crate) fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
}

/// A control plane with the scheduler, the controller-manager and hollow
/// node groups (`(prefix, count, extra flags)`).
pub(crate) struct Cluster {
    pub(crate) cp: ControlPlane,
    pub(crate) k: Kubectl,
    pub(crate) scheduler: Guarded,
    pub(crate) cm: Guarded,
    pub(crate) groups: Vec<Guarded>,
}

impl Cluster {
    pub(crate) fn start(
        apiserver: &[&str],
        cm_args: &[&str],
        groups: &[(&str, usize, &[&str])],
    ) -> Self {
        // The scheduler and the controller-manager run as their own RBAC
        // users, so every test here also proves their roles suffice.
        let cp =
            ControlPlane::start_with_component_identities(apiserver).expect("control plane starts");
        let k = cp.kubectl();
        let scheduler = cp.component("scheduler", &["scheduler"]).unwrap();
        let mut args = vec!["controller-manager"];
        args.extend_from_slice(cm_args);
        let cm = cp.component("controller-manager", &args).unwrap();
        let mut started = Vec::new();
        let mut total = 0;
        for (prefix, count, extra) in groups {
            let n = count.to_string();
            let mut a = vec![
                "hollow-nodes",
                "--name-prefix",
                prefix,
                "--count",
                &n,
                "--lease-interval-seconds",
                "1",
            ];
            a.extend_from_slice(extra);
            started.push(cp.component(&format!("hollow-{prefix}"), &a).unwrap());
            total += count;
        }
        let ready = wait_for(Duration::from_secs(30), || {
            let nodes = get(&k, &["nodes"]);
            (nodes["items"].as_array().map(Vec::len) == Some(total)).then_some(())
        });
        assert!(ready.is_some(), "{total} hollow nodes did not register");
        Cluster {
            cp,
            k,
            scheduler,
            cm,
            groups: started,
        }
    }

    /// `kubectl rollout status` succeeds within `secs`, or the test fails
    /// with everything needed to tell why.
    pub(crate) fn rollout_done(&self, secs: u64) {
        let out = self
            .k
            .output(&[
                "rollout",
                "status",
                "deployment/shop",
                &format!("--timeout={secs}s"),
            ])
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n--- state\n{}\n--- deployment status\n{}\n--- controller-manager\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.k
                .run(&["get", "deploy,rs,pods", "-o", "wide"])
                .unwrap_or_default(),
            self.k
                .run(&[
                    "get",
                    "deploy",
                    "shop",
                    "-o",
                    "jsonpath={.metadata.generation} {.status}"
                ])
                .unwrap_or_default(),
            self.cp.log("controller-manager"),
        );
    }

    pub(crate) fn logs(&self) -> String {
        format!(
            "--- scheduler\n{}\n--- controller-manager\n{}",
            tail(&self.cp.log("scheduler")),
            tail(&self.cp.log("controller-manager"))
        )
    }

    /// Waits up to `secs` for `check`, failing with the components' logs.
    pub(crate) fn wait<T>(&self, secs: u64, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_for(Duration::from_secs(secs), check)
            .unwrap_or_else(|| panic!("timed out: {what}\n{}", self.logs()))
    }
}

/// A test that passed also proves the components' RBAC roles hold every
/// verb they sent: neither was refused anything on the way.
impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for c in ["scheduler", "controller-manager"] {
            let log = self.cp.log(c);
            // RBAC's refusals read `... is forbidden: User "..." cannot ...`.
            assert!(
                !log.contains("forbidden: User"),
                "the {c} was refused something it needs:\n{}",
                tail(&log)
            );
        }
    }
}

pub(crate) fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub(crate) const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 3
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;
