//! Roles and bindings as `kubectl get` prints them; a binding to a kind of
//! role that does not exist is refused.

use crate::common::Cluster;

#[test]
fn roles_and_bindings_are_listed_as_kubectl_prints_them() {
    let c = Cluster::start();
    let admin = c.admin();
    let roles = admin.run(&["get", "clusterroles"]).unwrap();
    let header: Vec<&str> = roles.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CREATED", "AT"]);
    for default in ["cluster-admin", "admin", "edit", "view", "system:discovery"] {
        assert!(
            roles
                .lines()
                .any(|l| l.split_whitespace().next() == Some(default)),
            "no default ClusterRole {default}:\n{roles}"
        );
    }
    admin
        .run(&[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods,deployments.apps",
            "-n",
            "default",
        ])
        .unwrap();
    admin
        .run(&[
            "create",
            "rolebinding",
            "readers",
            "--role=reader",
            "--user=alice",
            "--user=bob",
            "--serviceaccount=default:robot",
            "-n",
            "default",
        ])
        .unwrap();
    let wide = admin
        .run(&[
            "get",
            "rolebinding",
            "readers",
            "-n",
            "default",
            "-o",
            "wide",
        ])
        .unwrap();
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("readers"), "{wide}");
    assert!(row.contains("Role/reader"), "{wide}");
    assert!(row.contains("alice, bob"), "{wide}");
    assert!(row.contains("default/robot"), "{wide}");
    let rules = admin
        .run(&[
            "get",
            "role",
            "reader",
            "-n",
            "default",
            "-o",
            "jsonpath={.rules[*].resources}",
        ])
        .unwrap();
    assert!(
        rules.contains("pods") && rules.contains("deployments"),
        "{rules}"
    );

    // A binding to a kind of role that does not exist names the field.
    let out = admin
        .run_stdin(
            &["apply", "-f", "-"],
            r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "bad", "namespace": "default"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Pod", "name": "x"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "a"}]}"#,
        )
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("roleRef.kind"), "{err}");
}
