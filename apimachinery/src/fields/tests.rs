use serde_json::json;

use super::*;
use crate::patch::Lists;

fn writer<'a>(manager: &'a str) -> Writer<'a> {
    Writer {
        manager,
        api_version: "apps/v1",
        subresource: "",
        time: "2026-01-01T00:00:00Z",
        lists: Lists::Builtin,
    }
}

fn deployment(replicas: i64, image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "web", "image": image}]}}
        }
    })
}

fn merge(live: &Value, applied: &Value) -> Value {
    crate::patch::apply_merge(live, applied).unwrap()
}

#[test]
fn fields_v1_round_trip_and_shape() {
    let set = Set::of(&json!({
        "metadata": {"labels": {"app": "web"}, "finalizers": ["a"]},
        "spec": {"containers": [{"name": "web", "args": ["x"]}], "empty": {}}
    }));
    let v1 = set.to_v1();
    assert_eq!(
        v1,
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"a\"": {}}},
            "f:spec": {
                "f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:name": {}, "f:args": {}}},
                "f:empty": {}
            }
        })
    );
    assert_eq!(Set::from_v1(&v1), set);
    // Garbage from a client is an empty set, not a panic.
    assert!(Set::from_v1(&json!([1, 2])).is_empty());
}

#[test]
fn display_names_items_and_values() {
    let path: Vec<String> = ["f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"]
        .map(String::from)
        .to_vec();
    assert_eq!(display(&path), ".spec.containers[name=\"web\"].image");
    let path: Vec<String> = ["f:metadata", "f:finalizers", "v:\"x\""]
        .map(String::from)
        .to_vec();
    assert_eq!(display(&path), ".metadata.finalizers[=\"x\"]");
}

#[test]
fn update_moves_ownership_of_changed_fields_only() {
    let mut entries = Vec::new();
    let created = deployment(1, "nginx:1");
    record_update(
        &mut entries,
        &writer("kubectl-create"),
        &Value::Null,
        &created,
    );
    assert_eq!(entries.len(), 1);
    let scaled = deployment(3, "nginx:1");
    record_update(&mut entries, &writer("scaler"), &created, &scaled);
    let scaler = entries.iter().find(|e| e.manager == "scaler").unwrap();
    assert_eq!(scaler.fields.to_v1(), json!({"f:spec": {"f:replicas": {}}}));
    let creator = entries
        .iter()
        .find(|e| e.manager == "kubectl-create")
        .unwrap();
    assert!(get(
        &json!({"spec": {"replicas": 1}}),
        &["f:spec".into(), "f:replicas".into()]
    )
    .is_some());
    assert!(creator
        .fields
        .node(&["f:spec".into(), "f:replicas".into()])
        .is_none());
    // A write that changes nothing records nothing new.
    record_update(&mut entries, &writer("idle"), &scaled, &scaled);
    assert!(entries.iter().all(|e| e.manager != "idle"));
}

#[test]
fn apply_conflicts_with_another_owner_unless_forced() {
    let mut entries = Vec::new();
    let live = deployment(1, "nginx:1");
    record_update(&mut entries, &writer("kubectl-create"), &Value::Null, &live);
    let applied = json!({"spec": {"replicas": 5}});
    let merged = merge(&live, &applied);
    let err = apply(
        &mut entries.clone(),
        &writer("tool"),
        &live,
        &applied,
        merged.clone(),
        false,
        &Set::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        vec![Conflict {
            manager: "\"kubectl-create\" using apps/v1".into(),
            path: ".spec.replicas".into()
        }]
    );
    assert_eq!(
        conflict_message(&err),
        "Apply failed with 1 conflict: conflict with \"kubectl-create\" using apps/v1: .spec.replicas"
    );
    let out = apply(
        &mut entries,
        &writer("tool"),
        &live,
        &applied,
        merged,
        true,
        &Set::default(),
    )
    .unwrap();
    assert_eq!(out["spec"]["replicas"], 5);
    let creator = entries
        .iter()
        .find(|e| e.manager == "kubectl-create")
        .unwrap();
    assert!(creator
        .fields
        .node(&["f:spec".into(), "f:replicas".into()])
        .is_none());
    let tool = entries.iter().find(|e| e.manager == "tool").unwrap();
    assert_eq!(tool.operation, "Apply");
}

#[test]
fn applying_the_same_value_shares_ownership() {
    let mut entries = Vec::new();
    let live = deployment(1, "nginx:1");
    record_update(&mut entries, &writer("kubectl-create"), &Value::Null, &live);
    let applied = json!({"spec": {"replicas": 1}});
    let merged = merge(&live, &applied);
    apply(
        &mut entries,
        &writer("tool"),
        &live,
        &applied,
        merged,
        false,
        &Set::default(),
    )
    .unwrap();
    let path = ["f:spec".to_string(), "f:replicas".to_string()];
    assert!(entries.iter().all(|e| e.fields.node(&path).is_some()));
}

#[test]
fn fields_no_longer_applied_are_removed_unless_someone_else_owns_them() {
    let mut entries = Vec::new();
    let first = json!({
        "metadata": {"labels": {"a": "1", "b": "2"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}
        ]}}}
    });
    let live = apply(
        &mut entries,
        &writer("me"),
        &Value::Null,
        &first,
        merge(&Value::Null, &first),
        false,
        &Set::default(),
    )
    .unwrap();
    // Someone else labels the object with `b` too (same value: shared).
    let mut labelled = live.clone();
    labelled["metadata"]["labels"]["c"] = json!("3");
    record_update(&mut entries, &writer("kubectl-label"), &live, &labelled);
    let second = json!({
        "metadata": {"labels": {"a": "1"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx", "env": [{"name": "X", "value": "1"}]}
        ]}}}
    });
    let out = apply(
        &mut entries,
        &writer("me"),
        &labelled,
        &second,
        merge(&labelled, &second),
        false,
        &Set::default(),
    )
    .unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([{"name": "X", "value": "1"}])
    );
}

#[test]
fn a_dropped_item_stays_when_another_manager_owns_part_of_it() {
    let mut entries = Vec::new();
    let first = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "nginx"}, {"name": "side", "image": "busybox"}
    ]}}}});
    let live = apply(
        &mut entries,
        &writer("me"),
        &Value::Null,
        &first,
        merge(&Value::Null, &first),
        false,
        &Set::default(),
    )
    .unwrap();
    let mut edited = live.clone();
    edited["spec"]["template"]["spec"]["containers"][1]["image"] = json!("busybox:2");
    record_update(&mut entries, &writer("kubectl-edit"), &live, &edited);
    let second = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
    let out = apply(
        &mut entries,
        &writer("me"),
        &edited,
        &second,
        merge(&edited, &second),
        false,
        &Set::default(),
    )
    .unwrap();
    let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "side"]);
}

#[test]
fn multiple_conflicts_are_grouped_by_manager() {
    let conflicts = vec![
        Conflict {
            manager: "\"b\"".into(),
            path: ".spec.x".into(),
        },
        Conflict {
            manager: "\"a\"".into(),
            path: ".spec.y".into(),
        },
        Conflict {
            manager: "\"b\"".into(),
            path: ".spec.z".into(),
        },
    ];
    assert_eq!(
        conflict_message(&conflicts),
        "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.y\nconflicts with \"b\":\n- .spec.x\n- .spec.z"
    );
}

#[test]
fn entries_round_trip_through_metadata() {
    let mut obj = json!({"metadata": {"name": "x"}});
    let mut entries = Vec::new();
    record_update(
        &mut entries,
        &writer("m"),
        &Value::Null,
        &json!({"spec": {"a": 1}}),
    );
    write(&mut obj, &entries);
    assert_eq!(obj["metadata"]["managedFields"][0]["manager"], "m");
    assert_eq!(
        obj["metadata"]["managedFields"][0]["fieldsType"],
        "FieldsV1"
    );
    assert_eq!(read(&obj), entries);
    write(&mut obj, &[]);
    assert!(obj["metadata"].get("managedFields").is_none());
}

#[test]
fn a_schema_keyed_list_lets_two_managers_own_one_item_each() {
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "rules": {"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object"}},
        "tags": {"type": "array", "items": {"type": "string"}}
    }}}});
    let with = |manager| Writer {
        lists: Lists::Schema(&schema),
        ..writer(manager)
    };
    let mut entries = Vec::new();
    let a = json!({"spec": {"rules": [{"name": "a", "port": 1}], "tags": ["x"]}});
    let live = apply(
        &mut entries,
        &with("one"),
        &Value::Null,
        &a,
        a.clone(),
        false,
        &Set::default(),
    )
    .unwrap();
    let b = json!({"spec": {"rules": [{"name": "b", "port": 2}]}});
    let merged = crate::patch::apply_merge_with(&live, &b, Lists::Schema(&schema)).unwrap();
    let live = apply(
        &mut entries,
        &with("two"),
        &live,
        &b,
        merged,
        false,
        &Set::default(),
    )
    .unwrap();
    assert_eq!(live["spec"]["rules"].as_array().unwrap().len(), 2);
    // The atomic list is one field: another value for it is a conflict.
    let c = json!({"spec": {"tags": ["y"]}});
    let merged = crate::patch::apply_merge_with(&live, &c, Lists::Schema(&schema)).unwrap();
    let err = apply(
        &mut entries,
        &with("two"),
        &live,
        &c,
        merged,
        false,
        &Set::default(),
    )
    .unwrap_err();
    assert_eq!(err[0].path, ".spec.tags");
    // Dropping its item removes only that item.
    let none = json!({"spec": {}});
    let merged = crate::patch::apply_merge_with(&live, &none, Lists::Schema(&schema)).unwrap();
    let live = apply(
        &mut entries,
        &with("two"),
        &live,
        &none,
        merged,
        false,
        &Set::default(),
    )
    .unwrap();
    assert_eq!(live["spec"]["rules"], json!([{"name": "a", "port": 1}]));
}
