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
    port: u16,
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
            port,
        }
    }

    /// Status code and body of an HTTPS request with `token`, or with no
    /// credentials at all.
    fn curl(&self, token: Option<&str>, path: &str) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(self.dir.path().join("pki/ca.crt"));
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
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

fn b64url(s: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {s}"),
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&b64url(payload)).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn kubectl_create_token_gives_a_token_that_authenticates_as_the_account() {
    let c = Cluster::start();
    let sa = c.wait_get(&["serviceaccount", "default", "-n", "default"]);
    let token = c.kubectl().run(&["create", "token", "default"]).unwrap();
    let token = token.trim();
    let cl = claims(token);
    assert_eq!(cl["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(cl["sub"], "system:serviceaccount:default:default");
    assert_eq!(cl["aud"][0], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(cl["kubernetes.io"]["namespace"], "default");
    assert_eq!(
        cl["kubernetes.io"]["serviceaccount"]["uid"],
        sa["metadata"]["uid"]
    );
    let (iat, exp) = (cl["iat"].as_i64().unwrap(), cl["exp"].as_i64().unwrap());
    assert!((iat - now()).abs() < 60 && exp - iat == 3600, "{cl}");
    assert!(cl["nbf"].as_i64().unwrap() <= now());

    // Known but not allowed anything yet: 403, where no token is 401.
    let (code, body) = c.curl(Some(token), "/api/v1/namespaces/default/pods");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:default:default"),
        "{body}"
    );
    assert_eq!(c.curl(None, "/api/v1/namespaces/default/pods").0, 401);
    let mut forged = token.to_string();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        c.curl(Some(&forged), "/api/v1/namespaces/default/pods").0,
        401
    );

    // Another audience is for someone else; a deleted account's token dies.
    let vault = c
        .kubectl()
        .run(&[
            "create",
            "token",
            "default",
            "--audience",
            "vault",
            "--duration",
            "20m",
        ])
        .unwrap();
    let vc = claims(vault.trim());
    assert_eq!(vc["aud"][0], "vault");
    assert_eq!(
        vc["exp"].as_i64().unwrap() - vc["iat"].as_i64().unwrap(),
        1200
    );
    assert_eq!(
        c.curl(Some(vault.trim()), "/api/v1/namespaces/default/pods")
            .0,
        401
    );
    c.kubectl()
        .run(&["create", "serviceaccount", "gone"])
        .unwrap();
    let gone = c.kubectl().run(&["create", "token", "gone"]).unwrap();
    assert_eq!(c.curl(Some(gone.trim()), "/api/v1/pods").0, 403);
    c.kubectl()
        .run(&["delete", "serviceaccount", "gone"])
        .unwrap();
    assert_eq!(c.curl(Some(gone.trim()), "/api/v1/pods").0, 401);
}

#[test]
fn the_token_of_a_deleted_pod_is_refused() {
    let c = Cluster::start();
    c.wait_get(&["serviceaccount", "default", "-n", "default"]);
    let out = c.apply(&pod_manifest("p", "default", ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = c
        .kubectl()
        .run(&[
            "create",
            "token",
            "default",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "p",
        ])
        .unwrap();
    let token = token.trim();
    let cl = claims(token);
    assert_eq!(cl["kubernetes.io"]["pod"]["name"], "p");
    assert_eq!(cl["kubernetes.io"]["pod"]["uid"], pod["metadata"]["uid"]);
    assert_eq!(c.curl(Some(token), "/api/v1/pods").0, 403);
    c.kubectl()
        .run(&["delete", "pod", "p", "--grace-period=0", "--force"])
        .unwrap();
    // A new pod of the same name is another pod.
    c.apply(&pod_manifest("p", "default", ""));
    assert_eq!(c.curl(Some(token), "/api/v1/pods").0, 401);
    // No token for a pod that is not there.
    let out = c
        .kubectl()
        .output(&[
            "create",
            "token",
            "default",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "nothere",
        ])
        .unwrap();
    assert!(!out.status.success());
}

/// DER of an ECDSA signature from the JWS form (r and s, 32 bytes each).
fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    let int = |b: &[u8]| {
        let mut b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
        if b.first().is_none_or(|x| *x >= 0x80) {
            b.insert(0, 0);
        }
        let mut out = vec![0x02, b.len() as u8];
        out.extend(b);
        out
    };
    let body = [int(&raw[..32]), int(&raw[32..])].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[test]
fn others_verify_tokens_through_the_oidc_documents() {
    let c = Cluster::start();
    c.wait_get(&["serviceaccount", "default", "-n", "default"]);
    let token = c.kubectl().run(&["create", "token", "default"]).unwrap();
    let token = token.trim();
    let (code, body) = c.curl(Some(token), "/.well-known/openid-configuration");
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        doc["jwks_uri"],
        "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
    );
    let (code, body) = c.curl(Some(token), "/openid/v1/jwks");
    assert_eq!(code, 200, "{body}");
    let jwks: Value = serde_json::from_str(&body).unwrap();
    let key = &jwks["keys"][0];
    let header: Value = serde_json::from_slice(&b64url(token.split('.').next().unwrap())).unwrap();
    assert_eq!(header["kid"], key["kid"]);
    assert_eq!(header["alg"], "ES256");

    // openssl checks the signature with the key as published.
    let dir = tempfile::tempdir().unwrap();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    spki.extend(b64url(key["x"].as_str().unwrap()));
    spki.extend(b64url(key["y"].as_str().unwrap()));
    std::fs::write(dir.path().join("pub.der"), &spki).unwrap();
    let (signed, sig) = token.rsplit_once('.').unwrap();
    std::fs::write(dir.path().join("input"), signed).unwrap();
    let verify = |sig: &[u8]| {
        std::fs::write(dir.path().join("sig"), ecdsa_der(sig)).unwrap();
        Command::new("openssl")
            .args(["dgst", "-sha256", "-keyform", "DER", "-verify"])
            .arg(dir.path().join("pub.der"))
            .arg("-signature")
            .arg(dir.path().join("sig"))
            .arg(dir.path().join("input"))
            .output()
            .unwrap()
    };
    let sig = b64url(sig);
    let out = verify(&sig);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bad = sig.clone();
    bad[40] ^= 1;
    assert!(!verify(&bad).status.success());
}

#[test]
fn a_node_gets_tokens_only_for_its_own_pods() {
    let c = Cluster::start();
    c.wait_get(&["serviceaccount", "default", "-n", "default"]);
    for (pod, node) in [("mine", "n1"), ("theirs", "n2")] {
        let out = c.apply(&pod_manifest(
            pod,
            "default",
            &format!("  nodeName: {node}\n"),
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kubeconfig = c.dir.path().join("n1.kubeconfig");
    let status = Command::new(harness::cluster::binary("control-plane"))
        .args([
            "kubeconfig",
            "--group",
            "system:nodes",
            "--user=system:node:n1",
        ])
        .arg(format!("--cert-dir={}", c.dir.path().join("pki").display()))
        .arg(format!("--server=https://127.0.0.1:{}", c.port))
        .arg("--out")
        .arg(&kubeconfig)
        .status()
        .unwrap();
    assert!(status.success());
    let node = Kubectl::new(&kubeconfig).unwrap();
    let token_for = |pod: Option<&str>| {
        let mut args = vec!["create", "token", "default"];
        if let Some(p) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", p]);
        }
        node.output(&args).unwrap()
    };
    let out = token_for(Some("mine"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(claims(&token)["kubernetes.io"]["pod"]["name"], "mine");
    assert_eq!(c.curl(Some(&token), "/api/v1/pods").0, 403);
    for refused in [token_for(Some("theirs")), token_for(None)] {
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            err.contains("only request tokens bound to its own pods"),
            "{err}"
        );
    }
}
