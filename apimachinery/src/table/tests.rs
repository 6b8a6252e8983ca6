//! Table-wide tests: the envelope, row objects, `includeObject` parsing,
//! invariants every resource must keep, and a property test feeding
//! arbitrary JSON to every printer.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{render, IncludeObject};

const NOW: i64 = 1_795_855_897;

/// Every resource with a dedicated printer, plus one that falls back.
const RESOURCES: &[&str] = &[
    "pods",
    "nodes",
    "services",
    "deployments",
    "replicasets",
    "replicationcontrollers",
    "jobs",
    "cronjobs",
    "horizontalpodautoscalers",
    "daemonsets",
    "statefulsets",
    "persistentvolumes",
    "persistentvolumeclaims",
    "storageclasses",
    "controllerrevisions",
    "endpoints",
    "endpointslices",
    "networkpolicies",
    "events",
    "namespaces",
    "configmaps",
    "secrets",
    "leases",
    "componentstatuses",
    "widgets",
];

fn pod() -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"},
                     "creationTimestamp": "2026-11-28T08:50:37Z", "resourceVersion": "42"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        "status": {"phase": "Running"}
    })
}

#[test]
fn include_object_parsing() {
    assert_eq!(IncludeObject::parse(None), Ok(IncludeObject::Metadata));
    assert_eq!(IncludeObject::parse(Some("")), Ok(IncludeObject::Metadata));
    assert_eq!(
        IncludeObject::parse(Some("Metadata")),
        Ok(IncludeObject::Metadata)
    );
    assert_eq!(IncludeObject::parse(Some("None")), Ok(IncludeObject::None));
    assert_eq!(
        IncludeObject::parse(Some("Object")),
        Ok(IncludeObject::Object)
    );
    assert_eq!(IncludeObject::default(), IncludeObject::Metadata);
    let err = IncludeObject::parse(Some("object")).unwrap_err();
    assert!(
        err.contains("\"object\"") && err.contains("supported values"),
        "{err}"
    );
    assert!(IncludeObject::parse(Some("All")).is_err());
}

#[test]
fn envelope_and_list_metadata() {
    let meta = json!({"resourceVersion": "1234", "continue": "tok", "remainingItemCount": 5});
    let t = render("pods", &[pod()], NOW, IncludeObject::None, Some(&meta));
    assert_eq!(t["kind"], json!("Table"));
    assert_eq!(t["apiVersion"], json!("meta.k8s.io/v1"));
    assert_eq!(t["metadata"], meta);
    assert_eq!(t["rows"].as_array().unwrap().len(), 1);
    assert!(t["rows"][0].get("object").is_none());

    let t = render("pods", &[], NOW, IncludeObject::None, None);
    assert_eq!(t["metadata"], json!({}));
    assert_eq!(t["rows"], json!([]));

    // Empty and mistyped list fields are dropped rather than echoed.
    let odd = json!({"resourceVersion": "7", "continue": "", "remainingItemCount": "x"});
    let t = render("pods", &[], NOW, IncludeObject::None, Some(&odd));
    assert_eq!(t["metadata"], json!({"resourceVersion": "7"}));
}

#[test]
fn row_objects_follow_include_policy() {
    let p = pod();
    let t = render(
        "pods",
        std::slice::from_ref(&p),
        NOW,
        IncludeObject::Metadata,
        None,
    );
    assert_eq!(
        t["rows"][0]["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": p["metadata"]})
    );
    let t = render(
        "pods",
        std::slice::from_ref(&p),
        NOW,
        IncludeObject::Object,
        None,
    );
    assert_eq!(t["rows"][0]["object"], p);
    let t = render("widgets", &[json!(42)], NOW, IncludeObject::Metadata, None);
    assert_eq!(t["rows"][0]["object"]["metadata"], json!({}));
}

#[test]
fn pod_columns() {
    let t = render("pods", &[], NOW, IncludeObject::None, None);
    let cols: Vec<(&str, &str, i64)> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["type"].as_str().unwrap(),
                c["priority"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cols,
        [
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ]
    );
}

#[test]
fn pod_table_row() {
    let t = render("pods", &[pod()], NOW, IncludeObject::None, None);
    assert_eq!(
        t["rows"][0]["cells"],
        json!(["web-1", "0/1", "Running", "0", "60s", "<none>", "<none>", "<none>", "<none>"])
    );
}

#[test]
fn generic_resources_get_name_and_age() {
    let obj = json!({"metadata": {"name": "thing", "creationTimestamp": "2026-11-28T05:51:37Z"}});
    for resource in ["widgets", "customresourcedefinitions", ""] {
        let t = render(
            resource,
            std::slice::from_ref(&obj),
            NOW,
            IncludeObject::None,
            None,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Age"]);
        assert_eq!(t["rows"][0]["cells"], json!(["thing", "3h"]));
    }
}

#[test]
fn resource_names_are_case_insensitive() {
    let t = render("Pods", &[], NOW, IncludeObject::None, None);
    assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
}

#[test]
fn every_table_has_a_described_name_column() {
    for resource in RESOURCES {
        let t = render(resource, &[], NOW, IncludeObject::None, None);
        let cols = t["columnDefinitions"].as_array().unwrap();
        let name_cols: Vec<&Value> = cols.iter().filter(|c| c["name"] == "Name").collect();
        assert_eq!(name_cols.len(), 1, "{resource}");
        assert_eq!(name_cols[0]["format"], json!("name"), "{resource}");
        for c in cols {
            let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 5, "{resource}: {c}");
            assert!(
                !c["description"].as_str().unwrap().is_empty(),
                "{resource}: {c}"
            );
            assert!(["string", "integer", "boolean"].contains(&c["type"].as_str().unwrap()));
        }
    }
}

/// Field names the printers look at, so random objects reach deep paths.
const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "status",
    "name",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "containers",
    "initContainers",
    "containerStatuses",
    "initContainerStatuses",
    "state",
    "lastState",
    "waiting",
    "running",
    "terminated",
    "reason",
    "exitCode",
    "signal",
    "ready",
    "started",
    "restartCount",
    "finishedAt",
    "conditions",
    "type",
    "phase",
    "podIPs",
    "ip",
    "podIP",
    "nodeName",
    "nominatedNodeName",
    "readinessGates",
    "conditionType",
    "restartPolicy",
    "unschedulable",
    "nodeInfo",
    "kubeletVersion",
    "osImage",
    "addresses",
    "address",
    "ports",
    "port",
    "nodePort",
    "protocol",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "externalName",
    "loadBalancer",
    "ingress",
    "hostname",
    "selector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "replicas",
    "readyReplicas",
    "updatedReplicas",
    "availableReplicas",
    "template",
    "image",
    "subsets",
    "endpoints",
    "addressType",
    "involvedObject",
    "kind",
    "fieldPath",
    "source",
    "component",
    "host",
    "message",
    "count",
    "series",
    "lastObservedTime",
    "firstTimestamp",
    "lastTimestamp",
    "eventTime",
    "data",
    "binaryData",
    "stringData",
    "holderIdentity",
    "error",
    "reportingController",
    "node-role.kubernetes.io/x",
    "kubernetes.io/role",
];

/// String values that steer printers down interesting branches.
const WORDS: &[&str] = &[
    "",
    "True",
    "False",
    "Ready",
    "Initialized",
    "PodScheduled",
    "SchedulingGated",
    "Running",
    "Succeeded",
    "Failed",
    "Completed",
    "NodeLost",
    "PodInitializing",
    "CrashLoopBackOff",
    "Always",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "InternalIP",
    "ExternalIP",
    "Healthy",
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "fd00::1",
    "10.0.0.1",
    "2026-11-28T08:51:37Z",
    "2026-11-28T08:51:37.5+02:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "not-a-time",
    "ünïcödé",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-3i64..10).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kvs| {
                Value::Object(
                    kvs.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// Objects shaped like Kubernetes objects at the top, random underneath.
fn object() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..8).prop_map(|kvs| {
            Value::Object(
                kvs.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<Map<_, _>>(),
            )
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_json_renders_for_every_resource(
        objects in prop::collection::vec(object(), 0..4),
        now in prop_oneof![Just(NOW), any::<i64>()],
        meta in prop::option::of(json_value()),
    ) {
        for resource in RESOURCES {
            for include in [IncludeObject::None, IncludeObject::Metadata, IncludeObject::Object] {
                let t = render(resource, &objects, now, include, meta.as_ref());
                let width = t["columnDefinitions"].as_array().unwrap().len();
                let rows = t["rows"].as_array().unwrap();
                prop_assert_eq!(rows.len(), objects.len());
                for row in rows {
                    let cells = row["cells"].as_array().unwrap();
                    prop_assert_eq!(cells.len(), width);
                    prop_assert!(cells.iter().all(|c| c.is_string() || c.is_i64() || c.is_u64()));
                    prop_assert_eq!(row.get("object").is_some(), include != IncludeObject::None);
                }
            }
        }
    }
}
