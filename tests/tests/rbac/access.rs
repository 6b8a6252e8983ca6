//! What a bound user may do, and what `kubectl auth can-i` says they may.

use std::time::Duration;

use harness::kubectl::Kubectl;
use harness::process::wait_for;

use crate::common::{becomes, stderr, Cluster};

#[test]
fn a_user_bound_to_view_in_one_namespace_reads_pods_there_and_nowhere_else() {
    let c = Cluster::start();
    let admin = c.admin();
    admin.run(&["create", "namespace", "team"]).unwrap();
    admin.run(&["create", "namespace", "other"]).unwrap();
    let alice = c.user("alice", &["developers"]);

    let (ok, err) = stderr(&alice, &["get", "pods", "-n", "team"]);
    assert!(!ok, "a user with no binding listed pods");
    assert!(
        err.contains(r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "team""#),
        "{err}"
    );

    admin
        .run(&[
            "create",
            "rolebinding",
            "x",
            "--clusterrole=view",
            "--user=alice",
            "-n",
            "team",
        ])
        .unwrap();
    assert!(
        becomes(&alice, &["get", "pods", "-n", "team"], true),
        "view in team did not let alice list pods there:\n{}",
        c.log()
    );
    let (ok, err) = stderr(&alice, &["get", "pods", "-n", "other"]);
    assert!(
        !ok && err.contains("forbidden"),
        "listed pods in another namespace: {err}"
    );
    let (ok, err) = stderr(&alice, &["get", "pods", "-A"]);
    assert!(
        !ok && err.contains("at the cluster scope"),
        "listed pods cluster-wide: {err}"
    );
    let (ok, err) = stderr(&alice, &["get", "secrets", "-n", "team"]);
    assert!(!ok && err.contains("forbidden"), "view read secrets: {err}");
    let (ok, err) = stderr(&alice, &["create", "configmap", "c", "-n", "team"]);
    assert!(!ok, "view created a configmap");
    assert!(
        err.contains(r#"User "alice" cannot create resource "configmaps""#),
        "{err}"
    );

    // A binding to the user's group counts the same; removing the user's
    // own binding takes its access away.
    admin
        .run(&[
            "create",
            "rolebinding",
            "devs",
            "--clusterrole=edit",
            "--group=developers",
            "-n",
            "other",
        ])
        .unwrap();
    assert!(becomes(
        &alice,
        &["create", "configmap", "c", "-n", "other"],
        true
    ));
    admin
        .run(&["delete", "rolebinding", "x", "-n", "team"])
        .unwrap();
    assert!(
        becomes(&alice, &["get", "pods", "-n", "team"], false),
        "deleting the binding left alice her access"
    );
}

#[test]
fn kubectl_auth_can_i_agrees_with_what_the_user_is_allowed() {
    let c = Cluster::start();
    let admin = c.admin();
    admin.run(&["create", "namespace", "team"]).unwrap();
    admin
        .run(&[
            "create",
            "rolebinding",
            "x",
            "--clusterrole=view",
            "--user=carol",
            "-n",
            "team",
        ])
        .unwrap();
    let carol = c.user("carol", &[]);
    // can-i prints yes or no and exits 0 or 1; asked by the admin as carol
    // or by carol herself, the answers are the same.
    let ask = |k: &Kubectl, args: &[&str]| -> String {
        let out = k.output(args).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_for(Duration::from_secs(10), || {
        (ask(&carol, &["auth", "can-i", "list", "pods", "-n", "team"]) == "yes").then_some(())
    })
    .expect("carol never could list pods in team");
    for (args, want) in [
        (vec!["list", "pods", "-n", "team"], "yes"),
        (vec!["get", "pods/log", "-n", "team"], "yes"),
        (vec!["list", "pods", "-n", "other"], "no"),
        (vec!["create", "pods", "-n", "team"], "no"),
        (vec!["get", "secrets", "-n", "team"], "no"),
    ] {
        let mut mine = vec!["auth", "can-i"];
        mine.extend(&args);
        assert_eq!(ask(&carol, &mine), want, "carol: can-i {args:?}");
        let mut as_carol = mine.clone();
        as_carol.extend(["--as", "carol"]);
        assert_eq!(
            ask(&admin, &as_carol),
            want,
            "admin --as carol: can-i {args:?}"
        );
    }
    assert_eq!(
        ask(&admin, &["auth", "can-i", "create", "pods", "-n", "team"]),
        "yes"
    );

    let list = carol
        .run(&["auth", "can-i", "--list", "-n", "team"])
        .unwrap();
    let pods = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some("pods"))
        .unwrap_or_else(|| panic!("no pods line in:\n{list}"));
    assert!(pods.contains("[get list watch]"), "{list}");
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );

    let who = carol.run(&["auth", "whoami"]).unwrap();
    assert!(
        who.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Username", "carol"]),
        "{who}"
    );
    assert!(who.contains("system:authenticated"), "{who}");
    let who = admin
        .run(&[
            "auth",
            "whoami",
            "--as",
            "carol",
            "--as-group",
            "auditors",
            "-o",
            "jsonpath={.status.userInfo.groups}",
        ])
        .unwrap();
    assert!(who.contains("auditors"), "{who}");
}
