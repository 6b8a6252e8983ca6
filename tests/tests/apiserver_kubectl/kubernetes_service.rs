//! Service default/kubernetes and kube-dns: their addresses, and the
//! endpoints of `kubernetes` following the live API servers.

use std::time::Duration;

use harness::process::wait_for;

use crate::common::{json, tls_apiserver};

/// A new cluster has Service default/kubernetes at the range's first
/// address and kube-system/kube-dns at its tenth, as every cluster does.
/// The endpoints of `kubernetes` are the API servers that are alive: two
/// servers announce their addresses, the one that dies drops out, and
/// nothing is rewritten while nothing changes. A deleted `kubernetes` comes
/// back.
#[test]
fn the_kubernetes_service_leads_to_the_live_api_servers() {
    let etcd = harness::etcd::Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = harness::ports::free_port();
    // Two servers on one port, as a cluster's API servers are, on two
    // loopback addresses; the addresses they announce are documentation
    // ones that nothing connects to.
    let start = |i: u8| {
        let name = format!("apiserver-{i}");
        let kubeconfig = dir.path().join(format!("{name}.kubeconfig"));
        let guard = tls_apiserver(
            &etcd,
            dir.path(),
            &name,
            &[
                format!("--bind-address=127.0.0.{i}:{port}"),
                format!("--tls-san=127.0.0.{i}"),
                format!("--advertise-url=https://127.0.0.{i}:{port}"),
                format!("--advertise-address=192.0.2.1{i}"),
            ],
        );
        let k = harness::kubectl::Kubectl::new(&kubeconfig).unwrap();
        let up = wait_for(Duration::from_secs(30), || {
            kubeconfig
                .exists()
                .then(|| k.run(&["get", "ns", "-o", "name"]).ok())
                .flatten()
        });
        assert!(up.is_some(), "API server {i} did not start");
        (guard, k)
    };
    let (_first, k) = start(2);
    let (second, _) = start(3);

    let services = wait_for(Duration::from_secs(30), || {
        let v = json(&k.run(&["get", "svc", "-A", "-o", "json"]).ok()?);
        let find = |ns: &str, name: &str| {
            v["items"]
                .as_array()?
                .iter()
                .find(|s| s["metadata"]["namespace"] == ns && s["metadata"]["name"] == name)
                .cloned()
        };
        Some((
            find("default", "kubernetes")?,
            find("kube-system", "kube-dns")?,
        ))
    });
    let (api, dns) = services.expect("Services kubernetes and kube-dns");
    assert_eq!(api["spec"]["clusterIP"], "10.96.0.1", "{api}");
    assert_eq!(api["spec"]["ports"][0]["port"], 443, "{api}");
    assert_eq!(api["spec"]["ports"][0]["targetPort"], port, "{api}");
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10", "{dns}");
    let dns_ports: Vec<String> = dns["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(dns_ports, ["53/UDP", "53/TCP"], "{dns}");

    let endpoints = || {
        k.run(&[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={range .subsets[*]}{.addresses[*].ip}:{.ports[0].port}{end}",
        ])
        .unwrap_or_default()
    };
    let slice = || {
        k.run(&[
            "get",
            "endpointslice",
            "kubernetes",
            "-o",
            "jsonpath={.endpoints[*].addresses[0]}:{.ports[0].port} {.metadata.labels.kubernetes\\.io/service-name} {.metadata.resourceVersion}",
        ])
        .unwrap_or_default()
    };
    let both = format!("192.0.2.12 192.0.2.13:{port}");
    let announced = wait_for(Duration::from_secs(30), || {
        (endpoints() == both && slice().starts_with(&format!("{both} kubernetes "))).then_some(())
    });
    assert!(announced.is_some(), "{} / {}", endpoints(), slice());
    // Two rounds of announcing (10 s apart) with nothing to change.
    let steady = slice();
    std::thread::sleep(Duration::from_secs(21));
    assert_eq!(
        slice(),
        steady,
        "the slice is rewritten with nothing changed"
    );

    drop(second);
    let one = format!("192.0.2.12:{port}");
    let dropped = wait_for(Duration::from_secs(60), || {
        (endpoints() == one && slice().starts_with(&format!("{one} "))).then_some(())
    });
    assert!(dropped.is_some(), "{} / {}", endpoints(), slice());

    k.run(&["delete", "svc", "kubernetes"]).unwrap();
    let back = wait_for(Duration::from_secs(30), || {
        k.run(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .ok()
        .filter(|ip| ip == "10.96.0.1")
    });
    assert!(back.is_some(), "Service kubernetes did not come back");
}
