//! User stories of ServiceAccounts: every namespace has `default` and the
//! cluster CA, and pods run as a ServiceAccount with its token volume
//! mounted. The real API server over etcd with TLS, the controller-manager
//! and kubectl.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::kubectl::Kubectl;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// An HTTPS API server with ServiceAccount admission, and the
/// controller-manager publishing accounts and the CA.
struct Cluster {
    _controllers: Guarded,
    _apiserver: Guarded,
    _etcd: harness::etcd::Etcd,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let etcd = harness::etcd::Etcd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = harness::ports::free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).unwrap();
        let apiserver = Guarded::spawn(
            "apiserver",
            Command::new(harness::cluster::binary("control-plane"))
                .args(["apiserver", "--etcd-servers", &etcd.client_url()])
                .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
                .arg(format!(
                    "--admin-kubeconfig={}",
                    dir.path().join("admin.kubeconfig").display()
                ))
                .arg(format!("--bind-address=127.0.0.1:{port}"))
                .arg("--enable-admission-plugins=ServiceAccount")
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let up = wait_for(Duration::from_secs(30), || {
            let k = Kubectl::new(&kubeconfig).ok()?;
            k.run(&["get", "namespace", "default"]).ok()
        });
        let apiserver_log =
            || std::fs::read_to_string(dir.path().join("apiserver.log")).unwrap_or_default();
        assert!(
            up.is_some(),
            "API server did not start:\n{}",
            apiserver_log()
        );
        let log = std::fs::File::create(dir.path().join("controller-manager.log")).unwrap();
        let controllers = Guarded::spawn(
            "controller-manager",
            Command::new(harness::cluster::binary("control-plane"))
                .arg("controller-manager")
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!(
                    "--root-ca-file={}",
                    dir.path().join("pki/ca.crt").display()
                ))
                .args(["--bind-address", "127.0.0.1:0", "--leader-elect=false"])
                .env("RUST_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        Self {
            _controllers: controllers,
            _apiserver: apiserver,
            _etcd: etcd,
            dir,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.kubeconfig()).unwrap()
    }

    fn logs(&self) -> String {
        ["apiserver.log", "controller-manager.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// The object as JSON, once it exists.
    fn wait_get(&self, args: &[&str]) -> Value {
        let k = self.kubectl();
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let got = wait_for(Duration::from_secs(30), || {
            let out = k.run(&a).ok()?;
            serde_json::from_str::<Value>(&out).ok()
        });
        got.unwrap_or_else(|| panic!("{args:?} never appeared:\n{}", self.logs()))
    }

    fn apply(&self, manifest: &str) -> std::process::Output {
        self.kubectl()
            .run_stdin(&["create", "-f", "-", "-o", "json"], manifest)
            .unwrap()
    }
}

fn pod_manifest(name: &str, ns: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{extra_spec}  containers:\n  - name: c\n    image: busybox\n  - name: d\n    image: busybox\n"
    )
}

#[test]
fn a_new_namespace_gets_the_default_account_and_the_cluster_ca() {
    let c = Cluster::start();
    // Namespaces from before the controller started, and new ones.
    c.wait_get(&["serviceaccount", "default", "-n", "kube-system"]);
    c.kubectl().run(&["create", "namespace", "team-a"]).unwrap();
    let sa = c.wait_get(&["serviceaccount", "default", "-n", "team-a"]);
    assert_eq!(sa["metadata"]["namespace"], "team-a");
    let cm = c.wait_get(&["configmap", "kube-root-ca.crt", "-n", "team-a"]);
    let ca = std::fs::read_to_string(c.dir.path().join("pki/ca.crt")).unwrap();
    assert_eq!(cm["data"]["ca.crt"].as_str(), Some(ca.as_str()));

    // Deleted or edited, both come back as they were.
    let k = c.kubectl();
    k.run(&["delete", "serviceaccount", "default", "-n", "team-a"])
        .unwrap();
    k.run(&[
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"data":{"ca.crt":"forged"}}"#,
    ])
    .unwrap();
    let back = wait_for(Duration::from_secs(30), || {
        let out = k
            .run(&["get", "sa,cm", "-n", "team-a", "-o", "json"])
            .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        let items = v["items"].as_array()?.clone();
        let sa = items
            .iter()
            .any(|i| i["kind"] == "ServiceAccount" && i["metadata"]["name"] == "default");
        let cm = items.iter().any(|i| {
            i["metadata"]["name"] == "kube-root-ca.crt" && i["data"]["ca.crt"] == ca.as_str()
        });
        (sa && cm).then_some(())
    });
    assert!(back.is_some(), "not restored:\n{}", c.logs());
}

#[test]
fn a_pod_runs_as_default_with_the_token_volume_in_every_container() {
    let c = Cluster::start();
    c.wait_get(&["serviceaccount", "default", "-n", "default"]);
    let out = c.apply(&pod_manifest("p", "default", ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let vol = volumes
        .iter()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
        })
        .unwrap_or_else(|| panic!("no token volume: {pod:#}"));
    let sources = vol["projected"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(sources[1]["configMap"]["items"][0]["key"], "ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    for container in pod["spec"]["containers"].as_array().unwrap() {
        let m = container["volumeMounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["mountPath"] == MOUNT))
            .unwrap_or_else(|| panic!("not mounted: {container:#}"));
        assert_eq!(m["name"], vol["name"]);
        assert_eq!(m["readOnly"], true);
    }
    // What was stored is what the client saw.
    let stored = c.wait_get(&["pod", "p"]);
    assert_eq!(stored["spec"]["volumes"], pod["spec"]["volumes"]);
}

#[test]
fn a_pod_naming_a_missing_account_is_refused_until_it_exists() {
    let c = Cluster::start();
    c.wait_get(&["serviceaccount", "default", "-n", "default"]);
    let manifest = pod_manifest("p", "default", "  serviceAccountName: builder\n");
    let out = c.apply(&manifest);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forbidden") && err.contains("serviceaccount \"builder\" not found"),
        "{err}"
    );
    c.kubectl()
        .run(&["create", "serviceaccount", "builder"])
        .unwrap();
    let out = c.apply(&manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], "builder");
}

#[test]
fn automount_false_on_the_pod_or_its_account_keeps_the_token_out() {
    let c = Cluster::start();
    c.wait_get(&["serviceaccount", "default", "-n", "default"]);
    let has_token = |pod: &Value| {
        pod["spec"]["volumes"].as_array().is_some_and(|vs| {
            vs.iter().any(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kube-api-access-"))
            })
        }) || pod["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == MOUNT))
    };
    let create = |manifest: &str| -> Value {
        let out = c.apply(manifest);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let pod = create(&pod_manifest(
        "by-pod",
        "default",
        "  automountServiceAccountToken: false\n",
    ));
    assert!(!has_token(&pod), "{pod:#}");

    c.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: quiet\nautomountServiceAccountToken: false\n");
    let pod = create(&pod_manifest(
        "by-account",
        "default",
        "  serviceAccountName: quiet\n",
    ));
    assert!(!has_token(&pod), "{pod:#}");

    // The pod's own setting wins over its account's.
    let pod = create(&pod_manifest(
        "pod-wins",
        "default",
        "  serviceAccountName: quiet\n  automountServiceAccountToken: true\n",
    ));
    assert!(has_token(&pod), "{pod:#}");
}
