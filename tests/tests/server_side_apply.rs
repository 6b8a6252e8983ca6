//! Server-side apply with field ownership, driven by the real kubectl: two
//! managers conflict over a field, share one they agree on, and
//! `--force-conflicts` moves it; fields a manager stops applying go away
//! unless another manager also owns them; ownership follows plain updates.

use std::process::Output;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::kubectl::{failed, ok};
use serde_json::Value;

fn apply(k: &Kubectl, manager: &str, yaml: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "apply",
        "--server-side",
        "--field-manager",
        manager,
        "-f",
        "-",
    ];
    args.extend_from_slice(extra);
    k.run_stdin(&args, yaml).unwrap()
}

/// The managers that own `path` (as `fieldsV1` keys) in `obj`.
fn owners(obj: &Value, path: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in obj["metadata"]["managedFields"].as_array().unwrap() {
        let mut node = &entry["fieldsV1"];
        if path.iter().all(|p| {
            node = &node[*p];
            !node.is_null()
        }) {
            out.push(format!(
                "{}/{}",
                entry["manager"].as_str().unwrap(),
                entry["operation"].as_str().unwrap()
            ));
        }
    }
    out.sort();
    out
}

fn deployment(replicas: u32, image: &str, extra_env: bool) -> String {
    let env = if extra_env {
        "\n        env:\n        - {name: MODE, value: fast}\n        - {name: DEBUG, value: \"1\"}"
    } else {
        "\n        env:\n        - {name: MODE, value: fast}"
    };
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web, tier: front}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {image}{env}
"#
    )
}

/// A deploy tool and an autoscaler both apply a Deployment: the second
/// conflicts on the replicas the first set, shares the image they agree
/// on, and takes the replicas over with `--force-conflicts`; the first then
/// conflicts in turn, and dropping the field from its manifest ends it.
#[test]
fn two_managers_conflict_share_and_force() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    ok(&apply(
        &k,
        "deployer",
        &deployment(2, "nginx:1.27", true),
        &[],
    ));
    let obj = k.get_json(&["deployment", "web", "--show-managed-fields"]);
    assert_eq!(
        owners(&obj, &["f:spec", "f:replicas"]),
        ["deployer/Apply"],
        "{}",
        obj["metadata"]["managedFields"]
    );

    let scaler = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 5
  template:
    spec:
      containers:
      - {name: web, image: "nginx:1.27"}
"#;
    let err = failed(&apply(&k, "autoscaler", scaler, &[]));
    assert!(err.contains("conflict"), "{err}");
    assert!(err.contains(r#"conflict with "deployer""#), "{err}");
    assert!(err.contains(".spec.replicas"), "{err}");
    let obj = k.get_json(&["deployment", "web"]);
    assert_eq!(
        obj["spec"]["replicas"], 2,
        "a refused apply changes nothing"
    );

    ok(&apply(&k, "autoscaler", scaler, &["--force-conflicts"]));
    let obj = k.get_json(&["deployment", "web", "--show-managed-fields"]);
    assert_eq!(obj["spec"]["replicas"], 5);
    assert_eq!(
        owners(&obj, &["f:spec", "f:replicas"]),
        ["autoscaler/Apply"]
    );
    let image = [
        "f:spec",
        "f:template",
        "f:spec",
        "f:containers",
        r#"k:{"name":"web"}"#,
        "f:image",
    ];
    assert_eq!(owners(&obj, &image), ["autoscaler/Apply", "deployer/Apply"]);

    // The deployer re-applies its old manifest and now conflicts itself.
    let err = failed(&apply(
        &k,
        "deployer",
        &deployment(2, "nginx:1.27", true),
        &[],
    ));
    assert!(err.contains(r#"conflict with "autoscaler""#), "{err}");
    // Without replicas in its manifest it applies cleanly, and the replicas
    // the autoscaler owns stay.
    let without = deployment(2, "nginx:1.27", true).replace("  replicas: 2\n", "");
    ok(&apply(&k, "deployer", &without, &[]));
    let obj = k.get_json(&["deployment", "web"]);
    assert_eq!(obj["spec"]["replicas"], 5);
}

/// What a manager stops applying is removed, unless someone else also owns
/// it; `kubectl label` and `kubectl create` are recorded as updates that
/// take the fields they set.
#[test]
fn dropped_fields_go_and_updates_move_ownership() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    ok(&apply(
        &k,
        "deployer",
        &deployment(1, "nginx:1.27", true),
        &[],
    ));
    ok(&k
        .output(&[
            "label",
            "deployment",
            "web",
            "owner=ops",
            "tier=back",
            "--overwrite",
        ])
        .unwrap());
    let obj = k.get_json(&["deployment", "web", "--show-managed-fields"]);
    assert_eq!(
        owners(&obj, &["f:metadata", "f:labels", "f:tier"]),
        ["kubectl-label/Update"],
        "the label's new value belongs to who set it"
    );
    assert_eq!(
        owners(&obj, &["f:metadata", "f:labels", "f:app"]),
        ["deployer/Apply"]
    );

    // The deployer's manifest still says tier: front, which kubectl label
    // changed: a conflict with an update is named with its API version.
    let err = failed(&apply(
        &k,
        "deployer",
        &deployment(1, "nginx:1.27", true),
        &[],
    ));
    assert!(
        err.contains(r#"conflict with "kubectl-label" using apps/v1"#),
        "{err}"
    );

    // Dropping tier and DEBUG from the manifest: tier stays (kubectl-label
    // owns it), DEBUG goes (nobody else owns it).
    let next = deployment(1, "nginx:1.27", false).replace(", tier: front", "");
    ok(&apply(&k, "deployer", &next, &[]));
    let obj = k.get_json(&["deployment", "web"]);
    assert_eq!(obj["metadata"]["labels"]["tier"], "back");
    assert_eq!(obj["metadata"]["labels"]["owner"], "ops");
    let env = &obj["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env.as_array().unwrap().len(), 1, "{env}");
    assert_eq!(env[0]["name"], "MODE");

    // A plain create records its manager as owning what it sent.
    ok(&k
        .output(&["create", "configmap", "settings", "--from-literal=a=1"])
        .unwrap());
    let cm = k.get_json(&["configmap", "settings", "--show-managed-fields"]);
    assert_eq!(owners(&cm, &["f:data", "f:a"]), ["kubectl-create/Update"]);

    // `[{}]` clears the record, as upstream documents.
    ok(&k
        .output(&[
            "patch",
            "configmap",
            "settings",
            "--type=merge",
            "-p",
            r#"{"metadata":{"managedFields":[{}]}}"#,
        ])
        .unwrap());
    let cm = k.get_json(&["configmap", "settings", "--show-managed-fields"]);
    assert!(cm["metadata"].get("managedFields").is_none(), "{cm}");
}

const ROUTES: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: routes.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: routes, singular: route, kind: Route}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              rules:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [path]
                items:
                  type: object
                  required: [path]
                  properties:
                    path: {type: string}
                    backend: {type: string}
              hosts:
                type: array
                items: {type: string}
"#;

/// A custom kind's schema keys its list by `path`, so two teams apply one
/// rule each to the same object and both stay; its unkeyed list is one
/// field, so a second value for it conflicts.
#[test]
fn a_custom_kinds_list_map_keys_merge_applies_by_item() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    ok(&k.run_stdin(&["apply", "-f", "-"], ROUTES).unwrap());
    ok(&k
        .output(&[
            "wait",
            "--for",
            "condition=Established",
            "crd/routes.example.com",
            "--timeout=60s",
        ])
        .unwrap());
    let route = |path: &str, backend: &str, hosts: &str| {
        format!(
            "apiVersion: example.com/v1\nkind: Route\nmetadata: {{name: shop}}\nspec:\n  hosts: [{hosts}]\n  rules:\n  - {{path: {path}, backend: {backend}}}\n"
        )
    };
    ok(&apply(
        &k,
        "team-a",
        &route("/cart", "cart", "shop.example"),
        &[],
    ));
    ok(&apply(
        &k,
        "team-b",
        &route("/pay", "pay", "shop.example"),
        &[],
    ));
    let obj = k.get_json(&["route", "shop", "--show-managed-fields"]);
    let rules: Vec<&str> = obj["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["/cart", "/pay"]);
    assert_eq!(
        owners(&obj, &["f:spec", "f:rules", r#"k:{"path":"/pay"}"#]),
        ["team-b/Apply"]
    );
    assert_eq!(
        owners(&obj, &["f:spec", "f:hosts"]),
        ["team-a/Apply", "team-b/Apply"]
    );

    let err = failed(&apply(
        &k,
        "team-b",
        &route("/pay", "pay", "pay.example"),
        &[],
    ));
    assert!(err.contains(r#"conflict with "team-a""#), "{err}");
    assert!(err.contains(".spec.hosts"), "{err}");

    // Team b drops its rule: only that rule goes.
    let none = "apiVersion: example.com/v1\nkind: Route\nmetadata: {name: shop}\nspec:\n  hosts: [shop.example]\n";
    ok(&apply(&k, "team-b", none, &[]));
    let obj = k.get_json(&["route", "shop"]);
    assert_eq!(obj["spec"]["rules"].as_array().unwrap().len(), 1, "{obj}");
    assert_eq!(obj["spec"]["rules"][0]["path"], "/cart");
}

/// A Deployment first applied client-side moves to server-side apply as
/// kubectl does it: kubectl hands the client-side manager's fields to its
/// own apply manager first, so the switch brings no conflict, and the
/// fields the new manifest drops go.
#[test]
fn client_side_apply_moves_to_server_side_without_conflicts() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    ok(&k
        .run_stdin(&["apply", "-f", "-"], &deployment(2, "nginx:1.27", true))
        .unwrap());
    let obj = k.get_json(&["deployment", "web", "--show-managed-fields"]);
    assert_eq!(
        owners(&obj, &["f:spec", "f:replicas"]),
        ["kubectl-client-side-apply/Update"]
    );
    let next = deployment(3, "nginx:1.27", false);
    ok(&k
        .run_stdin(&["apply", "--server-side", "-f", "-"], &next)
        .unwrap());
    let obj = k.get_json(&["deployment", "web", "--show-managed-fields"]);
    assert_eq!(obj["spec"]["replicas"], 3);
    assert_eq!(owners(&obj, &["f:spec", "f:replicas"]), ["kubectl/Apply"]);
    // kubectl then moved the client-side manager's other fields to its
    // apply manager, so the next apply removes what the manifest dropped.
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert!(
        !managers.contains(&"kubectl-client-side-apply"),
        "{managers:?}"
    );
    ok(&k
        .run_stdin(&["apply", "--server-side", "-f", "-"], &next)
        .unwrap());
    let obj = k.get_json(&["deployment", "web"]);
    let env = &obj["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env.as_array().map(Vec::len), Some(1), "{env}");

    // A field changed since the client-side apply is not forgiven.
    ok(&k
        .output(&["scale", "deployment", "web", "--replicas=5"])
        .unwrap());
    let err = failed(
        &k.run_stdin(&["apply", "--server-side", "-f", "-"], &next)
            .unwrap(),
    );
    assert!(err.contains(".spec.replicas"), "{err}");
}
