use super::strategic::{list_strategy, ListStrategy};
use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

fn smp(target: Value, patch: Value) -> Value {
    match strategic_merge_patch(&target, &patch) {
        Ok(v) => v,
        Err(e) => panic!("strategic merge patch failed: {e}"),
    }
}

fn smp_err(target: Value, patch: Value) -> String {
    match strategic_merge_patch(&target, &patch) {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e.to_string(),
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "uid": "u1", "resourceVersion": "7", "labels": {"app": "web", "tier": "fe"},
                     "finalizers": ["a/b"]},
        "spec": {
            "containers": [
                {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "envoy:1"}
            ],
            "tolerations": [{"key": "x"}],
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

// ---- JSON patch ----

#[test]
fn json_patch_add_remove_replace() {
    let patch = json!([
        {"op": "add", "path": "/metadata/labels/new", "value": "x"},
        {"op": "remove", "path": "/metadata/labels/tier"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:2"},
        {"op": "add", "path": "/spec/tolerations/-", "value": {"key": "y"}},
        {"op": "add", "path": "/spec/tolerations/0", "value": {"key": "w"}},
        {"op": "copy", "from": "/metadata/name", "path": "/metadata/labels/name"},
        {"op": "move", "from": "/status/phase", "path": "/status/oldPhase"},
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "1"}},
        {"op": "replace", "path": "/metadata/annotations/a~0b~1c", "value": "2"},
    ]);
    let out = json_patch(&pod(), &patch).unwrap();
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "new": "x", "name": "p"})
    );
    assert_eq!(out["spec"]["containers"][0]["image"], "nginx:2");
    assert_eq!(
        out["spec"]["tolerations"],
        json!([{"key": "w"}, {"key": "x"}, {"key": "y"}])
    );
    assert_eq!(out["status"]["oldPhase"], "Running");
    assert!(out["status"].get("phase").is_none());
    assert_eq!(out["metadata"]["annotations"]["a~b/c"], "2");
}

#[test]
fn json_patch_test_failure_and_errors() {
    let err = json_patch(
        &pod(),
        &json!([{"op": "test", "path": "/spec/x", "value": 1}]),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "test operation failed at /spec/x");
    // Numbers compare by value.
    json_patch(
        &json!({"n": 1}),
        &json!([{"op": "test", "path": "/n", "value": 1.0}]),
    )
    .unwrap();
    let cases = [
        json!({"op": "add"}),
        json!([{"op": "add", "path": "/a"}]),
        json!([{"op": "frobnicate", "path": "/a"}]),
        json!([{"op": "remove", "path": "/nope"}]),
        json!([{"op": "replace", "path": "/nope", "value": 1}]),
        json!([{"op": "add", "path": "/a/b/c", "value": 1}]),
        json!([{"op": "add", "path": "/spec/tolerations/5", "value": 1}]),
        json!([{"op": "add", "path": "/spec/tolerations/01", "value": 1}]),
        json!([{"op": "remove", "path": ""}]),
        json!([{"op": "move", "from": "/spec", "path": "/spec/inner"}]),
        json!([{"op": "add", "path": "no-slash", "value": 1}]),
    ];
    for patch in cases {
        assert!(json_patch(&pod(), &patch).is_err(), "{patch} should fail");
    }
    let err = json_patch(&pod(), &json!([{"op": "remove", "path": "/nope"}])).unwrap_err();
    assert!(err.to_string().contains("remove /nope"), "{err}");
}

#[test]
fn json_patch_root_replace() {
    let out = json_patch(
        &pod(),
        &json!([{"op": "replace", "path": "", "value": {"a": 1}}]),
    )
    .unwrap();
    assert_eq!(out, json!({"a": 1}));
}

// ---- merge patch ----

#[test]
fn merge_patch_null_deletes_and_lists_replace() {
    let patch =
        json!({"metadata": {"labels": {"tier": null, "v": "2"}}, "spec": {"tolerations": []}});
    let out = merge_patch(&pod(), &patch).unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"app": "web", "v": "2"}));
    assert_eq!(out["spec"]["tolerations"], json!([]));
    assert_eq!(out["spec"]["containers"][1]["name"], "sidecar");
    assert!(merge_patch(&pod(), &json!([1])).is_err());
}

// ---- strategic merge patch ----

#[test]
fn smp_label_to_null() {
    let out = smp(
        pod(),
        json!({"metadata": {"labels": {"tier": null, "missing": null}}}),
    );
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
}

#[test]
fn smp_kubectl_apply_changes_one_image() {
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
        "containers": [{"name": "sidecar", "image": "envoy:2"}]
    }});
    let out = smp(pod(), patch);
    let containers = &out["spec"]["containers"];
    assert_eq!(names(containers), ["web", "sidecar"]);
    assert_eq!(containers[1]["image"], "envoy:2");
    assert_eq!(containers[0]["env"][1]["value"], "2");
    assert!(!out.to_string().contains('$'));
}

#[test]
fn smp_removes_env_var_with_patch_delete() {
    let patch = json!({"spec": {"containers": [{
        "name": "web",
        "$setElementOrder/env": [{"name": "A"}],
        "env": [{"$patch": "delete", "name": "B"}]
    }]}});
    let out = smp(pod(), patch);
    assert_eq!(
        out["spec"]["containers"][0]["env"],
        json!([{"name": "A", "value": "1"}])
    );
    assert_eq!(names(&out["spec"]["containers"]), ["web", "sidecar"]);
}

#[test]
fn smp_merges_by_key_and_appends_new_items() {
    let patch = json!({"spec": {"containers": [
        {"name": "web", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]},
        {"name": "new", "image": "busybox", "$retainKeys": ["name", "image"]}
    ]}});
    let out = smp(pod(), patch);
    let containers = &out["spec"]["containers"];
    assert_eq!(names(containers), ["web", "sidecar", "new"]);
    assert_eq!(
        containers[0]["ports"],
        json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}])
    );
    assert_eq!(containers[0]["image"], "nginx:1");
    assert_eq!(containers[2], json!({"name": "new", "image": "busybox"}));
}

#[test]
fn smp_set_element_order_places_server_only_items() {
    let live = json!({"spec": {"containers": [{"name": "a"}, {"name": "s"}, {"name": "b"}, {"name": "c"}]}});
    // kubectl apply reordering its own containers, with "s" injected by someone else.
    let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}});
    let out = smp(live.clone(), patch);
    assert_eq!(names(&out["spec"]["containers"]), ["s", "c", "a", "b"]);
    // Inserting a new container between two existing ones.
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "n"}, {"name": "b"}, {"name": "c"}],
        "containers": [{"name": "n", "image": "x"}]
    }});
    let out = smp(live, patch);
    assert_eq!(names(&out["spec"]["containers"]), ["a", "s", "n", "b", "c"]);
    // Without $setElementOrder the patch list gives the order.
    let live = json!({"spec": {"containers": [{"name": "1"}, {"name": "2"}, {"name": "3"}]}});
    let out = smp(
        live,
        json!({"spec": {"containers": [{"name": "3"}, {"name": "1"}]}}),
    );
    assert_eq!(names(&out["spec"]["containers"]), ["2", "3", "1"]);
}

#[test]
fn smp_patch_replace_in_map_and_list() {
    let out = smp(
        pod(),
        json!({"spec": {"strategy": {"$patch": "replace", "type": "Recreate"}}}),
    );
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    let out = smp(
        pod(),
        json!({"spec": {"containers": [{"name": "only"}, {"$patch": "replace"}]}}),
    );
    assert_eq!(out["spec"]["containers"], json!([{"name": "only"}]));
    let out = smp(pod(), json!({"metadata": {"labels": {"$patch": "delete"}}}));
    assert_eq!(out["metadata"]["labels"], json!({}));
}

#[test]
fn smp_retain_keys() {
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
    assert_eq!(
        smp(pod(), patch)["spec"]["strategy"],
        json!({"type": "Recreate"})
    );
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"]}}});
    assert_eq!(
        smp(pod(), patch)["spec"]["strategy"],
        json!({"type": "RollingUpdate"})
    );
    let err = smp_err(
        pod(),
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "other": 1}}}),
    );
    assert!(err.contains("$retainKeys"), "{err}");
    assert!(smp_err(pod(), json!({"spec": {"$retainKeys": "type"}})).contains("$retainKeys"));
}

#[test]
fn smp_primitive_lists() {
    let out = smp(pod(), json!({"metadata": {"finalizers": ["x/y", "a/b"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["x/y", "a/b"]));
    let out = smp(pod(), json!({"metadata": {"finalizers": ["x/y"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["a/b", "x/y"]));
    let patch = json!({"metadata": {
        "$setElementOrder/finalizers": ["x/y"],
        "$deleteFromPrimitiveList/finalizers": ["a/b"],
        "finalizers": ["x/y"]
    }});
    assert_eq!(smp(pod(), patch)["metadata"]["finalizers"], json!(["x/y"]));
    let err = smp_err(
        pod(),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a/b"}}),
    );
    assert!(err.contains("must be a list"), "{err}");
    // Lists without a merge strategy are replaced.
    let out = smp(pod(), json!({"spec": {"tolerations": [{"key": "y"}]}}));
    assert_eq!(out["spec"]["tolerations"], json!([{"key": "y"}]));
}

#[test]
fn smp_errors_are_clear() {
    let err = smp_err(
        pod(),
        json!({"spec": {"$setElementOrder/containers": {"name": "web"}}}),
    );
    assert_eq!(
        err,
        "strategic merge patch: $setElementOrder/containers must be a list (in spec)"
    );
    let err = smp_err(pod(), json!({"spec": {"containers": [{"image": "x"}]}}));
    assert!(
        err.contains("merge key \"name\"") && err.contains("spec.containers"),
        "{err}"
    );
    let err = smp_err(pod(), json!({"spec": {"containers": ["web"]}}));
    assert!(err.contains("merge key"), "{err}");
    assert!(smp_err(pod(), json!({"spec": {"$patch": "explode"}})).contains("explode"));
    assert!(strategic_merge_patch(&pod(), &json!([])).is_err());
    assert!(strategic_merge_patch(&json!(null), &json!({})).is_err());
}

#[test]
fn smp_type_mismatch_patch_replaces() {
    let out = smp(
        pod(),
        json!({"spec": {"strategy": ["x"], "containers": {"name": "web"}}}),
    );
    assert_eq!(out["spec"]["strategy"], json!(["x"]));
    assert_eq!(out["spec"]["containers"], json!({"name": "web"}));
}

#[test]
fn smp_no_directive_leaks_into_new_values() {
    let patch = json!({"spec": {"newMap": {"$patch": "replace", "a": {"$retainKeys": ["b"], "b": 1, "c": null}},
        "initContainers": [{"name": "i", "$setElementOrder/env": [{"name": "E"}], "env": [{"name": "E"}]}],
        "tolerations": [{"$patch": "replace"}, {"key": "z", "$patch": "delete"}, {"key": "k"}]}});
    let out = smp(pod(), patch);
    assert!(!out.to_string().contains('$'), "{out}");
    assert_eq!(out["spec"]["newMap"], json!({"a": {"b": 1}}));
    assert_eq!(
        out["spec"]["initContainers"],
        json!([{"name": "i", "env": [{"name": "E"}]}])
    );
    assert_eq!(out["spec"]["tolerations"], json!([{"key": "k"}]));
}

#[test]
fn merge_key_table() {
    use ListStrategy::*;
    assert_eq!(
        list_strategy(&["spec", "template", "spec", "containers", "ports"]),
        MergeKey("containerPort")
    );
    assert_eq!(list_strategy(&["spec", "ports"]), MergeKey("port"));
    assert_eq!(
        list_strategy(&["spec", "containers", "volumeMounts"]),
        MergeKey("mountPath")
    );
    assert_eq!(list_strategy(&["status", "addresses"]), MergeKey("type"));
    assert_eq!(list_strategy(&["subsets", "addresses"]), Replace);
    assert_eq!(
        list_strategy(&["metadata", "ownerReferences"]),
        MergeKey("uid")
    );
    assert_eq!(list_strategy(&["metadata", "finalizers"]), Set);
    assert_eq!(list_strategy(&["spec", "tolerations"]), Replace);
    assert_eq!(list_strategy(&[]), Replace);
}

// ---- server-side apply ----

#[test]
fn apply_keeps_server_fields_and_merges_containers() {
    let applied = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web2"}, "creationTimestamp": null},
        "spec": {"containers": [{"name": "sidecar", "image": "envoy:2"}, {"name": "web", "image": "nginx:2"}],
                 "tolerations": [{"key": "q"}]},
        "status": {}
    });
    let out = apply_merge(&pod(), &applied).unwrap();
    assert_eq!(out["metadata"]["uid"], "u1");
    assert_eq!(out["metadata"]["resourceVersion"], "7");
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web2", "tier": "fe"})
    );
    assert_eq!(out["status"], pod()["status"]);
    let containers = &out["spec"]["containers"];
    assert_eq!(names(containers), ["sidecar", "web"]);
    assert_eq!(containers[1]["image"], "nginx:2");
    assert_eq!(containers[1]["env"], pod()["spec"]["containers"][0]["env"]);
    assert_eq!(out["spec"]["tolerations"], json!([{"key": "q"}]));
}

#[test]
fn apply_creates_and_falls_back_to_replace() {
    let applied =
        json!({"kind": "ConfigMap", "metadata": {"name": "c", "x": null}, "data": {"k": "v"}});
    let out = apply_merge(&Value::Null, &applied).unwrap();
    assert_eq!(
        out,
        json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}})
    );
    // A custom resource whose `conditions` are not keyed objects.
    let live = json!({"spec": {"conditions": ["a"]}});
    let out = apply_merge(
        &live,
        &json!({"spec": {"conditions": ["b"], "$patch": "x"}}),
    )
    .unwrap();
    assert_eq!(out, json!({"spec": {"conditions": ["b"], "$patch": "x"}}));
    assert!(apply_merge(&live, &json!("x")).is_err());
}

// ---- robustness ----

#[test]
fn deep_nesting_is_fine() {
    // Deeper than serde_json lets a request body nest (128 levels).
    let mut value = json!({"name": "x"});
    for i in 0..200 {
        value = if i % 2 == 0 {
            json!({"spec": value})
        } else {
            json!({"containers": [{"name": "c", "spec": value}]})
        };
    }
    assert!(strategic_merge_patch(&value, &value).is_ok());
    assert!(apply_merge(&value, &value).is_ok());
    assert!(merge_patch(&value, &value).is_ok());
    assert!(json_patch(&value, &json!([{"op": "test", "path": "", "value": value}])).is_ok());
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("$patch".to_string()),
        Just("$retainKeys".to_string()),
        Just("$setElementOrder/containers".to_string()),
        Just("$setElementOrder/finalizers".to_string()),
        Just("$deleteFromPrimitiveList/finalizers".to_string()),
        Just("$setElementOrder/".to_string()),
        Just("containers".to_string()),
        Just("finalizers".to_string()),
        Just("ports".to_string()),
        Just("spec".to_string()),
        Just("metadata".to_string()),
        Just("name".to_string()),
        Just("op".to_string()),
        Just("path".to_string()),
        Just("from".to_string()),
        Just("value".to_string()),
        "[a-z]{1,3}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("replace"),
            Just("delete"),
            Just("merge"),
            Just("add"),
            Just("remove"),
            Just("test"),
            Just("move"),
            Just("copy"),
            Just(""),
            Just("/"),
            Just("/spec"),
            Just("/0"),
            Just("/-"),
            Just("/containers/0"),
            Just("name"),
            Just("~"),
        ]
        .prop_map(Value::from),
        "[a-z/~0-9-]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn never_panics(target in arb_json(), patch in arb_json()) {
        let _ = json_patch(&target, &patch);
        let _ = merge_patch(&target, &patch);
        let _ = strategic_merge_patch(&target, &patch);
        let _ = apply_merge(&target, &patch);
        let ops = Value::Array(vec![patch.clone()]);
        let _ = json_patch(&target, &ops);
        // The same input nested where merge keys and directives apply.
        let nest = |v: &Value| json!({"spec": {"containers": [v], "finalizers": v}, "metadata": {"finalizers": v}});
        let _ = strategic_merge_patch(&nest(&target), &nest(&patch));
        let _ = apply_merge(&nest(&target), &nest(&patch));
    }

    #[test]
    fn strategic_result_has_no_directives(target in arb_json(), patch in arb_json()) {
        if let Ok(out) = strategic_merge_patch(&target, &patch) {
            let leaked = out.to_string().contains("\"$patch\"") || out.to_string().contains("\"$retainKeys\"");
            // A directive key may only survive if the live object already had it.
            prop_assert!(!leaked || target.to_string().contains('$'));
        }
    }
}

#[test]
fn a_custom_resource_schema_says_how_lists_merge() {
    use super::{apply_merge_with, Lists};
    let schema = json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {
            "rules": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "hosts": {"type": "array", "x-kubernetes-list-type": "set",
                        "items": {"type": "string"}}
                }}},
            "containers": {"type": "array", "items": {"type": "object"}},
            "labels": {"type": "object", "additionalProperties": {
                "type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}
        }}}
    });
    let lists = Lists::Schema(&schema);
    assert_eq!(
        lists.strategy(&["spec", "rules"]),
        ListStrategy::MergeKey("name")
    );
    assert_eq!(
        lists.strategy(&["spec", "rules", "hosts"]),
        ListStrategy::Set
    );
    assert_eq!(
        lists.strategy(&["spec", "labels", "any"]),
        ListStrategy::Set
    );
    // Not what the built-in table says of `containers`: no list type is atomic.
    assert_eq!(
        lists.strategy(&["spec", "containers"]),
        ListStrategy::Replace
    );
    assert_eq!(lists.strategy(&["spec", "missing"]), ListStrategy::Replace);
    assert_eq!(
        lists.strategy(&["metadata", "finalizers"]),
        ListStrategy::Set
    );

    let live = json!({"spec": {
        "rules": [{"name": "a", "hosts": ["x"]}],
        "containers": [{"name": "c", "image": "1"}]
    }});
    let applied = json!({"spec": {
        "rules": [{"name": "a", "hosts": ["y"]}, {"name": "b"}],
        "containers": [{"name": "c"}]
    }});
    let merged = apply_merge_with(&live, &applied, lists).unwrap();
    assert_eq!(
        merged["spec"]["rules"],
        json!([{"name": "a", "hosts": ["x", "y"]}, {"name": "b"}])
    );
    assert_eq!(merged["spec"]["containers"], json!([{"name": "c"}]));
}
