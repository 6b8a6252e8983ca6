//! Thousands of Services programmed on one node, and a change reaching the
//! maps.

use std::time::Instant;

use crate::common::{lb, Cluster};

/// 5,000 ClusterIP Services with 3 endpoints each are all programmed on a
/// node, and then a change to one of them reaches its maps.
#[test]
fn five_thousand_services_are_programmed_and_a_change_reaches_the_maps() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kestrel_agent::services::bpf::lookup;
    use kestrel_agent::services::model::{Frontend, Proto, Target};
    use kube::api::{Api, PostParams};

    const SERVICES: usize = 5000;
    let c = Cluster::start(1);
    let node = &c.nodes[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The client's buffer task needs the runtime it will run on.
    let _entered = rt.enter();
    let client = kube::Client::try_from(kube::Config::new(c.cp.url().parse().unwrap())).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    // Endpoint addresses need not exist: only the maps are looked at.
    let endpoint = |i: usize, j: usize| format!("10.250.{}.{}", i / 64, (i % 64) * 3 + j + 1);
    let slice = |i: usize, ips: &[String]| -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("s{i}-x"), "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let started = Instant::now();
    let vips: Vec<String> = rt.block_on(async {
        futures::stream::iter(0..SERVICES)
            .map(|i| {
                let (services, slices) = (services.clone(), slices.clone());
                let ips: Vec<String> = (0..3).map(|j| endpoint(i, j)).collect();
                let s = slice(i, &ips);
                async move {
                    let svc: Service = serde_json::from_value(serde_json::json!({
                        "metadata": {"name": format!("s{i}")},
                        "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
                    }))
                    .unwrap();
                    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
                    slices.create(&PostParams::default(), &s).await.unwrap();
                    svc.spec.unwrap().cluster_ip.unwrap()
                }
            })
            .buffered(32)
            .collect()
            .await
    });
    let created = started.elapsed();
    let frontend = |vip: &str| Frontend {
        vip: vip.parse().unwrap(),
        port: 80,
        proto: Proto::Tcp,
    };
    c.wait(120, "every service programmed", || {
        vips.iter()
            .enumerate()
            .rev()
            .all(|(i, vip)| {
                lookup(&node.bpffs_dir, &frontend(vip))
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.len() == 3 && b[0].ip.to_string() == endpoint(i, 0))
            })
            .then_some(())
    });
    eprintln!(
        "{SERVICES} services: created in {created:?}, all programmed {:?} after the first create",
        started.elapsed()
    );
    // Plus the cluster DNS address (UDP and TCP) the agent serves itself
    // and Service default/kubernetes (no endpoint: the harness's API
    // server has no routable address).
    let status = lb(node);
    assert!(
        status.contains(&format!("frontends ({})", SERVICES + 3)),
        "{}",
        &status[..500]
    );

    // One backend of one service changes.
    let i = SERVICES / 2;
    let moved = "10.251.0.9".to_string();
    let mut ips: Vec<String> = (0..2).map(|j| endpoint(i, j)).collect();
    ips.push(moved.clone());
    let mut s = slice(i, &ips);
    let current = rt.block_on(slices.get(&format!("s{i}-x"))).unwrap();
    s.metadata.resource_version = current.metadata.resource_version;
    rt.block_on(slices.replace(&format!("s{i}-x"), &PostParams::default(), &s))
        .unwrap();
    let written = Instant::now();
    let want = Target {
        ip: moved.parse().unwrap(),
        port: 8080,
    };
    c.wait(30, "the change in the maps", || {
        lookup(&node.bpffs_dir, &frontend(&vips[i]))
            .ok()
            .flatten()
            .is_some_and(|b| b.contains(&want) && b.len() == 3)
            .then_some(())
    });
    // The lag is measured by `bench services`; here it is only shown.
    eprintln!(
        "one endpoint changed: in the maps {:?} after the API write",
        written.elapsed()
    );
}
