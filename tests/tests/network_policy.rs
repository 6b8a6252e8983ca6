//! User stories of NetworkPolicy: the API kubectl drives, and the verdicts
//! every node's datapath enforces.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::netpol::{bpf_policy, sctp_unavailable, Cluster, Truth};
use harness::process::wait_for;

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

/// X_SHUT, but the sources in `rows` reach x's pods.
fn x_open_from(rows: std::ops::Range<usize>) -> [&'static str; 9] {
    let mut m = X_SHUT;
    m[rows].fill("... ... ...");
    m
}

/// The upstream network-policy model on two nodes: namespaces x, y, z with
/// pods a, b, c each serving TCP and UDP on 80 and 81, probed from every
/// pod to every pod on each, with the expected truth table after each
/// policy change. A pod always reaches itself (its own address stays
/// inside the pod).
#[test]
fn the_probe_matrix_follows_each_network_policy() {
    match sctp_unavailable() {
        Some(why) => eprintln!("SCTP is not probed: this kernel refuses SCTP sockets ({why})"),
        None => eprintln!("SCTP is not probed: the probe speaks TCP and UDP only"),
    }
    let c = Cluster::start(2);
    let ips = c.start_pods();
    let delete = |name: &str| {
        c.k.run(&["delete", "netpol", name, "-n", "x"]).unwrap();
    };

    c.expect("no policy", &ips, &Truth::all(&OPEN));

    c.apply(&policy("deny", "{podSelector: {}, policyTypes: [Ingress]}"));
    c.expect("default-deny ingress in x", &ips, &Truth::all(&X_SHUT));
    // The verdicts are visible per pod on the node that runs x/a.
    let status = bpf_policy(&c.nodes[0]);
    let x_a = status
        .split("\npod ")
        .find(|s| s.starts_with(&format!("{} ", ips[0])))
        .unwrap_or_else(|| panic!("x/a missing from `agent bpf policy`:\n{status}"));
    assert!(x_a.contains("ingress: isolated"), "{x_a}");
    assert!(!x_a.contains("denied 0\n"), "denials counted: {x_a}");
    // And on the agent's /metrics, by pod and direction.
    let metrics = c.nodes[0]
        .exec(&["curl", "-sS", "-m", "3", "http://127.0.0.1:10250/metrics"])
        .unwrap();
    let denied = |pod: &str, direction: &str| -> u64 {
        let series = format!(
            "kestrel_policy_denied_flows_total{{namespace=\"x\",pod=\"{pod}\",direction=\"{direction}\"}} "
        );
        let line = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
        line.trim().parse().unwrap()
    };
    assert!(denied("a", "ingress") > 0, "{metrics}");
    assert_eq!(denied("a", "egress"), 0, "{metrics}");

    c.apply(&policy(
        "same-namespace",
        "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
    ));
    c.expect(
        "allow from the same namespace",
        &ips,
        &Truth::all(&x_open_from(0..3)),
    );
    delete("same-namespace");

    c.apply(&policy(
        "from-y",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}",
    ));
    c.expect(
        "allow from a labelled namespace",
        &ips,
        &Truth::all(&x_open_from(3..6)),
    );
    delete("from-y");

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
    c.expect("ipBlock with except", &ips, &Truth::all(&block));
    delete("block");

    c.apply(&policy(
        "named",
        "{podSelector: {}, ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]}",
    ));
    let only = |port: &str| Truth::all(&X_SHUT).on(port, &OPEN);
    c.expect("a named port that the pods serve", &ips, &only("udp/81"));
    c.apply(&policy(
        "named",
        "{podSelector: {}, ingress: [{ports: [{port: metrics}]}]}",
    ));
    c.expect("a named port nobody declares", &ips, &Truth::all(&X_SHUT));
    delete("named");

    c.apply(&policy(
        "range",
        "{podSelector: {}, ingress: [{ports: [{port: 81, endPort: 90}]}]}",
    ));
    c.expect("endPort: TCP 81 to 90", &ips, &only("tcp/81"));
    delete("range");

    // Applying a changed spec of the same policy: the matrix follows.
    c.apply(&policy(
        "update",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: 80}]}]}",
    ));
    let from_y = Truth::all(&X_SHUT).on("tcp/80", &x_open_from(3..6));
    c.expect("updated policy, first version: y on TCP 80", &ips, &from_y);
    c.apply(&policy(
        "update",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'z'}}}], ports: [{port: 81, protocol: UDP}]}]}",
    ));
    let from_z = Truth::all(&X_SHUT).on("udp/81", &x_open_from(6..9));
    c.expect("updated policy, second version: z on UDP 81", &ips, &from_z);
    delete("update");

    // A flow allowed before its policy narrowed stops once the policy no
    // longer allows it: y/a keeps talking to x/a over UDP from one source
    // port, as the flow table remembers it.
    let one_flow = format!("udp:{}:80@40000", ips[0]);
    c.apply(&policy(
        "narrowed",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}",
    ));
    wait_for(Duration::from_secs(60), || {
        (c.probe("y", "a", &one_flow) == ".").then_some(())
    })
    .unwrap_or_else(|| panic!("y/a never reached x/a\n{}", c.logs()));
    c.apply(&policy(
        "narrowed",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'z'}}}]}]}",
    ));
    wait_for(Duration::from_secs(60), || {
        (c.probe("y", "a", &one_flow) == "X").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the flow allowed before the policy narrowed still passes\n{}",
            c.logs()
        )
    });
    c.expect("narrowed to z", &ips, &Truth::all(&x_open_from(6..9)));
    delete("narrowed");

    c.apply(&policy(
        "blue",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {team: blue}}}]}]}",
    ));
    c.expect("nobody is blue yet", &ips, &Truth::all(&X_SHUT));
    c.k.run(&["label", "pod", "c", "-n", "z", "team=blue"])
        .unwrap();
    c.expect(
        "z/c labelled into the selector",
        &ips,
        &Truth::all(&x_open_from(8..9)),
    );
    c.k.run(&["label", "pod", "c", "-n", "z", "team-"]).unwrap();
    c.expect(
        "z/c labelled out of the selector",
        &ips,
        &Truth::all(&X_SHUT),
    );
    c.k.run(&["delete", "netpol", "--all", "-n", "x"]).unwrap();

    // x/a's own node: its agent's API, and the cluster DNS it answers.
    let node_api = format!("syn:{}:10250", c.nodes[0].ip);
    let name = "kubernetes.default.svc.cluster.local";
    let resolves = || {
        c.k.run(&["exec", "a", "-n", "x", "--", "nslookup", name])
            .is_ok_and(|answer| answer.contains("10.96.0.1"))
    };
    assert_eq!(
        c.probe("x", "a", &node_api),
        ".",
        "no policy: the node is open"
    );
    assert!(resolves(), "no policy: x/a resolves {name}\n{}", c.logs());

    // Egress default-deny in x: no pod but themselves, and nothing of the
    // node, DNS included, as upstream's model expects; yet the node's
    // probes of x's pods get their answers.
    c.apply(&policy(
        "egress-deny",
        "{podSelector: {}, policyTypes: [Egress]}",
    ));
    let mut egress = OPEN;
    egress[..3].copy_from_slice(&[".XX XXX XXX", "X.X XXX XXX", "XX. XXX XXX"]);
    c.expect("egress deny", &ips, &Truth::all(&egress));
    assert_eq!(
        c.probe("x", "a", &node_api),
        "X",
        "egress deny: x/a still reaches its node's API\n{}",
        c.logs()
    );
    assert!(!resolves(), "egress deny: x/a still resolves {name}");
    let dir = c.probe_dir().display().to_string();
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: probed, namespace: x}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  volumes: [{{name: probe, hostPath: {{path: '{dir}'}}}}]
  containers:
  - name: main
    image: busybox
    volumeMounts: [{{name: probe, mountPath: /probe, readOnly: true}}]
    command: [/probe/netpol-probe, serve, '80', '81']
    readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1, failureThreshold: 1}}
"#,
        node = c.nodes[0].name
    ));
    wait_for(Duration::from_secs(90), || {
        let ready = c.k.run(&[
            "get",
            "pod",
            "probed",
            "-n",
            "x",
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ]);
        (ready.ok()?.trim() == "true").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a probed pod under egress deny never got ready\n{}",
            c.logs()
        )
    });
    c.k.run(&["delete", "pod", "probed", "-n", "x"]).unwrap();
    // A connection the node opens to x/a (probes run inside the pod, but
    // a node's own client, a webhook call from a control plane on it, is
    // one) gets x/a's answers.
    let from_node = c.nodes[0]
        .exec(&[
            &format!("{dir}/netpol-probe"),
            "connect",
            "3000",
            &format!("tcp:{}:80", ips[0]),
        ])
        .unwrap_or_default();
    assert_eq!(
        from_node.trim(),
        ".",
        "the node's connection to x/a got no answer under egress deny\n{}",
        c.logs()
    );

    // DNS allowed as upstream manifests allow it, towards kube-system's
    // DNS pods, whose place the node takes: names resolve again, the rest
    // of the node stays shut.
    c.apply(&policy(
        "egress-dns",
        "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}], ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}]}",
    ));
    wait_for(Duration::from_secs(60), || resolves().then_some(())).unwrap_or_else(|| {
        panic!(
            "x/a could not resolve {name} with DNS allowed\n{}",
            c.logs()
        )
    });
    assert_eq!(
        c.probe("x", "a", &node_api),
        "X",
        "only DNS of the node opened"
    );
    c.expect("egress deny with DNS allowed", &ips, &Truth::all(&egress));

    // Or allowed on port 53 towards anyone.
    c.k.run(&["delete", "netpol", "egress-dns", "-n", "x"])
        .unwrap();
    c.apply(&policy(
        "egress-53",
        "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}]}",
    ));
    wait_for(Duration::from_secs(60), || resolves().then_some(())).unwrap_or_else(|| {
        panic!(
            "x/a could not resolve {name} with port 53 allowed\n{}",
            c.logs()
        )
    });

    c.k.run(&["delete", "netpol", "--all", "-n", "x"]).unwrap();
    c.expect("every policy deleted", &ips, &Truth::all(&OPEN));
}

/// With `--tunnel vxlan` the receiving node checks ingress on what comes
/// out of the tunnel: the sender's pod address is known there from the API.
#[test]
fn ingress_is_enforced_on_the_receiving_node_over_vxlan() {
    let c = Cluster::start_with(2, &["--tunnel", "vxlan"]);
    let ips = c.start_pods();
    c.expect("no policy", &ips, &Truth::all(&OPEN));
    c.apply(&policy(
        "from-y",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}",
    ));
    c.expect(
        "allow from a labelled namespace",
        &ips,
        &Truth::all(&x_open_from(3..6)),
    );
}
