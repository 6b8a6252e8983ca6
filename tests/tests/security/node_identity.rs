//! A node's client certificate: valid for a year, enough for everything the
//! agent does, and renewable only into the same identity.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::secured::{Identity, Secured};
use serde_json::{json, Value};

use crate::common::{pod, CONFIGMAPS, PODS, SECRETS};

/// A node's client certificate is valid for a year, not for decades; the
/// admin's keeps its long life.
#[test]
fn a_stolen_node_certificate_expires_within_a_year() {
    let s = Secured::start(&[]);
    let end = |cert: &Path| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-checkend"])
            .arg((366 * 24 * 3600).to_string())
            .arg("-in")
            .arg(cert)
            .output()
            .unwrap();
        // Exit 0: still valid after that many seconds.
        out.status.success()
    };
    let valid_now = |cert: &Path| {
        Command::new("openssl")
            .args(["x509", "-noout", "-checkend", "0", "-in"])
            .arg(cert)
            .status()
            .unwrap()
            .success()
    };
    let node = s.node("n1");
    assert!(valid_now(&node.cert));
    assert!(!end(&node.cert), "a node certificate outlives a year");
    assert!(end(&s.admin().cert));
    // And it works today.
    assert_eq!(s.curl(&node, "GET", "/api/v1/nodes", None).0, 200);
}

/// The agent keeps working under its own node identity: it registers and
/// heartbeats with its real code, and every other call it makes (its pods'
/// watch, the Services, EndpointSlices and Nodes it programs, the Secret
/// and ConfigMap of a pod's volumes, pod status, events, the final delete)
/// passes, while the same calls for another node's pod do not.
#[test]
fn the_agent_is_refused_nothing_it_needs_under_its_node_identity() {
    use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    let s = Secured::start(&[]);
    s.admin_create(
        SECRETS,
        json!({"metadata": {"name": "pull"}, "data": {"k": "eA=="}}),
    );
    s.admin_create(
        CONFIGMAPS,
        json!({"metadata": {"name": "conf"}, "data": {"a": "b"}}),
    );
    s.admin_create(
        PODS,
        pod(
            "web",
            "n1",
            json!({"imagePullSecrets": [{"name": "pull"}],
                   "volumes": [{"name": "c", "configMap": {"name": "conf"}}]}),
        ),
    );
    s.admin_create(PODS, pod("other", "n2", json!({})));
    let kubeconfig = s.node_kubeconfig("n1");
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let cfg = kestrel_agent::node::NodeConfig {
            name: "n1".into(),
            state_dir: state.path().to_path_buf(),
            max_pods: 110,
            reserved_cpu_millis: 0,
            reserved_memory: 0,
            eviction_memory: 0,
            eviction_disk_percent: 0,
            node_ip: Some("127.0.0.1".into()),
            labels: vec![("rack".into(), "r1".into())],
            lease_interval: Duration::from_millis(200),
            status_interval: Duration::from_secs(1),
            runtime_version: "test".into(),
            api_port: 10250,
            pod_cidr: Some("10.244.1.0/24".into()),
        };
        kestrel_agent::node::register(&client, &cfg).await.unwrap();
        // Registering again (the Node exists) refreshes the labels.
        kestrel_agent::node::register(&client, &cfg).await.unwrap();
        let beat = kestrel_agent::node::heartbeat(client.clone(), cfg.clone(), || true);
        let _ = tokio::time::timeout(Duration::from_secs(2), beat).await;
        let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), "kube-node-lease");
        let l = lease.get("n1").await.unwrap();
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("n1"));

        let lp = ListParams::default();
        Api::<Node>::all(client.clone()).list(&lp).await.unwrap();
        Api::<Service>::all(client.clone()).list(&lp).await.unwrap();
        Api::<EndpointSlice>::all(client.clone()).list(&lp).await.unwrap();
        Api::<Service>::namespaced(client.clone(), "kube-system")
            .get_opt("kube-dns")
            .await
            .unwrap();
        let pods: Api<Pod> = Api::all(client.clone());
        let mine = pods
            .list(&ListParams::default().fields("spec.nodeName=n1"))
            .await
            .unwrap();
        assert_eq!(mine.items.len(), 1);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        secrets.get("pull").await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        cms.get("conf").await.unwrap();
        let in_ns: Api<Pod> = Api::namespaced(client.clone(), "default");
        let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
        in_ns
            .patch_status("web", &PatchParams::default(), &status)
            .await
            .unwrap();
        let forbidden = |r: Result<Pod, kube::Error>| {
            matches!(r, Err(kube::Error::Api(ref e)) if e.code == 403)
        };
        assert!(forbidden(
            in_ns
                .patch_status("other", &PatchParams::default(), &status)
                .await
        ));
        let event = |name: &str, pod: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": pod},
                "reason": "Pulling", "message": "m", "type": "Normal"}))
            .unwrap()
        };
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        events
            .create(&PostParams::default(), &event("e1", "web"))
            .await
            .unwrap();
        assert!(events
            .create(&PostParams::default(), &event("e2", "other"))
            .await
            .is_err());
        let gone = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        assert!(in_ns.delete("other", &gone).await.is_err());
        in_ns.delete("web", &gone).await.unwrap();
    });
    let node: Value =
        serde_json::from_str(&s.curl(&s.admin(), "GET", "/api/v1/nodes/n1", None).1).unwrap();
    assert_eq!(node["metadata"]["labels"]["rack"], "r1");
    assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
}

/// A node renews its certificate by sending a request for a new key: it
/// gets a certificate for itself whatever the request names, one that
/// works at once, while nobody but a node gets one this way.
#[test]
fn a_node_cannot_renew_into_another_identity() {
    let s = Secured::start(&[]);
    let dir = s.dir.path();
    let key = dir.join("renewed.key");
    let csr = dir.join("renewed.csr");
    let ok = Command::new("openssl")
        .args([
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    // It asks to be the admin.
    let ok = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-subj",
            "/CN=kubernetes-admin/O=system:masters",
            "-key",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .status()
        .unwrap();
    assert!(ok.success());
    let request = std::fs::read_to_string(&csr).unwrap();
    let path = "/kestrel/v1/node-client-certificate";
    let (code, out) = s.curl(
        &s.admin(),
        "POST",
        path,
        Some(("application/pkcs10", &request)),
    );
    assert_eq!(code, 403, "{out}");
    let n1 = s.node("n1");
    let (code, out) = s.curl(
        &n1,
        "POST",
        path,
        Some(("application/pkcs10", "not a request")),
    );
    assert_eq!(code, 400, "{out}");
    let (code, pem) = s.curl(&n1, "POST", path, Some(("application/pkcs10", &request)));
    assert_eq!(code, 201, "{pem}");
    let cert = dir.join("renewed.crt");
    std::fs::write(&cert, &pem).unwrap();
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("CN=system:node:n1") && subject.contains("O=system:nodes"),
        "{subject}"
    );
    assert!(!subject.contains("masters"), "{subject}");
    let renewed = Identity { cert, key };
    assert_eq!(s.curl(&renewed, "GET", "/api/v1/nodes", None).0, 200);
    assert_eq!(
        s.curl(&renewed, "GET", "/api/v1/namespaces/default/secrets", None)
            .0,
        403
    );
}
