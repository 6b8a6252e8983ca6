//! Service traffic while the agent is down, and the restarted agent
//! adopting its pinned maps and converging them.

use harness::node::Node;

use crate::common::{lb, web, Cluster, READINESS};

/// The `id N` of `frontend` in `agent bpf lb`.
fn frontend_id(node: &Node, frontend: &str) -> Option<String> {
    lb(node).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(frontend) && f.next() == Some("id"))
            .then(|| f.next().map(String::from))?
    })
}

/// Killing the agent leaves the load balancer pinned: a client pod keeps
/// connecting to a ClusterIP while no agent runs. Services created and
/// deleted meanwhile are converged by the restarted agent, which adopts
/// the maps (unchanged frontends keep their ids) and replaces its programs
/// in place (one per hook).
#[test]
fn service_traffic_flows_while_the_agent_restarts_and_the_maps_converge() {
    let mut c = Cluster::start(1);
    // No readiness probe: a restarted agent probes again from scratch,
    // and this test is about the load balancer, not readiness.
    c.apply(&web(c.probe.path(), 3).replace(READINESS, ""));
    let extra = |name: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: {port}, targetPort: web-http}}]\n"
        )
    };
    c.apply(&extra("old", 81));
    let vip = c.cluster_ip("web");
    let old_vip = c.cluster_ip("old");
    let pods = c.wait(120, "3 web pods running with IPs", || {
        let p = c.web_pods();
        (p.len() == 3).then_some(p)
    });
    let ips: Vec<&str> = pods.values().map(String::as_str).collect();
    let fe = format!("{vip}:80/TCP");
    c.wait_backends(&c.nodes[0], &fe, &ips);
    c.wait_backends(&c.nodes[0], &format!("{old_vip}:81/TCP"), &ips);
    let id_before = frontend_id(&c.nodes[0], &fe).unwrap();

    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("log");
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  volumes: [{{name: out, hostPath: {{path: {dir}}}}}]
  containers:
  - name: main
    image: busybox
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'while true; do r=$(printf "GET /index.html HTTP/1.0\r\n\r\n" | nc -w 2 {vip} 80 2>&1); case "$r" in *hello*) echo ok;; *) echo "fail $(date +%T) $r" | head -1;; esac >> /out/log; sleep 0.1; done']
"#,
        node = c.nodes[0].name,
        dir = out.path().display()
    ));
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    c.wait(60, "the client connects", || {
        (lines().len() >= 5).then_some(())
    });

    c.nodes[0].proc.as_mut().unwrap().kill();
    let from = lines().len();
    // Changes the stopped agent has to catch up with.
    c.k.run(&["delete", "svc", "old"]).unwrap();
    c.apply(&extra("fresh", 82));
    let fresh_vip = c.cluster_ip("fresh");
    c.wait(60, "20 tries while the agent is down", || {
        (lines().len() >= from + 20).then_some(())
    });
    let during = lines()[from..from + 20].to_vec();
    assert!(
        during.iter().all(|l| l == "ok"),
        "tries failed while the agent was down: {during:?}"
    );

    c.nodes[0].launch();
    let n = &c.nodes[0];
    c.wait_backends(n, &format!("{fresh_vip}:82/TCP"), &ips);
    c.wait(30, "the deleted service's frontend removed", || {
        (!lb(n).contains(&format!("{old_vip}:81/TCP"))).then_some(())
    });
    assert_eq!(
        frontend_id(n, &fe).as_deref(),
        Some(id_before.as_str()),
        "an unchanged frontend is adopted, not rewritten"
    );
    let status = lb(n);
    assert!(
        status.contains(&format!(
            "/{} (programs per hook: lb_connect4=1 lb_sendmsg4=1 lb_recvmsg4=1 lb_getpeername4=1)",
            n.cgroup_root.trim_start_matches('/')
        )),
        "one program per hook at the node's cgroup after the restart:\n{status}"
    );
    let until = lines().len();
    c.wait(30, "20 tries after the restart", || {
        (lines().len() >= until + 20).then_some(())
    });
    let failed: Vec<String> = lines()[from..]
        .iter()
        .filter(|l| *l != "ok")
        .cloned()
        .collect();
    if !failed.is_empty() {
        eprintln!("{}", n.log());
    }
    assert!(
        failed.is_empty(),
        "tries failed across the restart: {failed:?}"
    );
    assert!(!n.log().contains("panicked"), "{}", n.log());
}
