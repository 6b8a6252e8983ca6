//! Request bodies: kubectl create's protobuf, and bad input answered with a
//! Status while nothing is stored.

use harness::cluster::ControlPlane;

use crate::common::json;

/// The imperative `kubectl create` commands, which send protobuf bodies,
/// make the same objects a manifest would.
#[test]
fn kubectl_create_commands_send_protobuf_and_work() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    k.run(&["create", "namespace", "shop"]).unwrap();
    k.run(&[
        "create",
        "deployment",
        "web",
        "--image=registry.local/web:1",
        "--replicas=3",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=color=blue",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&[
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cret",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&[
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
        "-n",
        "shop",
    ])
    .unwrap();
    k.run(&["create", "serviceaccount", "bot", "-n", "shop"])
        .unwrap();

    let ns = json(&k.run(&["get", "namespace", "shop", "-o", "json"]).unwrap());
    assert_eq!(ns["status"]["phase"], "Active");
    let d = json(
        &k.run(&["get", "deployment", "web", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/web:1"
    );
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let cm = json(
        &k.run(&["get", "configmap", "cfg", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(cm["data"]["color"], "blue");
    let secret = json(
        &k.run(&["get", "secret", "pw", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(secret["data"]["password"], "czNjcmV0", "base64 of s3cret");
    let svc = json(
        &k.run(&["get", "service", "web", "-n", "shop", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .is_some_and(|ip| ip.starts_with("10.")));
    k.run(&["get", "serviceaccount", "bot", "-n", "shop"])
        .unwrap();
}

/// Bad input gets a Status naming the problem, and nothing is stored.
#[test]
fn bad_input_is_rejected_with_a_status_and_nothing_is_stored() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let unknown = "apiVersion: v1\nkind: Pod\nmetadata: {name: typo}\nspec:\n  containers: [{name: c, imagee: busybox}]\n";
    let out = k.run_stdin(&["create", "-f", "-"], unknown).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Error from server (BadRequest)")
            && err.contains("unknown field \"spec.containers[0].imagee\""),
        "{err}"
    );

    let wrong_type = "apiVersion: v1\nkind: Pod\nmetadata: {name: typed}\nspec:\n  containers: [{name: c, image: busybox, ports: [{containerPort: eighty}]}]\n";
    let out = k.run_stdin(&["create", "-f", "-"], wrong_type).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BadRequest") && err.contains("containerPort"),
        "{err}"
    );

    let out = k.output(&["run", "Bad_Name", "--image=busybox"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is invalid") && err.contains("metadata.name"),
        "{err}"
    );

    let no_containers =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: empty}\nspec: {containers: []}\n";
    let out = k.run_stdin(&["create", "-f", "-"], no_containers).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Invalid") || err.contains("invalid"), "{err}");
    assert!(err.contains("spec.containers: Required value"), "{err}");

    let out = k.output(&["get", "pods", "-l", "a in (b"]).unwrap();
    assert!(!out.status.success());

    let out = k.output(&["get", "widgets"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("the server doesn't have a resource type \"widgets\""));

    let all = k.run(&["get", "pods", "-A", "-o", "name"]).unwrap();
    assert_eq!(all.trim(), "", "nothing stored");
}
