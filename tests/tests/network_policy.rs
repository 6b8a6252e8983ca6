//! User stories of NetworkPolicy: the API kubectl drives, and the verdicts
//! every node's datapath enforces.

use harness::cluster::ControlPlane;

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

