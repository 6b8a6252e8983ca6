//! Services resolved by name through the agent's cluster DNS, from pods
//! and from the node.

use crate::common::{client, http_loop, on_node, tally, web, Cluster};

/// Cluster DNS served by the agent: a pod's resolv.conf points at the
/// cluster DNS address with its namespace's search path; Services resolve
/// by short and full names (A and SRV), a headless Service to its pods,
/// and connecting by name reaches every backend; the node resolves them
/// too.
#[test]
fn pods_and_the_node_resolve_services_by_name() {
    let c = Cluster::start(1);
    c.apply(&web(c.probe.path(), 3));
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-headless}\nspec:\n  clusterIP: None\n  selector: {app: web}\n  ports: [{name: http, port: 8080}]\n",
    );
    let n = &c.nodes[0];
    c.apply(&client("client", &n.name, c.probe.path()));
    let vip = c.cluster_ip("web");
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    c.wait_backends(n, &format!("{vip}:80/TCP"), &ips);
    c.wait(60, "the client pod runs", || {
        c.exec("client", &["true"]).ok()
    });

    let resolv = c.exec("client", &["cat", "/etc/resolv.conf"]).unwrap();
    assert!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("ndots:5"),
        "{resolv}"
    );
    // The address is held by a Service, so no other Service gets it.
    let dns_ip =
        c.k.run(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap_or_default();
    assert_eq!(dns_ip, "10.96.0.10");

    let lookup = |args: &[&str]| -> String {
        let mut cmd = vec!["nslookup"];
        cmd.extend_from_slice(args);
        c.wait(20, &format!("nslookup {args:?}"), || {
            c.exec("client", &cmd).ok()
        })
    };
    let a = lookup(&["web.default.svc.cluster.local"]);
    assert!(a.contains(&format!("Address: {vip}")), "{a}");
    let srv = lookup(&["-type=srv", "_http._tcp.web.default.svc.cluster.local"]);
    assert!(srv.contains("80 web.default.svc.cluster.local"), "{srv}");
    let headless = c.wait(20, "the headless service lists every pod", || {
        let out = c
            .exec(
                "client",
                &["nslookup", "web-headless.default.svc.cluster.local"],
            )
            .ok()?;
        ips.iter().all(|ip| out.contains(ip)).then_some(out)
    });
    assert!(!headless.contains(&vip), "{headless}");
    let missing = c.exec("client", &["nslookup", "nope.default.svc.cluster.local"]);
    assert!(
        missing.as_ref().is_err_and(|e| e.contains("NXDOMAIN")),
        "{missing:?}"
    );

    // By name, through the search path, as `curl http://web` would.
    let out = c
        .exec("client", &["sh", "-c", &http_loop("web 80", 90)])
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let t = tally(&out);
    assert_eq!(t.values().sum::<usize>(), 90, "{out}");
    assert_eq!(t.len(), 3, "every backend by name: {t:?}");
    let out = c
        .exec("client", &["sh", "-c", &http_loop("web.default 80", 3)])
        .unwrap();
    assert_eq!(tally(&out).values().sum::<usize>(), 3, "{out}");
    // UDP by name too.
    let out = c
        .exec(
            "client",
            &["/probe/netprobe", "ask-udp", "web:53", "3", "connected"],
        )
        .unwrap();
    assert_eq!(tally(&out).values().sum::<usize>(), 3, "{out}");
    assert!(out.contains(&format!("via {vip}:53")), "{out}");

    // The node, from its cgroup subtree, asks the same address.
    let out = on_node(
        n,
        "busybox nslookup web.default.svc.cluster.local 10.96.0.10",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(out.contains(&format!("Address: {vip}")), "{out}");
}
