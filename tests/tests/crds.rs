//! User stories of CustomResourceDefinitions driven by the real kubectl:
//! an operator's CRD is installed, its kind is served like a built-in one,
//! and removing the CRD removes its objects.

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::kubectl::{failed, ok};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [gadgets]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Ready, type: boolean, jsonPath: .status.ready}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              replicas: {type: integer}
              color: {type: string, default: blue, enum: [blue, red]}
              port: {x-kubernetes-int-or-string: true}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status:
            type: object
            properties:
              ready: {type: boolean}
              replicas: {type: integer}
"#;

const GIZMOS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gizmos.example.com
spec:
  group: example.com
  scope: Cluster
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

fn install(k: &Kubectl, manifest: &str, name: &str) {
    ok(&k.run_stdin(&["apply", "-f", "-"], manifest).unwrap());
    ok(&k
        .output(&[
            "wait",
            "--for",
            "condition=Established",
            &format!("crd/{name}"),
            "--timeout=60s",
        ])
        .unwrap());
}

/// An operator installs a CRD with a schema; users then create, list,
/// validate, default, scale and update the status of its objects with
/// kubectl as with any built-in kind.
#[test]
fn a_custom_kind_is_served_validated_and_printed_like_a_built_in() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    install(&k, WIDGETS, "widgets.example.com");
    let crd = json(
        &k.run(&["get", "crd", "widgets.example.com", "-o", "json"])
            .unwrap(),
    );
    let conditions = crd["status"]["conditions"].as_array().unwrap();
    for ty in ["NamesAccepted", "Established"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == ty && c["status"] == "True"),
            "{ty} in {conditions:?}"
        );
    }
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Widget");

    // Created from YAML; the default fills in the color.
    ok(&k
        .run_stdin(
            &["apply", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: small}\nspec: {size: 2, port: http}\n",
        )
        .unwrap());
    let small = json(&k.run(&["get", "widget", "small", "-o", "json"]).unwrap());
    assert_eq!(small["spec"]["color"], "blue", "{small}");
    assert_eq!(small["metadata"]["namespace"], "default");
    assert_eq!(small["metadata"]["generation"], 1);

    // A value the schema refuses: 422, the field named.
    let bad = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0, color: green}\n",
        )
        .unwrap();
    let err = failed(&bad);
    assert!(err.contains("Invalid"), "{err}");
    assert!(err.contains("spec.size"), "{err}");
    assert!(err.contains("spec.color"), "{err}");
    let mistyped = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: three}\n",
        )
        .unwrap();
    let err = failed(&mistyped);
    assert!(
        err.contains("spec.size") && err.contains("integer"),
        "{err}"
    );
    let missing = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {color: red}\n",
        )
        .unwrap();
    let err = failed(&missing);
    assert!(err.contains("spec.size: Required value"), "{err}");

    // Unknown fields: refused under strict validation, pruned without it,
    // kept where the schema preserves them.
    let strict = k
        .run_stdin(
            &["create", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: loose}\nspec: {size: 1, bogus: 1}\n",
        )
        .unwrap();
    let err = failed(&strict);
    assert!(err.contains(r#"unknown field "spec.bogus""#), "{err}");
    ok(&k
        .run_stdin(
            &["create", "--validate=false", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: loose}\nspec: {size: 1, bogus: 1, extra: {any: {thing: 1}}}\ntop: 1\n",
        )
        .unwrap());
    let loose = json(&k.run(&["get", "widget", "loose", "-o", "json"]).unwrap());
    assert!(loose["spec"].get("bogus").is_none(), "{loose}");
    assert!(loose.get("top").is_none(), "{loose}");
    assert_eq!(loose["spec"]["extra"]["any"]["thing"], 1, "{loose}");

    // The status subresource: status in a main-resource write is ignored,
    // and /status writes nothing but the status.
    ok(&k
        .output(&[
            "patch",
            "widget",
            "small",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":3},"status":{"ready":true}}"#,
        ])
        .unwrap());
    let small = json(&k.run(&["get", "widget", "small", "-o", "json"]).unwrap());
    assert_eq!(small["spec"]["size"], 3);
    assert!(small["status"].get("ready").is_none(), "{small}");
    assert_eq!(small["metadata"]["generation"], 2);
    ok(&k
        .output(&[
            "patch",
            "widget",
            "small",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":9},"status":{"ready":true}}"#,
        ])
        .unwrap());
    let small = json(&k.run(&["get", "widget", "small", "-o", "json"]).unwrap());
    assert_eq!(small["status"]["ready"], true);
    assert_eq!(small["spec"]["size"], 3);
    assert_eq!(small["metadata"]["generation"], 2);

    // The scale subresource writes the CRD's replicas path.
    ok(&k
        .output(&["scale", "widget", "small", "--replicas=4"])
        .unwrap());
    let small = json(&k.run(&["get", "widget", "small", "-o", "json"]).unwrap());
    assert_eq!(small["spec"]["replicas"], 4);

    // Printer columns, the short name and the category.
    let table = k.run(&["get", "widgets"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "COLOR", "READY", "AGE"], "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("small "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["small", "3", "blue", "true"], "{table}");
    let short = k.run(&["get", "wd", "-o", "name"]).unwrap();
    let mut names: Vec<&str> = short.lines().collect();
    names.sort();
    assert_eq!(
        names,
        ["widget.example.com/loose", "widget.example.com/small"]
    );
    let category = k.run(&["get", "gadgets", "-o", "name"]).unwrap();
    assert_eq!(category.lines().count(), 2, "{category}");

    // Namespaced: another namespace sees nothing of them.
    ok(&k.output(&["create", "namespace", "other"]).unwrap());
    let none = k.output(&["get", "widgets", "-n", "other"]).unwrap();
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    // A cluster-scoped kind next to it in the same group.
    install(&k, GIZMOS, "gizmos.example.com");
    ok(&k
        .run_stdin(
            &["apply", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Gizmo\nmetadata: {name: g1}\nanything: {goes: here}\n",
        )
        .unwrap());
    let g1 = json(&k.run(&["get", "gizmo", "g1", "-o", "json"]).unwrap());
    assert!(g1["metadata"].get("namespace").is_none(), "{g1}");
    assert_eq!(g1["anything"]["goes"], "here");
    let table = k.run(&["get", "gizmos"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "AGE"], "{table}");

    // Deleting the CRD deletes its objects: the kind is gone, and once it
    // is defined again none of the old widgets come back.
    ok(&k.output(&["delete", "crd", "widgets.example.com"]).unwrap());
    let gone = k.output(&["get", "widgets"]).unwrap();
    let err = failed(&gone);
    // kubectl's cached discovery may still list the kind; then the server's 404 shows.
    assert!(
        err.contains("the server doesn't have a resource type")
            || err.contains("the server could not find the requested resource"),
        "{err}"
    );
    install(&k, WIDGETS, "widgets.example.com");
    let again = k.output(&["get", "widgets", "-A", "-o", "name"]).unwrap();
    assert_eq!(ok(&again).trim(), "", "the old widgets came back");
    // The other CRD's objects are untouched.
    assert_eq!(
        k.run(&["get", "gizmos", "-o", "name"]).unwrap().trim(),
        "gizmo.example.com/g1"
    );
}

/// A CRD that cannot be served is refused with the fields that are wrong.
#[test]
fn a_malformed_crd_is_refused_with_its_fields_named() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let bad = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: things.example.com}
spec:
  group: example.com
  scope: Galactic
  names: {plural: stuff, kind: Thing}
  versions:
  - name: v1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {}
"#;
    let err = failed(&k.run_stdin(&["create", "-f", "-"], bad).unwrap());
    assert!(err.contains("\"things.example.com\" is invalid"), "{err}");
    for field in [
        "metadata.name",
        "spec.scope",
        "spec.versions",
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].type",
    ] {
        assert!(err.contains(field), "{field} not named: {err}");
    }
    let listed = k.output(&["get", "crds", "-o", "name"]).unwrap();
    assert_eq!(ok(&listed).trim(), "");
}
