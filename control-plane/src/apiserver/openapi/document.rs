//! Assembles the OpenAPI documents: one v3 document per group/version with
//! the paths of its resources and the schemas they reach, and the single
//! v2 (Swagger 2.0) document with every definition.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::schemas::{self, Builtin, Gvk, REF_PREFIX};
use crate::apiserver::discovery::KUBE_MINOR;
use crate::apiserver::resources::Resource;

/// What the documents are built from: the built-in definitions and the
/// served custom resources with their schemas.
pub struct Sources<'a> {
    pub builtin: &'a Builtin,
    pub resources: Vec<&'static Resource>,
    pub custom: Vec<(&'static Resource, Option<Value>)>,
}

/// `api/v1` or `apis/<group>/<version>`: the path a group/version's
/// document is served under, below `/openapi/v3/`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Upstream's definition name of a custom kind: the group reversed, then
/// version and kind (`com.example.v1.Widget`).
fn custom_name(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    format!("{}.{version}.{kind}", parts.join("."))
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The definition of a custom kind: its `openAPIV3Schema` with the fields
/// every object has (apiVersion, kind, metadata as ObjectMeta) and its
/// GroupVersionKind.
fn custom_definition(res: &Resource, schema: Option<&Value>) -> Value {
    let mut def = match schema {
        Some(s) if s.is_object() => s.clone(),
        _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    if def.get("type").is_none() {
        def["type"] = json!("object");
    }
    let props = def
        .as_object_mut()
        .map(|o| o.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(props)) = props {
        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values."}));
        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. In CamelCase."}));
        props.insert("metadata".into(), json!({"$ref": format!("{REF_PREFIX}{OBJECT_META}"), "description": "Standard object's metadata."}));
    }
    schemas::mark_kind(&mut def, (res.group, res.version, res.kind));
    def
}

/// Every definition (built-in and custom) with the schema name of each
/// served resource's kind.
pub fn definitions(src: &Sources) -> (Map<String, Value>, Vec<(&'static Resource, String)>) {
    let mut defs = src.builtin.definitions.clone();
    let mut kinds = Vec::new();
    for r in &src.resources {
        let gvk: Gvk = (r.group, r.version, r.kind);
        if let Some(name) = src.builtin.kinds.get(&gvk) {
            kinds.push((*r, name.clone()));
        }
    }
    for (r, schema) in &src.custom {
        let name = custom_name(r.group, r.version, r.kind);
        defs.insert(name.clone(), custom_definition(r, schema.as_ref()));
        kinds.push((*r, name));
    }
    (defs, kinds)
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

/// The query parameters of writes; kubectl checks that `fieldValidation`
/// is there before it leaves unknown fields to the server.
fn write_params() -> Vec<Value> {
    vec![
        query("dryRun", "When present (All), the request is checked but not persisted."),
        query("fieldManager", "Name of the actor making the change, recorded with the fields it manages."),
        query("fieldValidation", "How the server treats unknown or duplicate fields in the body: Ignore, Warn or Strict."),
    ]
}

/// The operations of one resource, keyed by path, in the v3 form.
fn paths_v3(r: &Resource, schema: &str, out: &mut Map<String, Value>) {
    let prefix = format!("/{}", gv_path(r.group, r.version));
    let (collection, item) = if r.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        )
    } else {
        (
            format!("{prefix}/{}", r.plural),
            format!("{prefix}/{}/{{name}}", r.plural),
        )
    };
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let obj = json!({"$ref": format!("#/components/schemas/{schema}")});
    let body = |types: &[&str]| {
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": obj.clone()})))
            .collect();
        json!({"required": true, "content": content})
    };
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": obj.clone()}}}});
    let op = |verb: &str, params: Vec<Value>| {
        json!({
            "operationId": format!("{verb}{}", r.kind),
            "x-kubernetes-action": verb,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": ok,
        })
    };
    let has = |verb: &str| r.verbs.contains(&verb);
    let mut coll = Map::new();
    let mut one = Map::new();
    if has("list") {
        coll.insert(
            "get".into(),
            op(
                "list",
                vec![
                    query("labelSelector", "Selects objects by their labels."),
                    query("fieldSelector", "Selects objects by their fields."),
                ],
            ),
        );
    }
    if has("create") {
        let mut o = op("post", write_params());
        o["requestBody"] = body(&["application/json", "application/yaml"]);
        coll.insert("post".into(), o);
    }
    if has("deletecollection") {
        coll.insert(
            "delete".into(),
            op(
                "deletecollection",
                vec![query("labelSelector", "Selects the objects to delete.")],
            ),
        );
    }
    if has("get") {
        one.insert("get".into(), op("get", vec![]));
    }
    if has("update") {
        let mut o = op("put", write_params());
        o["requestBody"] = body(&["application/json", "application/yaml"]);
        one.insert("put".into(), o);
    }
    if has("patch") {
        // Strategic merge is left out on purpose: kubectl then computes
        // client-side apply patches from its compiled-in types, the exact
        // merge keys, instead of from these schemas.
        let mut o = op("patch", write_params());
        o["requestBody"] = body(&[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ]);
        one.insert("patch".into(), o);
    }
    if has("delete") {
        one.insert(
            "delete".into(),
            op(
                "delete",
                vec![query(
                    "dryRun",
                    "When present (All), the request is checked but not persisted.",
                )],
            ),
        );
    }
    let name_param = json!({"name": "name", "in": "path", "required": true, "description": format!("name of the {}", r.kind), "schema": {"type": "string", "uniqueItems": true}});
    let ns_param = json!({"name": "namespace", "in": "path", "required": true, "description": "object name and auth scope, such as for teams and projects", "schema": {"type": "string", "uniqueItems": true}});
    let scope: Vec<Value> = if r.namespaced { vec![ns_param] } else { vec![] };
    if !coll.is_empty() {
        coll.insert("parameters".into(), json!(scope));
        out.insert(collection, Value::Object(coll));
    }
    if !one.is_empty() {
        let mut params = scope;
        params.push(name_param);
        one.insert("parameters".into(), json!(params));
        out.insert(item, Value::Object(one));
    }
}

/// Rewrites `$ref`s for v3: to `#/components/schemas/`, and a reference
/// with siblings (a field's own description) into a one-element `allOf`,
/// since OpenAPI 3.0 ignores a `$ref`'s siblings.
fn to_v3(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                let target = format!(
                    "#/components/schemas/{}",
                    r.strip_prefix(REF_PREFIX).unwrap_or(r)
                );
                if o.len() == 1 {
                    o.insert("$ref".into(), json!(target));
                } else {
                    o.remove("$ref");
                    o.insert("allOf".into(), json!([{"$ref": target}]));
                }
                return;
            }
            o.values_mut().for_each(to_v3);
        }
        Value::Array(a) => a.iter_mut().for_each(to_v3),
        _ => {}
    }
}

fn info() -> Value {
    json!({"title": "Kubernetes", "version": format!("v1.{KUBE_MINOR}.0")})
}

/// The v3 document of every served group/version, by `gv_path`.
pub fn v3_documents(src: &Sources) -> BTreeMap<String, Value> {
    let (defs, kinds) = definitions(src);
    let mut by_gv: BTreeMap<String, (Map<String, Value>, Vec<String>)> = BTreeMap::new();
    for (r, schema) in &kinds {
        let (paths, roots) = by_gv.entry(gv_path(r.group, r.version)).or_default();
        paths_v3(r, schema, paths);
        roots.push(schema.clone());
        // The kinds of subresources (Scale, TokenRequest, ...) are read and
        // written through this group/version's paths.
        for s in r.subresources {
            if let Some(name) = src.builtin.kinds.get(&(s.group, s.version, s.kind)) {
                roots.push(name.clone());
            }
        }
    }
    let status = "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_string();
    let delete = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_string();
    by_gv
        .into_iter()
        .map(|(gv, (paths, mut roots))| {
            roots.extend([status.clone(), delete.clone()]);
            let mut components = Map::new();
            for name in schemas::closure(&defs, &roots) {
                if let Some(def) = defs.get(&name) {
                    let mut def = def.clone();
                    to_v3(&mut def);
                    components.insert(name, def);
                }
            }
            let doc = json!({
                "openapi": "3.0.0",
                "info": info(),
                "paths": paths,
                "components": {"schemas": components},
            });
            (gv, doc)
        })
        .collect()
}

/// The v2 document: every definition, and each resource's paths with the
/// GroupVersionKind and the patch types they consume.
pub fn v2_document(src: &Sources) -> Value {
    let (defs, kinds) = definitions(src);
    let mut paths = Map::new();
    for (r, schema) in &kinds {
        let mut v3 = Map::new();
        paths_v3(r, schema, &mut v3);
        for (path, mut item) in v3 {
            if let Some(ops) = item.as_object_mut() {
                ops.remove("parameters");
                for op in ops.values_mut() {
                    let params = op["parameters"].as_array().cloned().unwrap_or_default();
                    op["parameters"] = params
                        .into_iter()
                        .map(|p| json!({"name": p["name"], "in": p["in"], "type": "string", "uniqueItems": true, "description": p["description"]}))
                        .collect();
                    if let Some(body) = op.as_object_mut().and_then(|o| o.remove("requestBody")) {
                        let types: Vec<String> = body["content"]
                            .as_object()
                            .map(|c| c.keys().cloned().collect())
                            .unwrap_or_default();
                        op["consumes"] = json!(types);
                    }
                    op["responses"] = json!({"200": {"description": "OK", "schema": {"$ref": format!("{REF_PREFIX}{schema}")}}});
                }
            }
            paths.insert(path, item);
        }
    }
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths,
        "definitions": defs,
    })
}
