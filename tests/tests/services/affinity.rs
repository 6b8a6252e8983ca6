//! sessionAffinity ClientIP: one backend per client until it idles out.

use std::collections::BTreeMap;

use crate::common::{client, http_loop, lb, on_node, tally, web, Cluster};

/// sessionAffinity ClientIP: every connection of one client (a pod, or a
/// process of the node) goes to the same backend while it keeps coming
/// back within the timeout; after an idle timeout it is balanced afresh;
/// with affinity turned off connections spread again.
#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_until_it_times_out() {
    let c = Cluster::start(1);
    c.apply(&web(c.probe.path(), 3));
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n  ports: [{port: 80, targetPort: web-http}]\n",
    );
    let n = &c.nodes[0];
    c.apply(&client("client", &n.name, c.probe.path()));
    let vip = c.cluster_ip("sticky");
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    c.wait_backends(n, &format!("{vip}:80/TCP"), &ips);
    c.wait(60, "the client pod runs", || {
        c.exec("client", &["true"]).ok()
    });
    let status = lb(n);
    assert!(status.contains("affinity ClientIP 1s"), "{status}");

    // Back-to-back connections: one backend.
    let out = c
        .exec(
            "client",
            &["sh", "-c", &http_loop(&format!("{vip} 80"), 30)],
        )
        .unwrap();
    let t = tally(&out);
    assert_eq!(t.values().sum::<usize>(), 30, "{out}");
    assert_eq!(t.len(), 1, "one client, one backend: {t:?}");
    let mut node_t = BTreeMap::new();
    for _ in 0..10 {
        let page = on_node(n, &format!("curl -sS -m 3 http://{vip}/index.html")).unwrap();
        for (k, v) in tally(&page) {
            *node_t.entry(k).or_insert(0) += v;
        }
    }
    assert_eq!(node_t.len(), 1, "the node is one client too: {node_t:?}");
    assert!(
        lb(n).contains("client affinity (2)"),
        "a pod and the node:\n{}",
        lb(n)
    );

    // Idle longer than the timeout before each connection: chosen afresh
    // each time (all 8 on one backend by chance: (1/3)^7).
    let idle = format!(
        "for i in $(seq 8); do sleep 1.5; printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {vip} 80; echo; done"
    );
    let t = tally(&c.exec("client", &["sh", "-c", &idle]).unwrap());
    assert_eq!(t.values().sum::<usize>(), 8);
    assert!(t.len() >= 2, "affinity outlived its timeout: {t:?}");

    // Affinity off: spread again.
    c.k.run(&[
        "patch",
        "svc",
        "sticky",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ])
    .unwrap();
    c.wait(30, "affinity off in the maps", || {
        (!lb(n).contains("affinity ClientIP")).then_some(())
    });
    let t = tally(
        &c.exec(
            "client",
            &["sh", "-c", &http_loop(&format!("{vip} 80"), 30)],
        )
        .unwrap(),
    );
    assert_eq!(t.len(), 3, "{t:?}");
}
