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

/// Services created all at once in a small range each get an address of
/// their own, with no conflict handed to the client; asking for an address
/// or a NodePort another Service holds is refused with 422 naming the field.
#[test]
fn concurrent_services_get_distinct_addresses_and_a_taken_one_is_refused() {
    use k8s_openapi::api::core::v1::Service;
    use std::collections::HashSet;

    // 62 usable addresses, .1 and .10 kept for the API and DNS.
    let cp = ControlPlane::start_with(&["--service-cluster-ip-range=10.97.0.0/26"])
        .expect("control plane starts");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = kube::Client::try_from(kube::Config::new(cp.url().parse().unwrap())).unwrap();
        let services: Api<Service> = Api::namespaced(client, "default");
        let svc = |name: &str, spec: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
                .unwrap()
        };
        const N: usize = 48;
        let ips: Vec<String> = futures::stream::iter(0..N)
            .map(|i| {
                let services = services.clone();
                let s = svc(
                    &format!("s{i}"),
                    serde_json::json!({"ports": [{"port": 80}]}),
                );
                async move {
                    let created = services
                        .create(&PostParams::default(), &s)
                        .await
                        .unwrap_or_else(|e| panic!("s{i}: {e}"));
                    created.spec.unwrap().cluster_ip.unwrap()
                }
            })
            .buffer_unordered(N)
            .collect()
            .await;
        let distinct: HashSet<&String> = ips.iter().collect();
        assert_eq!(distinct.len(), N, "{ips:?}");
        assert!(ips.iter().all(|ip| ip.starts_with("10.97.0.")), "{ips:?}");
        assert!(!distinct.contains(&"10.97.0.1".to_string()));
        assert!(!distinct.contains(&"10.97.0.10".to_string()));

        let refused = |e: kube::Error| match e {
            kube::Error::Api(s) => s,
            other => panic!("expected a Status, got {other}"),
        };
        let taken = ips[0].clone();
        let s = refused(
            services
                .create(
                    &PostParams::default(),
                    &svc(
                        "same-ip",
                        serde_json::json!({"clusterIP": taken, "ports": [{"port": 80}]}),
                    ),
                )
                .await
                .unwrap_err(),
        );
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert!(
            s.message.contains("spec.clusterIPs")
                && s.message.contains("provided IP is already allocated"),
            "{}",
            s.message
        );

        let np = |name: &str| {
            svc(
                name,
                serde_json::json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            )
        };
        services
            .create(&PostParams::default(), &np("np-a"))
            .await
            .unwrap();
        let s = refused(
            services
                .create(&PostParams::default(), &np("np-b"))
                .await
                .unwrap_err(),
        );
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert!(
            s.message.contains("spec.ports[0].nodePort")
                && s.message.contains("provided port is already allocated"),
            "{}",
            s.message
        );
        // The same holds for a Service turned into a NodePort one.
        let to_np = serde_json::json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
        let s = refused(
            services
                .patch("s1", &PatchParams::default(), &Patch::Merge(&to_np))
                .await
                .unwrap_err(),
        );
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert!(s.message.contains("provided port is already allocated"), "{}", s.message);
        let twice = svc(
            "twice",
            serde_json::json!({"type": "NodePort", "ports": [
                {"name": "a", "port": 80, "nodePort": 30090},
                {"name": "b", "port": 81, "nodePort": 30090},
                {"name": "c", "port": 80},
            ]}),
        );
        let s = refused(
            services
                .create(&PostParams::default(), &twice)
                .await
                .unwrap_err(),
        );
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert!(
            s.message
                .contains("spec.ports[1].nodePort: Duplicate value: 30090")
                && s.message.contains("spec.ports[2]: Duplicate value"),
            "{}",
            s.message
        );
        // Nothing of the refused ones was stored, and their addresses stay free.
        let names: Vec<String> = services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| ["same-ip", "np-b", "twice"].contains(&n.as_str())),
            "{names:?}"
        );
        services
            .delete("np-a", &DeleteParams::default())
            .await
            .unwrap();
        services
            .create(&PostParams::default(), &np("np-b"))
            .await
            .unwrap();
    });
}
