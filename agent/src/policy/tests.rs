//! Truth tables of the upstream network-policy model: namespaces x, y, z
//! with pods a, b, c each, and the verdict of every pod-to-pod probe.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::*;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn ip(ns: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, ns as u8, 10 + pod as u8)
}

fn world() -> Vec<PodInfo> {
    let mut pods = Vec::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        for (p, name) in PODS.iter().enumerate() {
            pods.push(PodInfo {
                namespace: ns.to_string(),
                name: name.to_string(),
                labels: BTreeMap::from([("pod".into(), name.to_string())]),
                ip: Some(ip(n, p)),
                ports: vec![NamedPort {
                    name: "serve-80-tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                }],
                local: true,
            });
        }
    }
    pods
}

fn namespaces() -> BTreeMap<String, Labels> {
    NAMESPACES
        .iter()
        .map(|ns| {
            let labels = BTreeMap::from([
                ("ns".to_string(), ns.to_string()),
                ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
            ]);
            (ns.to_string(), labels)
        })
        .collect()
}

fn policy(ns: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
        .unwrap()
}

/// The probe matrix for `protocol`/`port`: one line per source pod ("x/a"
/// order), one `.` (allowed) or `X` (denied) per destination.
fn matrix(pods: &[PodInfo], policies: &[NetworkPolicy], protocol: Protocol, port: u16) -> String {
    let ns = namespaces();
    let mut ids = Identities::default();
    let c = compile(
        &mut ids,
        &Inputs {
            pods,
            namespaces: &ns,
            policies,
        },
    );
    let mut out = String::new();
    for from in pods {
        for to in pods {
            let (src, dst) = (from.ip.unwrap(), to.ip.unwrap());
            let key = |p: &PodInfo| (p.namespace.clone(), p.name.clone());
            let egress = &c.endpoints[&key(from)].egress;
            let ingress = &c.endpoints[&key(to)].ingress;
            let ok = egress.allows(dst, c.identities[&dst], protocol, port)
                && ingress.allows(src, c.identities[&src], protocol, port);
            out.push(if ok { '.' } else { 'X' });
        }
        out.push('\n');
    }
    out
}

fn rows(lines: [&str; 9]) -> String {
    lines
        .iter()
        .map(|l| format!("{}\n", l.replace(' ', "")))
        .collect()
}

const ALL: [&str; 9] = ["... ... ..."; 9];

#[test]
fn without_policies_everything_passes() {
    assert_eq!(matrix(&world(), &[], Protocol::Tcp, 80), rows(ALL));
}

#[test]
fn default_deny_ingress_isolates_only_its_namespace() {
    let deny = policy("x", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    let expected = ["XXX ... ..."; 9];
    assert_eq!(matrix(&world(), &[deny], Protocol::Tcp, 80), rows(expected));
}

#[test]
fn allow_from_the_same_namespace() {
    let p = policy(
        "x",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    );
    let mut expected = ["XXX ... ..."; 9];
    expected[..3].copy_from_slice(&["... ... ..."; 3]);
    assert_eq!(matrix(&world(), &[p], Protocol::Tcp, 80), rows(expected));
}

#[test]
fn allow_from_a_labelled_namespace_and_with_both_selectors() {
    let from_y = policy(
        "x",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let expected = [
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "... ... ...",
        "... ... ...",
        "... ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
    ];
    assert_eq!(
        matrix(&world(), &[from_y], Protocol::Tcp, 80),
        rows(expected)
    );
    // Both selectors in one peer: pod b of namespace y only (AND).
    let and = policy(
        "x",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let mut expected = ["X.. ... ..."; 9];
    expected[4] = "... ... ...";
    assert_eq!(matrix(&world(), &[and], Protocol::Tcp, 80), rows(expected));
    // The same selectors as two peers: either (OR).
    let or = policy(
        "x",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                     {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let expected = [
        "X.. ... ...",
        "... ... ...",
        "X.. ... ...",
        "... ... ...",
        "... ... ...",
        "... ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
    ];
    assert_eq!(matrix(&world(), &[or], Protocol::Tcp, 80), rows(expected));
}

#[test]
fn ip_block_with_except() {
    // All of y's addresses but y/b's.
    let p = policy(
        "x",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.1.0/24",
                                                   "except": ["10.244.1.11/32"]}}]}]}),
    );
    let mut expected = ["X.. ... ..."; 9];
    expected[3] = "... ... ...";
    expected[5] = "... ... ...";
    assert_eq!(matrix(&world(), &[p], Protocol::Tcp, 80), rows(expected));
}

#[test]
fn ports_by_number_name_and_range() {
    let by = |port: Value| {
        policy(
            "x",
            json!({"podSelector": {}, "ingress": [{"ports": [port]}]}),
        )
    };
    let open = rows(ALL);
    let shut = rows(["XXX ... ..."; 9]);
    let named = by(json!({"port": "serve-80-tcp", "protocol": "TCP"}));
    assert_eq!(
        matrix(&world(), std::slice::from_ref(&named), Protocol::Tcp, 80),
        open
    );
    assert_eq!(matrix(&world(), &[named], Protocol::Tcp, 81), shut);
    let unknown_name = by(json!({"port": "serve-81-udp", "protocol": "TCP"}));
    assert_eq!(matrix(&world(), &[unknown_name], Protocol::Tcp, 80), shut);
    let range = by(json!({"port": 79, "endPort": 81, "protocol": "TCP"}));
    assert_eq!(
        matrix(&world(), std::slice::from_ref(&range), Protocol::Tcp, 81),
        open
    );
    assert_eq!(
        matrix(&world(), std::slice::from_ref(&range), Protocol::Tcp, 82),
        shut
    );
    assert_eq!(matrix(&world(), &[range], Protocol::Udp, 80), shut);
    let udp = by(json!({"port": 81, "protocol": "UDP"}));
    assert_eq!(
        matrix(&world(), std::slice::from_ref(&udp), Protocol::Udp, 81),
        open
    );
    assert_eq!(matrix(&world(), &[udp], Protocol::Tcp, 81), shut);
}

#[test]
fn egress_isolation_and_named_ports_on_the_peer() {
    // x/a may only reach pods labelled pod=b, on their named port.
    let p = policy(
        "x",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}],
                           "ports": [{"port": "serve-80-tcp"}]}]}),
    );
    let mut expected = ["... ... ..."; 9];
    expected[0] = "X.X X.X X.X";
    assert_eq!(
        matrix(&world(), std::slice::from_ref(&p), Protocol::Tcp, 80),
        rows(expected)
    );
    expected[0] = "XXX XXX XXX";
    assert_eq!(matrix(&world(), &[p], Protocol::Tcp, 81), rows(expected));
}

#[test]
fn policies_add_up_and_types_decide_isolation() {
    // An egress-only policy leaves ingress open even with ingress rules.
    let egress_only = policy(
        "x",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "none"}}}]}]}),
    );
    assert_eq!(
        matrix(&world(), &[egress_only], Protocol::Tcp, 80),
        rows(ALL)
    );
    // Deny-all plus an allow: the allow wins (policies are a union).
    let deny = policy("x", json!({"podSelector": {}}));
    let allow_c = policy(
        "x",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
    );
    let mut expected = ["XXX ... ..."; 9];
    expected[2] = "... ... ...";
    assert_eq!(
        matrix(&world(), &[deny, allow_c], Protocol::Tcp, 80),
        rows(expected)
    );
}

#[test]
fn a_label_change_moves_a_pod_into_a_selector() {
    let p = policy(
        "x",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"team": "blue"}}}]}]}),
    );
    let mut pods = world();
    assert_eq!(
        matrix(&pods, std::slice::from_ref(&p), Protocol::Tcp, 80),
        rows(["X.. ... ..."; 9])
    );
    pods[7].labels.insert("team".into(), "blue".into());
    let mut expected = ["X.. ... ..."; 9];
    expected[7] = "... ... ...";
    assert_eq!(matrix(&pods, &[p], Protocol::Tcp, 80), rows(expected));
}

#[test]
fn identities_are_shared_by_label_sets_and_stable() {
    let mut pods = world();
    pods[1].labels = pods[0].labels.clone();
    let ns = namespaces();
    let mut ids = Identities::default();
    let input = Inputs {
        pods: &pods,
        namespaces: &ns,
        policies: &[],
    };
    let first = compile(&mut ids, &input);
    assert_eq!(
        first.identities[&ip(0, 0)],
        first.identities[&ip(0, 1)],
        "same namespace and labels"
    );
    assert_ne!(first.identities[&ip(0, 0)], first.identities[&ip(1, 0)]);
    assert!(first.identities.values().all(|i| *i >= FIRST_POD_IDENTITY));
    let again = compile(&mut ids, &input);
    assert_eq!(first.identities, again.identities);
}

#[test]
fn pods_elsewhere_are_peers_but_get_no_rules() {
    let mut pods = world();
    for p in &mut pods[3..] {
        p.local = false;
    }
    let ns = namespaces();
    let c = compile(
        &mut Identities::default(),
        &Inputs {
            pods: &pods,
            namespaces: &ns,
            policies: &[],
        },
    );
    assert_eq!(c.endpoints.len(), 3);
    assert_eq!(c.identities.len(), 9);
}

/// What x/a's egress says of its node, which stands for the DNS pods.
fn x_a_to_node(policies: &[NetworkPolicy], protocol: Protocol, port: u16) -> bool {
    let node = Ipv4Addr::new(10, 99, 0, 1);
    let mut pods = world();
    pods.push(PodInfo::node_dns(node));
    let mut ns = namespaces();
    ns.insert(
        "kube-system".into(),
        BTreeMap::from([("kubernetes.io/metadata.name".into(), "kube-system".into())]),
    );
    let c = compile(
        &mut Identities::default(),
        &Inputs {
            pods: &pods,
            namespaces: &ns,
            policies,
        },
    );
    let egress = &c.endpoints[&("x".to_string(), "a".to_string())].egress;
    egress.allows(node, c.identities[&node], protocol, port)
}

#[test]
fn the_node_is_the_dns_pods_to_egress_rules() {
    assert!(x_a_to_node(&[], Protocol::Tcp, 10250), "no policy");
    let deny = policy("x", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    assert!(!x_a_to_node(&[deny], Protocol::Udp, 53), "default deny");
    let to_dns = |ports: Value| {
        policy(
            "x",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": ports}]}),
        )
    };
    let numbered = to_dns(json!([{"port": 53, "protocol": "UDP"}]));
    assert!(x_a_to_node(
        std::slice::from_ref(&numbered),
        Protocol::Udp,
        53
    ));
    assert!(!x_a_to_node(&[numbered], Protocol::Tcp, 10250), "only DNS");
    let named = to_dns(json!([{"port": "dns-tcp", "protocol": "TCP"}]));
    assert!(
        x_a_to_node(std::slice::from_ref(&named), Protocol::Tcp, 53),
        "named port"
    );
    assert!(!x_a_to_node(&[named], Protocol::Udp, 53));
    // Pods of every namespace, as many charts write it, take the node in.
    let anywhere = policy(
        "x",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}),
    );
    assert!(x_a_to_node(&[anywhere], Protocol::Udp, 53));
}
