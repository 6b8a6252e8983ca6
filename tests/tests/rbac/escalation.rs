//! No way around RBAC: impersonation needs its verb, and a user who may
//! edit roles cannot grant what they lack.

use crate::common::{becomes, stderr, Cluster};

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
