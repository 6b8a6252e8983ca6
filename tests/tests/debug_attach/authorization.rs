//! Attach and debug authorized through their own subresources.

use harness::cluster::ControlPlane;

use crate::common::{run_for, web_pod, Agent};

/// Attach and debug are authorized like exec: a user who may read pods
/// but not `pods/attach` or `pods/ephemeralcontainers` is refused with
/// 403, and `edit` grants both.
#[test]
fn attach_and_debug_need_their_subresources() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    web_pod(&k, &agent, "web");
    k.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-reads, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-edits, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
"#,
    );
    let (_, err) = run_for(&k, &["--as", "alice", "attach", "web"], 20);
    assert!(
        err.contains("forbidden") && err.contains("pods/attach"),
        "{err}"
    );
    let out = k
        .output(&[
            "--as",
            "alice",
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=x",
            "--",
            "true",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("forbidden") && err.contains("pods/ephemeralcontainers"),
        "{err}"
    );
    assert!(k.get_json(&["pod", "web"])["spec"]["ephemeralContainers"].is_null());
    for (verb, res) in [
        ("create", "pods/attach"),
        ("patch", "pods/ephemeralcontainers"),
    ] {
        let alice = k
            .output(&["auth", "can-i", verb, res, "--as", "alice"])
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&alice.stdout).trim(), "no");
        let bob = k
            .output(&["auth", "can-i", verb, res, "--as", "bob"])
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&bob.stdout).trim(),
            "yes",
            "{verb} {res}"
        );
    }
    let out = k
        .output(&[
            "--as",
            "bob",
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=x",
            "--",
            "true",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
