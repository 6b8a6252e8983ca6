use axum::http::{header, HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::*;
use crate::apiserver::resources::Resource;

fn doc(docs: &Docs, gv: &str) -> Value {
    let served = docs
        .v3
        .get(gv)
        .unwrap_or_else(|| panic!("no document for {gv}"));
    serde_json::from_slice(&served.body).expect("the document is JSON")
}

/// Every `$ref` in `v`, without its `#/components/schemas/` prefix.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => out.push(r.to_string()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn widget(served_as: &'static str) -> &'static Resource {
    Box::leak(Box::new(Resource {
        group: "example.com",
        version: served_as,
        kind: "Widget",
        plural: "widgets",
        singular: "widget",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: &["create", "get", "list", "patch", "update", "delete"],
        subresources: &[],
    }))
}

fn widget_schema(description: &str) -> Value {
    json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "size": {"type": "integer", "description": description}}}}})
}

#[test]
fn every_served_builtin_kind_has_a_generated_schema_with_its_gvk() {
    let b = builtin();
    for r in RESOURCES {
        let name = b
            .kinds
            .get(&(r.group, r.version, r.kind))
            .unwrap_or_else(|| panic!("no schema for {}/{} {}", r.group, r.version, r.kind));
        let def = &b.definitions[name];
        assert_eq!(
            def["x-kubernetes-group-version-kind"],
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
            "{name}"
        );
        assert!(def["description"].is_string(), "{name} has its description");
    }
}

#[test]
fn a_group_version_document_has_the_fields_explain_and_validation_read() {
    let docs = build(0, vec![]);
    let apps = doc(&docs, "apis/apps/v1");
    let schemas = &apps["components"]["schemas"];
    let deploy = &schemas["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deploy["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
    );
    assert!(deploy.get("required").is_none(), "metadata is not required");
    // A field that refers to another schema keeps its own description.
    let strategy = &schemas["io.k8s.api.apps.v1.DeploymentStrategy"]["properties"]["rollingUpdate"];
    assert_eq!(
        strategy["allOf"],
        json!([{"$ref": "#/components/schemas/io.k8s.api.apps.v1.RollingUpdateDeployment"}])
    );
    assert!(strategy["description"].is_string());
    let surge = &schemas["io.k8s.api.apps.v1.RollingUpdateDeployment"]["properties"]["maxSurge"];
    assert!(
        surge["description"]
            .as_str()
            .unwrap_or("")
            .contains("maximum number of pods"),
        "{surge}"
    );
    let ios = &schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
    assert_eq!(ios["format"], "int-or-string");
    let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(containers["x-kubernetes-list-type"], "map");
    // The scale subresource's kind comes with the group that serves it.
    assert!(schemas["io.k8s.api.autoscaling.v1.Scale"].is_object());

    // kubectl looks for fieldValidation on the PATCH of the kind.
    let patch = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    let params: Vec<&str> = patch["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(params.contains(&"fieldValidation"), "{params:?}");
    assert!(params.contains(&"fieldManager"), "{params:?}");

    // Every reference resolves inside the document, and only there.
    for (gv, served) in &docs.v3 {
        let d: Value = serde_json::from_slice(&served.body).expect("JSON");
        let mut all = Vec::new();
        refs(&d, &mut all);
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{gv}: reference {r} is not to components"));
            assert!(
                d["components"]["schemas"][name].is_object(),
                "{gv}: {r} is dangling"
            );
        }
    }
}

#[test]
fn the_index_lists_every_group_version_with_the_hash_of_its_document() {
    let docs = build(0, vec![]);
    let index: Value = serde_json::from_slice(&docs.index.body).expect("JSON");
    let paths = index["paths"].as_object().expect("paths");
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/apiextensions.k8s.io/v1",
    ] {
        let url = paths[gv]["serverRelativeURL"].as_str().expect("URL");
        assert_eq!(url, format!("/openapi/v3/{gv}?hash={}", docs.v3[gv].hash));
    }
    // The same input gives the same bytes, so clients' caches stay valid.
    let again = build(1, vec![]);
    assert_eq!(again.v3["api/v1"].hash, docs.v3["api/v1"].hash);
}

#[test]
fn a_custom_resource_schema_is_in_its_group_version_and_changes_its_hash() {
    let res = widget("v1");
    let docs = build(
        1,
        vec![(res, Some(widget_schema("How big the widget is.")))],
    );
    let d = doc(&docs, "apis/example.com/v1");
    let w = &d["components"]["schemas"]["com.example.v1.Widget"];
    assert_eq!(
        w["x-kubernetes-group-version-kind"],
        json!([{"group": "example.com", "version": "v1", "kind": "Widget"}])
    );
    assert_eq!(
        w["properties"]["spec"]["properties"]["size"]["description"],
        "How big the widget is."
    );
    assert_eq!(
        w["properties"]["metadata"]["allOf"],
        json!([{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}])
    );
    assert!(
        d["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object()
    );
    let patch = &d["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Widget");

    let changed = build(2, vec![(res, Some(widget_schema("Its size.")))]);
    assert_ne!(
        changed.v3["apis/example.com/v1"].hash,
        docs.v3["apis/example.com/v1"].hash
    );
    assert_eq!(
        changed.v3["api/v1"].hash, docs.v3["api/v1"].hash,
        "other groups keep theirs"
    );

    // Without a schema, the kind still has a definition that takes anything.
    let open = build(3, vec![(widget("v2"), None)]);
    let d = doc(&open, "apis/example.com/v2");
    assert_eq!(
        d["components"]["schemas"]["com.example.v2.Widget"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
}

#[test]
fn v2_has_every_definition_and_is_refused_as_protobuf() {
    let docs = build(0, vec![(widget("v1"), Some(widget_schema("size")))]);
    let v2: Value = serde_json::from_slice(&docs.v2().body).expect("JSON");
    assert_eq!(v2["swagger"], "2.0");
    let defs = v2["definitions"].as_object().expect("definitions");
    assert!(defs.contains_key("io.k8s.api.core.v1.Pod"));
    assert!(defs.contains_key("com.example.v1.Widget"));
    let patch = &v2["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
    assert!(patch["consumes"].as_array().is_some_and(|c| !c.is_empty()));
    let mut all = Vec::new();
    refs(&v2, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/definitions/")
            .expect("v2 references definitions");
        assert!(defs.contains_key(name), "{r} is dangling");
    }

    let mut pb = HeaderMap::new();
    pb.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
    );
    assert_eq!(super::v2(&pb).status(), 406);
    let mut js = HeaderMap::new();
    js.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let resp = super::v2(&js);
    assert_eq!(resp.status(), 200);
    let tag = resp.headers()[header::ETAG].clone();
    js.insert(header::IF_NONE_MATCH, tag);
    assert_eq!(
        super::v2(&js).status(),
        304,
        "an unchanged document is not sent again"
    );
}

/// Prints the sizes (visible with `--nocapture`) and keeps them bounded:
/// the documents live in memory for as long as the CRDs do not change.
#[test]
fn documents_stay_small() {
    let started = std::time::Instant::now();
    let docs = build(0, vec![]);
    let built = started.elapsed();
    let mut total = 0;
    for (gv, s) in &docs.v3 {
        eprintln!("openapi v3 {gv}: {} bytes", s.body.len());
        total += s.body.len();
    }
    let v2 = docs.v2().body.len();
    eprintln!(
        "openapi v3 total: {total} bytes in {} documents, built in {built:?}",
        docs.v3.len()
    );
    eprintln!("openapi v2: {v2} bytes");
    assert!(
        docs.v3["api/v1"].body.len() < 4 << 20,
        "core/v1 stays under 4 MiB"
    );
    assert!(total < 16 << 20, "all v3 documents stay under 16 MiB");
    assert!(v2 < 4 << 20, "v2 stays under 4 MiB");
}
