//! User stories of the OpenAPI documents: `kubectl explain` describes
//! built-in and custom fields, kubectl's strict validation still names an
//! unknown field, and the python client's dynamic client works over the
//! same discovery and schemas.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::ok;
use harness::kubectl::Kubectl;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

fn explain(k: &Kubectl, field: &str) -> String {
    ok(&k.output(&["explain", field]).unwrap())
}

/// `text` with every run of whitespace made one space: kubectl wraps
/// descriptions at 80 columns.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn widgets_crd(size_description: &str) -> String {
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        description: A widget of the example operator.
        properties:
          spec:
            type: object
            description: What the owner of the widget wants.
            properties:
              size:
                type: integer
                description: {size_description}
              color: {{type: string, description: Paint of the widget.}}
"#
    )
}

fn install_widgets(k: &Kubectl, size_description: &str) {
    ok(&k
        .run_stdin(&["apply", "-f", "-"], &widgets_crd(size_description))
        .unwrap());
    ok(&k
        .output(&[
            "wait",
            "--for",
            "condition=Established",
            "crd/widgets.example.com",
            "--timeout=60s",
        ])
        .unwrap());
}

/// A user asks kubectl what a field of a Pod and of a Deployment means and
/// gets upstream's descriptions and types.
#[test]
fn kubectl_explain_describes_built_in_fields() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();

    let out = explain(&k, "pod.spec.containers");
    assert!(out.contains("KIND:       Pod"), "{out}");
    assert!(out.contains("FIELD: containers <[]Container>"), "{out}");
    assert!(
        squash(&out).contains("List of containers belonging to the pod."),
        "{out}"
    );
    // The fields of the element type are listed with their types.
    assert!(out.contains("image\t<string>"), "{out}");
    assert!(out.contains("name\t<string> -required-"), "{out}");

    let out = explain(&k, "deployment.spec.strategy.rollingUpdate.maxSurge");
    assert!(out.contains("GROUP:      apps"), "{out}");
    assert!(out.contains("FIELD: maxSurge <IntOrString>"), "{out}");
    assert!(
        squash(&out).contains(
            "The maximum number of pods that can be scheduled above the desired number of pods."
        ),
        "{out}"
    );

    // A field that does not exist is named as such.
    let out = k.output(&["explain", "pod.spec.nosuchfield"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuchfield"), "{err}");

    // The document kubectl fetched is the one the index names, cacheable.
    let index: Value =
        serde_json::from_str(&k.run(&["get", "--raw", "/openapi/v3"]).unwrap()).unwrap();
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 is listed");
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    let doc = k.run(&["get", "--raw", url]).unwrap();
    eprintln!("openapi v3 apis/apps/v1: {} bytes", doc.len());
    let v2 = k.run(&["get", "--raw", "/openapi/v2"]).unwrap();
    eprintln!("openapi v2: {} bytes", v2.len());
    let v2: Value = serde_json::from_str(&v2).unwrap();
    assert!(v2["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
}

/// An operator documents a CRD's fields; `kubectl explain` shows them, and
/// shows the new text after the CRD changes, with the same kubectl cache.
#[test]
fn kubectl_explain_describes_a_custom_resource_and_follows_its_changes() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    install_widgets(&k, "How many parts the widget has.");

    let out = explain(&k, "widgets.spec.size");
    assert!(out.contains("GROUP:      example.com"), "{out}");
    assert!(out.contains("FIELD: size <integer>"), "{out}");
    assert!(
        squash(&out).contains("How many parts the widget has."),
        "{out}"
    );
    let out = explain(&k, "widgets.spec");
    assert!(
        squash(&out).contains("What the owner of the widget wants."),
        "{out}"
    );
    assert!(out.contains("color\t<string>"), "{out}");
    let out = explain(&k, "widgets.metadata.name");
    assert!(
        squash(&out).contains("Name must be unique within a namespace."),
        "{out}"
    );

    install_widgets(&k, "Parts, counted after assembly.");
    let fresh = wait_for(Duration::from_secs(10), || {
        let out = explain(&k, "widgets.spec.size");
        squash(&out)
            .contains("Parts, counted after assembly.")
            .then_some(out)
    });
    assert!(
        fresh.is_some(),
        "explain still shows the old description: {}",
        explain(&k, "widgets.spec.size")
    );
}

/// kubectl's default `--validate=strict` still refuses a manifest with a
/// misspelt field and names the field, for built-in and custom kinds.
#[test]
fn strict_validation_names_an_unknown_field() {
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: typo}
spec:
  containers:
  - name: c
    image: busybox
    imagePullPolcy: Always
"#;
    let out = k
        .run_stdin(&["create", "--validate=strict", "-f", "-"], pod)
        .unwrap();
    assert!(!out.status.success(), "the pod was created");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"unknown field "spec.containers[0].imagePullPolcy""#),
        "{err}"
    );

    install_widgets(&k, "size");
    let widget = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
spec: {size: 2, colour: red}
"#;
    let out = k
        .run_stdin(&["apply", "--validate=strict", "-f", "-"], widget)
        .unwrap();
    assert!(!out.status.success(), "the widget was created");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"unknown field "spec.colour""#), "{err}");
}

/// Lists a built-in and a custom kind through `kubernetes.dynamic`, which
/// finds both by discovery, and prints what it saw as one JSON line.
const DYNAMIC: &str = r#"
import json, sys
from kubernetes import client, dynamic

cfg = client.Configuration()
cfg.host = sys.argv[1]
dc = dynamic.DynamicClient(client.ApiClient(cfg))
cms = dc.resources.get(api_version="v1", kind="ConfigMap")
widgets = dc.resources.get(api_version="example.com/v1", kind="Widget")
print(json.dumps({
    "configmaps": sorted(o.metadata.name for o in cms.get(namespace="default").items),
    "widgets": sorted(o.metadata.name for o in widgets.get(namespace="default").items),
    "widget_size": widgets.get(name="w", namespace="default").spec.size,
}))
"#;

fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/kestrel/python/bin/python")
}

/// A python user lists ConfigMaps and the operator's Widgets with the
/// `kubernetes` package's dynamic client.
#[test]
fn python_dynamic_client_lists_built_in_and_custom_kinds() {
    let python = venv_python();
    let ready = Command::new(&python)
        .args(["-c", "import kubernetes.dynamic"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "{} cannot import kubernetes.dynamic: run `cargo xtask setup`",
        python.display()
    );
    let cp = ControlPlane::start().unwrap();
    let k = cp.kubectl();
    install_widgets(&k, "size");
    ok(&k
        .output(&["create", "configmap", "settings", "--from-literal=a=b"])
        .unwrap());
    k.apply(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\nspec: {size: 3}\n",
    );

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("dynamic.py");
    std::fs::write(&script, DYNAMIC).unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut py = Guarded::spawn(
        "python",
        Command::new(&python)
            .arg(&script)
            .arg(cp.url())
            // The dynamic client caches discovery in a file under TMPDIR.
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    )
    .unwrap();
    let status = wait_for(Duration::from_secs(60), || {
        py.child.try_wait().ok().flatten()
    });
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("the python client did not finish in 60s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        status.success(),
        "python dynamic client failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    let seen: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stdout}\n{stderr}"));
    let cms: Vec<&str> = seen["configmaps"]
        .as_array()
        .expect("configmaps")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(cms.contains(&"settings"), "{seen}");
    assert_eq!(seen["widgets"], serde_json::json!(["w"]), "{seen}");
    assert_eq!(seen["widget_size"], 3, "{seen}");
}
