//! kube-rs, the Rust client most operators are written with, against the
//! API server: typed create, list with selectors, a watcher that survives
//! the stream, server-side apply, status patches and deletion.

use std::time::Duration;

use futures::StreamExt;
use harness::cluster::ControlPlane;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "spec": {"containers": [{"name": "c", "image": "registry.local/busybox:1"}]},
    }))
    .expect("a valid pod")
}

/// An operator written with kube-rs creates, lists, watches, applies and
/// deletes objects the way it does against Kubernetes.
#[test]
fn kube_rs_client_creates_lists_watches_applies_and_deletes() {
    let cp = ControlPlane::start().expect("control plane starts");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = kube::Config::new(cp.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

        // A watcher started first sees everything that follows.
        let mut events = watcher(pods.clone(), watcher::Config::default().labels("app=kube-rs"))
            .applied_objects()
            .boxed();

        let created = pods.create(&PostParams::default(), &pod("a")).await.unwrap();
        assert!(created.metadata.uid.is_some());
        assert!(created.metadata.resource_version.is_some());
        pods.create(&PostParams::default(), &pod("b")).await.unwrap();
        let err = pods.create(&PostParams::default(), &pod("a")).await.unwrap_err();
        match err {
            kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
            other => panic!("expected 409 AlreadyExists, got {other}"),
        }

        let list = pods.list(&ListParams::default().labels("app=kube-rs")).await.unwrap();
        let mut names: Vec<String> = list.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let none = pods.list(&ListParams::default().labels("app=other")).await.unwrap();
        assert!(none.items.is_empty());

        let mut seen = Vec::new();
        while seen.len() < 2 {
            let p = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("the watcher delivers")
                .expect("the stream goes on")
                .expect("no watch error");
            seen.push(p.metadata.name.unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["a", "b"]);

        // Status through the status subresource, seen by the watcher.
        let status = serde_json::json!({"status": {"phase": "Running", "podIP": "10.244.0.9"}});
        pods.patch_status("a", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
        let updated = loop {
            let p = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("the watcher delivers the status change")
                .unwrap()
                .unwrap();
            if p.metadata.name.as_deref() == Some("a") && p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some("10.244.0.9") {
                break p;
            }
        };
        assert_eq!(updated.status.unwrap().phase.as_deref(), Some("Running"));

        // Server-side apply creates, then updates, a ConfigMap.
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let applied = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}});
        let pp = PatchParams::apply("kube-rs-test").force();
        cms.patch("settings", &pp, &Patch::Apply(&applied)).await.unwrap();
        let applied = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "safe"}});
        let cm = cms.patch("settings", &pp, &Patch::Apply(&applied)).await.unwrap();
        assert_eq!(cm.data.unwrap()["mode"], "safe");

        pods.delete("a", &DeleteParams::default()).await.unwrap();
        pods.delete("b", &DeleteParams::default()).await.unwrap();
        let left = pods.list(&ListParams::default().labels("app=kube-rs")).await.unwrap();
        assert!(left.items.is_empty(), "unscheduled pods are deleted at once");
        match pods.get("a").await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
            other => panic!("expected 404, got {other:?}"),
        }
    });
}
