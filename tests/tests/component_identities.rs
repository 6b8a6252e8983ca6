//! The scheduler and the controller-manager run as their own RBAC users,
//! `system:kube-scheduler` and `system:kube-controller-manager`, as in
//! Kubernetes: the cluster works with them (pods are scheduled, a
//! Deployment rolls, a namespace is emptied and removed), and a stolen
//! component certificate reaches no further than its role. Real API server,
//! etcd, scheduler, controller-manager and kubectl, on hollow nodes.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::process::wait_for;
use serde_json::Value;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: registry.local/web:1
";

fn succeeds(k: &Kubectl, args: &[&str]) -> String {
    let out = k.output(args).unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl ARGS` fails with a Forbidden error.
fn forbidden(k: &Kubectl, args: &[&str]) {
    let out = k.output(args).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kubectl {args:?} was allowed");
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "kubectl {args:?}: {err}"
    );
}

/// With their own identities, the components still do their work, and
/// neither logs a single refusal while doing it.
#[test]
fn the_cluster_runs_with_least_privilege_components() {
    let cp = ControlPlane::start_with_component_identities(&[]).expect("control plane starts");
    let k = cp.kubectl();
    let _scheduler = cp.component("scheduler", &["scheduler"]).unwrap();
    let _cm = cp
        .component("controller-manager", &["controller-manager"])
        .unwrap();
    let _nodes = cp
        .component(
            "hollow",
            &[
                "hollow-nodes",
                "--name-prefix",
                "h",
                "--count",
                "2",
                "--lease-interval-seconds",
                "1",
            ],
        )
        .unwrap();
    k.apply(DEPLOYMENT);
    succeeds(
        &k,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    let pods = k.get_json(&["pods", "-l", "app=web"]);
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 3);
    for p in pods {
        assert!(
            p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| n.starts_with('h')),
            "{p}"
        );
    }
    // A new template rolls out through a second ReplicaSet.
    succeeds(
        &k,
        &["set", "image", "deployment/web", "c=registry.local/web:2"],
    );
    succeeds(
        &k,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    let rs = k.get_json(&["replicasets", "-l", "app=web"]);
    assert_eq!(rs["items"].as_array().map(Vec::len), Some(2), "{rs}");

    // The namespace controller empties and removes a namespace; the
    // ServiceAccount controller gave it its `default` account.
    succeeds(&k, &["create", "namespace", "scratch"]);
    succeeds(&k, &["create", "configmap", "c", "-n", "scratch"]);
    wait_for(Duration::from_secs(30), || {
        k.output(&["get", "serviceaccount", "default", "-n", "scratch"])
            .ok()?
            .status
            .success()
            .then_some(())
    })
    .expect("the controller-manager makes the default ServiceAccount");
    succeeds(&k, &["delete", "namespace", "scratch", "--timeout=60s"]);
    let gone = wait_for(Duration::from_secs(60), || {
        let out = k.output(&["get", "namespace", "scratch"]).ok()?;
        (!out.status.success()).then_some(())
    });
    assert!(gone.is_some(), "namespace scratch was not removed");

    // Garbage collection: the ReplicaSets and pods go with the Deployment.
    succeeds(&k, &["delete", "deployment", "web"]);
    let collected = wait_for(Duration::from_secs(60), || {
        let pods = k.get_json(&["pods", "-l", "app=web"]);
        pods["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
    assert!(
        collected.is_some(),
        "the Deployment's pods were not collected"
    );

    for c in ["scheduler", "controller-manager"] {
        let log = cp.log(c);
        // RBAC's refusals read `... is forbidden: User "..." cannot ...`.
        assert!(
            !log.contains("forbidden: User"),
            "the {c} was refused something it needs:\n{log}"
        );
    }
}

/// The scheduler's certificate reads no Secrets, deletes no namespace or
/// pod and scrapes no metrics; the controller-manager's cannot grant
/// roles, exec into pods, or delete namespaces or nodes.
#[test]
fn a_component_certificate_reaches_no_further_than_its_role() {
    let cp = ControlPlane::start_with_component_identities(&[]).expect("control plane starts");
    let admin = cp.kubectl();
    succeeds(
        &admin,
        &["create", "secret", "generic", "s", "--from-literal=k=v"],
    );
    let as_component =
        |c: &str| Kubectl::new(&cp.component_kubeconfig(c).unwrap()).expect("kubectl is installed");

    let scheduler = as_component("scheduler");
    succeeds(&scheduler, &["get", "pods", "-A"]);
    succeeds(&scheduler, &["get", "nodes"]);
    forbidden(&scheduler, &["get", "secret", "s"]);
    forbidden(&scheduler, &["get", "secrets", "-A"]);
    forbidden(&scheduler, &["delete", "namespace", "default"]);
    forbidden(&scheduler, &["create", "namespace", "x"]);
    forbidden(&scheduler, &["get", "--raw", "/metrics"]);
    forbidden(
        &scheduler,
        &[
            "create",
            "clusterrolebinding",
            "x",
            "--clusterrole=cluster-admin",
            "--user=system:kube-scheduler",
        ],
    );

    let cm = as_component("controller-manager");
    succeeds(&cm, &["get", "deployments", "-A"]);
    forbidden(
        &cm,
        &[
            "create",
            "clusterrolebinding",
            "x",
            "--clusterrole=cluster-admin",
            "--user=system:kube-controller-manager",
        ],
    );
    forbidden(
        &cm,
        &["create", "role", "r", "--verb=get", "--resource=pods"],
    );
    forbidden(&cm, &["delete", "namespace", "default"]);
    forbidden(&cm, &["delete", "node", "n1"]);
    forbidden(
        &cm,
        &["create", "secret", "generic", "t", "--from-literal=k=v"],
    );
    forbidden(&cm, &["get", "--raw", "/metrics"]);
    forbidden(&cm, &["get", "pods", "--as=system:admin"]);

    // The admin's view through SubjectAccessReviews agrees.
    let can = |who: &str, what: &[&str]| {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(what);
        let who = format!("--as={who}");
        args.push(&who);
        admin.output(&args).unwrap().status.success()
    };
    assert!(can(
        "system:kube-scheduler",
        &["create", "pods", "--subresource=binding"]
    ));
    assert!(!can("system:kube-scheduler", &["get", "secrets"]));
    assert!(can("system:kube-controller-manager", &["create", "pods"]));
    assert!(!can(
        "system:kube-controller-manager",
        &["create", "pods", "--subresource=exec"]
    ));
    assert!(!can(
        "system:kube-controller-manager",
        &["get", "pods", "--subresource=exec"]
    ));
    let roles: Value = admin.get_json(&["clusterrolebinding", "system:kube-scheduler"]);
    assert_eq!(
        roles["subjects"][0]["name"], "system:kube-scheduler",
        "{roles}"
    );
}
