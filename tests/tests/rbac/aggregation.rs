//! ClusterRoles labelled to aggregate into the default roles.

use std::time::Duration;

use harness::kubectl::Kubectl;
use harness::process::wait_for;

use crate::common::{becomes, Cluster};

/// How an operator's installer extends the default roles: a ClusterRole
/// labelled `aggregate-to-view` adds its rules to `view` (and so to `edit`
/// and `admin`), and taking the label away takes them back.
#[test]
fn a_role_labelled_to_aggregate_extends_view_edit_and_admin() {
    let c = Cluster::start();
    let admin = c.admin();
    admin.run(&["create", "namespace", "team"]).unwrap();
    let bob = c.user("bob", &[]);
    admin
        .run(&[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "-n",
            "team",
        ])
        .unwrap();
    assert!(
        becomes(&bob, &["get", "pods", "-n", "team"], true),
        "view, aggregated from system:aggregate-to-view, lets bob list pods:\n{}",
        c.log()
    );
    let view = admin
        .run(&["get", "clusterrole", "view", "-o", "json"])
        .unwrap();
    assert!(view.contains("aggregate-to-view"), "{view}");
    // The operator's kind, so kubectl knows the resource it asks about.
    admin.apply(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
    );
    let can_i = ["auth", "can-i", "list", "widgets.example.com", "-n", "team"];
    let answer = |k: &Kubectl| {
        let out = k.output(&can_i).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(answer(&bob), "no");

    admin.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widgets-view
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: "true"
rules:
- apiGroups: ["example.com"]
  resources: ["widgets"]
  verbs: ["get", "list", "watch"]
"#,
    );
    let grown = wait_for(Duration::from_secs(30), || {
        (answer(&bob) == "yes").then_some(())
    });
    assert!(
        grown.is_some(),
        "the labelled role did not reach view ({:?}):\n{}",
        bob.output(&can_i).unwrap(),
        admin
            .run(&["get", "clusterrole", "view", "-o", "yaml"])
            .unwrap_or_default()
    );
    for role in ["edit", "admin"] {
        let rules = admin
            .run(&[
                "get",
                "clusterrole",
                role,
                "-o",
                "jsonpath={.rules[*].resources}",
            ])
            .unwrap();
        assert!(rules.contains("widgets"), "{role} lacks widgets: {rules}");
    }

    admin
        .run(&[
            "label",
            "clusterrole",
            "widgets-view",
            "rbac.authorization.k8s.io/aggregate-to-view-",
        ])
        .unwrap();
    let shrunk = wait_for(Duration::from_secs(10), || {
        (answer(&bob) == "no").then_some(())
    });
    assert!(
        shrunk.is_some(),
        "view kept the rules of a role no longer labelled"
    );
}
