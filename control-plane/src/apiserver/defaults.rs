//! Defaulting, as Kubernetes fills in what a manifest leaves out.

use serde_json::{json, Map, Value};

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("just made an object")
}

/// Sets `key` to `value` unless the client gave it (null counts as not given).
pub(super) fn set_default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

/// Defaults for a pod spec (also inside templates).
pub fn pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // A tag-less or :latest image is pulled every time, like kubelet.
            let last = image.rsplit('/').next().unwrap_or("");
            let latest = !last.contains(':') || last.ends_with(":latest");
            let policy = if latest && !image.contains('@') {
                "Always"
            } else {
                "IfNotPresent"
            };
            set_default(c, "imagePullPolicy", json!(policy));
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Kubernetes' DefaultTolerationSeconds admission: a pod that does not
/// say otherwise tolerates a not-ready or unreachable node for a while
/// before the node lifecycle controller evicts it.
pub fn toleration_seconds(pod: &mut Value, not_ready: i64, unreachable: i64) {
    let spec = obj_mut(pod, "spec");
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if !tolerations.is_array() {
        return;
    }
    for (key, seconds) in [
        ("node.kubernetes.io/not-ready", not_ready),
        ("node.kubernetes.io/unreachable", unreachable),
    ] {
        let list = tolerations.as_array_mut().expect("checked above");
        let covered = list.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or("");
            let k = t["key"].as_str().unwrap_or("");
            (effect.is_empty() || effect == "NoExecute")
                && (k == key || k.is_empty() && t["operator"] == "Exists")
        });
        if !covered {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
}

fn template(spec: &mut Value) {
    if let Some(t) = spec.get_mut("template") {
        if let Some(ps) = t.get_mut("spec") {
            pod_spec(ps);
        }
    }
}

/// Applies the defaults of `kind` to a new or updated object.
pub fn apply(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
            }
        }
        "Service" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            let ty = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
        }
        "Deployment" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            if let Some(st) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                // `strategy: {}` (what kubectl create deployment sends) means
                // the default strategy.
                set_default(st, "type", json!("RollingUpdate"));
                if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            template(&mut obj["spec"]);
        }
        "ReplicaSet" => {
            set_default(obj_mut(obj, "spec"), "replicas", json!(1));
            template(&mut obj["spec"]);
        }
        "ReplicationController" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            // An RC without a selector selects its template's labels.
            let labels = spec
                .get("template")
                .and_then(|t| t.pointer("/metadata/labels"))
                .cloned();
            if spec
                .get("selector")
                .is_none_or(|s| s.as_object().is_none_or(Map::is_empty))
            {
                if let Some(l) = labels {
                    spec.insert("selector".into(), l.clone());
                }
            }
            // ...and a template without labels gets none, which validation rejects.
            template(&mut obj["spec"]);
        }
        "Job" => super::workloads::default_job(obj),
        "CronJob" => super::cronjobs::default(obj),
        "HorizontalPodAutoscaler" => super::autoscaling::default(obj),
        "DaemonSet" => super::workloads::default_daemonset(obj),
        "StatefulSet" => super::statefulsets::default(obj),
        "PersistentVolume" => super::volumes::default_pv(obj),
        "PersistentVolumeClaim" => super::volumes::default_pvc(obj),
        "StorageClass" => super::volumes::default_storage_class(obj),
        "NetworkPolicy" => super::networkpolicies::default(obj),
        "Namespace" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        "Secret" => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
            }
        }
        _ => {}
    }
}

/// The status a new object starts with (clients cannot set it on create).
pub fn initial_status(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        "Namespace" => obj["status"] = json!({"phase": "Active"}),
        "Service" => obj["status"] = json!({"loadBalancer": {}}),
        "Deployment" | "ReplicaSet" | "ReplicationController" => {
            obj["status"] = json!({"replicas": 0})
        }
        "Job" | "CronJob" => obj["status"] = json!({}),
        "HorizontalPodAutoscaler" => {
            obj["status"] = json!({"currentReplicas": 0, "desiredReplicas": 0})
        }
        "StatefulSet" => obj["status"] = json!({"replicas": 0, "availableReplicas": 0}),
        "PersistentVolume" | "PersistentVolumeClaim" => obj["status"] = json!({"phase": "Pending"}),
        "DaemonSet" => {
            obj["status"] = json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
                                   "desiredNumberScheduled": 0, "numberReady": 0})
        }
        _ => {}
    }
}

/// Guaranteed when every container has equal cpu and memory requests and
/// limits, BestEffort when none has any, Burstable otherwise.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        any |= req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty());
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(r));
            let q = req.and_then(|m| m.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        _ => "Burstable",
    }
}
