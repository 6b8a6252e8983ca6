//! Endpoints following pod readiness, and a namespace deletion emptying
//! the namespace.

use serde_json::Value;

use crate::common::{get, live_pods_in, Cluster, RC};

/// Endpoints follow pod readiness (named target ports resolved per pod);
/// deleting the namespace removes everything in it.
#[test]
fn endpoints_follow_readiness_and_namespace_deletion_empties_it() {
    let c = Cluster::start(&[], &[], &[("node", 2, &[])]);
    c.k.apply("{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"shop\"}}");
    let yaml = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n",
        RC.replace("metadata: {name: web}", "metadata: {name: web, namespace: shop}")
            .replace("replicas: 3", "replicas: 2")
    );
    c.k.apply(&yaml);
    let ips = c.wait(30, "2 ready endpoints on port 8080", || {
        let ep = get(&c.k, &["endpoints", "web", "-n", "shop"]);
        let subset = &ep["subsets"][0];
        let addrs = subset["addresses"].as_array()?;
        (addrs.len() == 2 && subset["ports"][0]["port"] == 8080).then(|| {
            addrs
                .iter()
                .map(|a| a["ip"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
    });
    // One pod's readiness probe starts failing (the test plays kubelet).
    let pod = live_pods_in(&c.k, "app=web", "shop")
        .into_iter()
        .find(|p| p["status"]["podIP"] == ips[0].as_str())
        .unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap();
    c.k.run(&[
        "-n",
        "shop",
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ])
    .unwrap();
    c.wait(30, "the pod moved to notReadyAddresses", || {
        let ep = get(&c.k, &["endpoints", "web", "-n", "shop"]);
        let s = &ep["subsets"][0];
        (s["addresses"].as_array().map(Vec::len) == Some(1)
            && s["notReadyAddresses"][0]["ip"] == ips[0].as_str())
        .then_some(())
    });
    let slices = get(
        &c.k,
        &[
            "endpointslices",
            "-n",
            "shop",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    );
    let eps = slices["items"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let not_ready: Vec<&Value> = eps
        .iter()
        .filter(|e| e["conditions"]["ready"] == false)
        .collect();
    assert_eq!(not_ready.len(), 1, "{slices}");
    assert_eq!(not_ready[0]["addresses"][0], ips[0].as_str());

    let out =
        c.k.output(&["delete", "namespace", "shop", "--timeout=60s"])
            .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let gone = c.k.output(&["get", "namespace", "shop"]).unwrap();
    assert!(!gone.status.success());
    let left = get(&c.k, &["pods,services,endpoints,rc", "-A"]);
    let in_shop: Vec<&Value> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["metadata"]["namespace"] == "shop")
        .collect();
    assert!(in_shop.is_empty(), "left behind: {in_shop:?}");
}
