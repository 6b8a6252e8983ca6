//! User stories of NetworkPolicy: the API kubectl drives, and the verdicts
//! every node's datapath enforces.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::node::Node;
use harness::process::{wait_for, Guarded};

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: shop}}
      podSelector: {matchLabels: {app: web}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 5432}
    - {port: metrics, protocol: TCP}
    - {port: 30000, endPort: 30100, protocol: UDP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#;

/// A user applies NetworkPolicies with kubectl, lists them with kubectl's
/// columns, gets the defaults back, and a malformed one is refused naming
/// the field.
#[test]
fn kubectl_applies_lists_and_validates_network_policies() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    k.run(&["create", "namespace", "shop"]).unwrap();
    let out = k.run_stdin(&["apply", "-f", "-"], POLICY).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("networkpolicy.networking.k8s.io/db-from-web created"),
        "{said}"
    );

    let table = k.run(&["get", "netpol", "-n", "shop"]).unwrap();
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "POD-SELECTOR", "AGE"], "{table}");
    assert_eq!(lines[1][..2], ["db-from-web", "app=db"], "{table}");
    assert_eq!(lines[2][..2], ["default-deny", "<none>"], "{table}");

    let got = k
        .run(&[
            "get",
            "networkpolicy",
            "db-from-web",
            "-n",
            "shop",
            "-o",
            "json",
        ])
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(got["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");

    // Re-applying an edit goes through as a patch.
    let edited = POLICY.replace("{port: 5432}", "{port: 5433}");
    let out = k.run_stdin(&["apply", "-f", "-"], &edited).unwrap();
    assert!(out.status.success());
    let port = k
        .run(&[
            "get",
            "netpol",
            "db-from-web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.ingress[0].ports[0].port}",
        ])
        .unwrap();
    assert_eq!(port.trim(), "5433");

    let bad = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [192.168.0.0/24]}}]
    ports: [{port: 90, endPort: 80}]
"#;
    let out = k.run_stdin(&["create", "-f", "-"], bad).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(r#"The NetworkPolicy "bad" is invalid"#),
        "{err}"
    );
    assert!(
        err.contains("spec.ingress[0].from[0].ipBlock.except[0]"),
        "{err}"
    );
    assert!(err.contains("spec.ingress[0].ports[0].endPort"), "{err}");
    let names = k
        .run(&["get", "netpol", "-n", "shop", "-o", "name"])
        .unwrap();
    assert_eq!(names.lines().count(), 2, "{names}");

    k.run(&["delete", "netpol", "default-deny", "-n", "shop"])
        .unwrap();
    let names = k
        .run(&["get", "netpol", "-n", "shop", "-o", "name"])
        .unwrap();
    assert_eq!(names.trim(), "networkpolicy.networking.k8s.io/db-from-web");
}

/// A control plane with the scheduler and controller-manager, and nodes.
struct Cluster {
    // Nodes first: dropping them deletes their pods through the API.
    nodes: Vec<Node>,
    _components: Vec<Guarded>,
    k: Kubectl,
    _cp: ControlPlane,
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

impl Cluster {
    fn start(nodes: usize) -> Self {
        let cp = ControlPlane::start_networked(&[]).unwrap();
        let k = cp.kubectl();
        let components = vec![
            cp.component("scheduler", &["scheduler"]).unwrap(),
            cp.component(
                "controller-manager",
                &["controller-manager", "--allocate-node-cidrs", "false"],
            )
            .unwrap(),
        ];
        let nodes = (0..nodes).map(|_| Node::start(&cp)).collect();
        Self {
            nodes,
            _components: components,
            k,
            _cp: cp,
        }
    }

    fn apply(&self, yaml: &str) {
        let out = self.k.run_stdin(&["apply", "-f", "-"], yaml).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = n.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out += &format!(
                "--- agent {}\n{}\n--- bpf policy\n{}\n",
                n.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                bpf_policy(n)
            );
        }
        out
    }

    /// The nine pods x/a .. z/c, spread over the nodes, each serving HTTP
    /// on port 80 (named `http`). Returns their addresses in that order.
    fn start_pods(&self) -> Vec<String> {
        let mut yaml = String::new();
        for ns in NAMESPACES {
            yaml += &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: '{ns}', labels: {{ns: '{ns}'}}}}\n---\n"
            );
        }
        for (i, (ns, pod)) in pods().enumerate() {
            let node = &self.nodes[i % self.nodes.len()].name;
            yaml += &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: '{pod}', namespace: '{ns}', labels: {{pod: '{pod}'}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox
    ports: [{{name: http, containerPort: 80}}]
    command: [sh, -c, 'mkdir -p /www && echo "hello from {ns}/{pod}" > /www/index.html && exec httpd -f -p 80 -h /www']
---
"#
            );
        }
        self.apply(&yaml);
        pods()
            .map(|(ns, pod)| {
                wait_for(Duration::from_secs(120), || {
                    let ip = self
                        .k
                        .run(&[
                            "get",
                            "pod",
                            pod,
                            "-n",
                            ns,
                            "-o",
                            "jsonpath={.status.phase} {.status.podIP}",
                        ])
                        .ok()?;
                    let (phase, ip) = ip.trim().split_once(' ')?;
                    (phase == "Running" && !ip.is_empty()).then(|| ip.to_string())
                })
                .unwrap_or_else(|| panic!("{ns}/{pod} did not run\n{}", self.logs()))
            })
            .collect()
    }

    /// Probes every pod from every pod (in parallel per source): one line
    /// per source, `.` where the HTTP request got its answer, `X` where not.
    fn matrix(&self, ips: &[String]) -> String {
        let targets = ips.join(" ");
        let script = format!(
            "for ip in {targets}; do if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $ip 80 2>/dev/null | grep -q 'hello from'; then printf .; else printf X; fi; done"
        );
        let rows: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = pods()
                .map(|(ns, pod)| {
                    let k = &self.k;
                    let script = &script;
                    s.spawn(move || {
                        k.run(&["exec", pod, "-n", ns, "--", "sh", "-c", script])
                            .map(|o| o.trim().to_string())
                            .unwrap_or_else(|e| format!("exec failed: {e}"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        rows.join("\n")
    }

    /// Polls the probe matrix until it is `want`; on timeout fails with
    /// both matrices side by side.
    fn expect(&self, case: &str, ips: &[String], want: &[&str; 9]) {
        let want: Vec<String> = want.iter().map(|r| r.replace(' ', "")).collect();
        let want = want.join("\n");
        let mut last = String::new();
        let seen = wait_for(Duration::from_secs(90), || {
            last = self.matrix(ips);
            (last == want).then_some(())
        });
        if seen.is_none() {
            let mut diff = String::from("from    expected     observed\n");
            let names: Vec<String> = pods().map(|(n, p)| format!("{n}/{p}")).collect();
            for (i, (w, g)) in want.lines().zip(last.lines()).enumerate() {
                let mark = if w == g { "" } else { "   <-- differs" };
                diff += &format!("{:<7} {w:<12} {g}{mark}\n", names[i]);
            }
            panic!(
                "case {case:?}: the probe matrix never matched (columns x/a .. z/c)\n{diff}\n{}",
                self.logs()
            );
        }
    }
}

fn pods() -> impl Iterator<Item = (&'static str, &'static str)> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| (*ns, *p)))
}

/// `agent bpf policy` of `node`.
fn bpf_policy(node: &Node) -> String {
    let out = node
        .agent(&["bpf", "policy", "--bpffs-dir"])
        .arg(&node.bpffs_dir)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every pod reaches every pod.
const OPEN: [&str; 9] = ["... ... ..."; 9];
/// Nobody but themselves reaches x's pods.
const X_SHUT: [&str; 9] = [
    ".XX ... ...",
    "X.X ... ...",
    "XX. ... ...",
    "XXX ... ...",
    "XXX ... ...",
    "XXX ... ...",
    "XXX ... ...",
    "XXX ... ...",
    "XXX ... ...",
];

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n"
    )
}

/// The upstream network-policy model on two nodes: namespaces x, y, z with
/// pods a, b, c each serving HTTP on 80, probed from every pod to every
/// pod, with the expected truth table after each policy change. A pod
/// always reaches itself (its own address stays inside the pod).
#[test]
fn the_probe_matrix_follows_each_network_policy() {
    let c = Cluster::start(2);
    let ips = c.start_pods();

    c.expect("no policy", &ips, &OPEN);

    c.apply(&policy("deny", "{podSelector: {}, policyTypes: [Ingress]}"));
    c.expect("default-deny ingress in x", &ips, &X_SHUT);
    // The verdicts are visible per pod on the node that runs x/a.
    let status = bpf_policy(&c.nodes[0]);
    let x_a = status
        .split("\npod ")
        .find(|s| s.starts_with(&format!("{} ", ips[0])))
        .unwrap_or_else(|| panic!("x/a missing from `agent bpf policy`:\n{status}"));
    assert!(x_a.contains("ingress: isolated"), "{x_a}");
    assert!(!x_a.contains("denied 0\n"), "denials counted: {x_a}");

    c.apply(&policy(
        "same-namespace",
        "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
    ));
    let mut same = X_SHUT;
    same[..3].copy_from_slice(&["... ... ..."; 3]);
    c.expect("allow from the same namespace", &ips, &same);
    c.k.run(&["delete", "netpol", "same-namespace", "-n", "x"])
        .unwrap();

    c.apply(&policy(
        "from-y",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}",
    ));
    let mut from_y = X_SHUT;
    from_y[3..6].copy_from_slice(&["... ... ..."; 3]);
    c.expect("allow from a labelled namespace", &ips, &from_y);
    c.k.run(&["delete", "netpol", "from-y", "-n", "x"]).unwrap();

    // x/a from every pod address but y/b's.
    c.apply(&policy(
        "block",
        &format!(
            "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{}/32]}}}}]}}]}}",
            ips[4]
        ),
    ));
    let mut block = X_SHUT;
    for (i, row) in block.iter_mut().enumerate() {
        *row = match i {
            1 => "..X ... ...",
            2 => ".X. ... ...",
            4 => "XXX ... ...",
            _ => ".XX ... ...",
        };
    }
    c.expect("ipBlock with except", &ips, &block);
    c.k.run(&["delete", "netpol", "block", "-n", "x"]).unwrap();

    c.apply(&policy(
        "named",
        "{podSelector: {}, ingress: [{ports: [{port: http}]}]}",
    ));
    c.expect("a named port that the pods serve", &ips, &OPEN);
    c.apply(&policy(
        "named",
        "{podSelector: {}, ingress: [{ports: [{port: metrics}]}]}",
    ));
    c.expect("a named port nobody declares", &ips, &X_SHUT);
    c.k.run(&["delete", "netpol", "named", "-n", "x"]).unwrap();

    c.apply(&policy(
        "blue",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {team: blue}}}]}]}",
    ));
    c.expect("nobody is blue yet", &ips, &X_SHUT);
    c.k.run(&["label", "pod", "c", "-n", "z", "team=blue"])
        .unwrap();
    let mut blue = X_SHUT;
    blue[8] = "... ... ...";
    c.expect("z/c labelled into the selector", &ips, &blue);
    c.k.run(&["label", "pod", "c", "-n", "z", "team-"]).unwrap();
    c.expect("z/c labelled out of the selector", &ips, &X_SHUT);

    c.k.run(&["delete", "netpol", "--all", "-n", "x"]).unwrap();
    c.expect("every policy deleted", &ips, &OPEN);
}
