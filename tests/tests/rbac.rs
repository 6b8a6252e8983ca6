//! Role-based access control as a cluster administrator and its users see
//! it: the real API server over etcd with TLS, driven by the real kubectl
//! with the administrator's and users' client certificates.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::kubectl::Kubectl;
use harness::process::wait_for;

/// An HTTPS API server over its own etcd.
struct Cluster {
    _apiserver: harness::process::Guarded,
    _etcd: harness::etcd::Etcd,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start() -> Self {
        let etcd = harness::etcd::Etcd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = harness::ports::free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).unwrap();
        let apiserver = harness::process::Guarded::spawn(
            "apiserver",
            Command::new(harness::cluster::binary("control-plane"))
                .args(["apiserver", "--etcd-servers", &etcd.client_url()])
                .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
                .arg(format!(
                    "--admin-kubeconfig={}",
                    dir.path().join("admin.kubeconfig").display()
                ))
                .arg(format!("--bind-address=127.0.0.1:{port}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
        let c = Self {
            _apiserver: apiserver,
            _etcd: etcd,
            dir,
            port,
        };
        let up = wait_for(Duration::from_secs(30), || {
            let kc = c.dir.path().join("admin.kubeconfig");
            if !kc.exists() {
                return None;
            }
            Kubectl::new(&kc)
                .ok()?
                .run(&["get", "namespace", "default"])
                .ok()
        });
        assert!(up.is_some(), "API server did not start:\n{}", c.log());
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    fn admin(&self) -> Kubectl {
        Kubectl::new(&self.dir.path().join("admin.kubeconfig")).unwrap()
    }

    /// kubectl with a new client certificate for `user` in `groups`.
    fn user(&self, user: &str, groups: &[&str]) -> Kubectl {
        let out: PathBuf = self.dir.path().join(format!("{user}.kubeconfig"));
        let mut cmd = Command::new(harness::cluster::binary("control-plane"));
        cmd.arg("kubeconfig")
            .arg(format!(
                "--cert-dir={}",
                self.dir.path().join("pki").display()
            ))
            .arg(format!("--user={user}"))
            .arg(format!("--server=https://127.0.0.1:{}", self.port))
            .arg("--out")
            .arg(&out);
        for g in groups {
            cmd.arg(format!("--group={g}"));
        }
        assert!(cmd.status().unwrap().success());
        Kubectl::new(&out).unwrap()
    }
}

fn stderr(k: &Kubectl, args: &[&str]) -> (bool, String) {
    let out = k.output(args).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls until `k args` succeeds (true) or is refused (false): a binding
/// reaches the authorizer through the watch, a moment after it is stored.
fn becomes(k: &Kubectl, args: &[&str], allowed: bool) -> bool {
    wait_for(Duration::from_secs(10), || {
        (k.output(args).unwrap().status.success() == allowed).then_some(())
    })
    .is_some()
}

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

#[test]
fn impersonation_needs_the_impersonate_verb() {
    let c = Cluster::start();
    let admin = c.admin();
    let dave = c.user("dave", &[]);
    let (ok, err) = stderr(
        &dave,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods",
            "--as",
            "kubernetes-admin",
            "--as-group",
            "system:masters",
        ],
    );
    assert!(!ok, "dave impersonated the admins");
    assert!(
        err.contains(r#"User "dave" cannot impersonate resource "users""#),
        "{err}"
    );
    admin
        .run(&[
            "create",
            "clusterrole",
            "impersonator",
            "--verb=impersonate",
            "--resource=users",
            "--resource-name=erin",
        ])
        .unwrap();
    admin
        .run(&[
            "create",
            "clusterrolebinding",
            "dave-as-erin",
            "--clusterrole=impersonator",
            "--user=dave",
        ])
        .unwrap();
    admin
        .run(&[
            "create",
            "rolebinding",
            "erin",
            "--clusterrole=view",
            "--user=erin",
            "-n",
            "default",
        ])
        .unwrap();
    // As erin, dave has erin's rights and only hers.
    assert!(becomes(
        &dave,
        &["get", "pods", "-n", "default", "--as", "erin"],
        true
    ));
    let (ok, _) = stderr(&dave, &["get", "pods", "-n", "default"]);
    assert!(!ok, "dave gained erin's rights without impersonating");
    let (ok, err) = stderr(&dave, &["get", "pods", "-n", "default", "--as", "frank"]);
    assert!(!ok && err.contains("impersonate"), "{err}");
}

#[test]
fn a_user_who_may_edit_roles_cannot_grant_what_they_lack() {
    let c = Cluster::start();
    let admin = c.admin();
    admin.run(&["create", "namespace", "team"]).unwrap();
    admin
        .run(&[
            "create",
            "role",
            "role-editor",
            "--verb=get,list,create,update,patch,delete",
            "--resource=roles,rolebindings",
            "-n",
            "team",
        ])
        .unwrap();
    admin
        .run(&[
            "create",
            "rolebinding",
            "gina-roles",
            "--role=role-editor",
            "--user=gina",
            "-n",
            "team",
        ])
        .unwrap();
    admin
        .run(&[
            "create",
            "rolebinding",
            "gina-view",
            "--clusterrole=view",
            "--user=gina",
            "-n",
            "team",
        ])
        .unwrap();
    let gina = c.user("gina", &[]);
    // What she holds she may hand on.
    assert!(becomes(
        &gina,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "team"
        ],
        true
    ));
    let (ok, err) = stderr(
        &gina,
        &[
            "create",
            "role",
            "secret-reader",
            "--verb=get",
            "--resource=secrets",
            "-n",
            "team",
        ],
    );
    assert!(!ok, "gina granted secrets access she lacks");
    assert!(err.contains("not currently held"), "{err}");
    let (ok, err) = stderr(
        &gina,
        &[
            "create",
            "rolebinding",
            "gina-admin",
            "--clusterrole=admin",
            "--user=gina",
            "-n",
            "team",
        ],
    );
    assert!(!ok, "gina bound herself to admin");
    assert!(err.contains("not currently held"), "{err}");
    admin
        .run(&["get", "role", "secret-reader", "-n", "team"])
        .unwrap_err();
    // With bind on the admin role, binding it is hers to give.
    admin
        .run(&[
            "create",
            "role",
            "binder",
            "--verb=bind",
            "--resource=clusterroles.rbac.authorization.k8s.io",
            "--resource-name=admin",
            "-n",
            "team",
        ])
        .unwrap();
    admin
        .run(&[
            "create",
            "rolebinding",
            "gina-binder",
            "--role=binder",
            "--user=gina",
            "-n",
            "team",
        ])
        .unwrap();
    assert!(becomes(
        &gina,
        &[
            "create",
            "rolebinding",
            "hal-admin",
            "--clusterrole=admin",
            "--user=hal",
            "-n",
            "team"
        ],
        true
    ));
}

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
