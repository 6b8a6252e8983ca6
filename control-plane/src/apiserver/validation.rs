//! Decoding request bodies against the Kubernetes schema, and the
//! semantic checks Kubernetes makes before anything is stored.

mod ephemeral;
pub use ephemeral::{no_ephemeral_on_create, validate_ephemeral_update};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::errors::{ApiError, ApiResult, Cause};
use super::resources::Resource;

/// The `fieldValidation` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Round-trips `value` through the typed Kubernetes struct: type errors are
/// reported with the field's path, fields the type does not know are
/// listed, and the result holds only known fields.
fn round_trip<T: DeserializeOwned + Serialize>(
    value: &Value,
) -> Result<(Value, Vec<String>), String> {
    let typed: T = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    let out = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    diff_unknown(value, &out, "", &mut unknown);
    Ok((out, unknown))
}

fn diff_unknown(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => diff_unknown(v, kv, &p, out),
                    // Nulls and empty containers may be dropped by the typed form.
                    None if v.is_null()
                        || v == &Value::Object(Map::new())
                        || v == &Value::Array(vec![]) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k.iter()).enumerate() {
                diff_unknown(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a body for `res`: schema-checks it and applies `mode` to
/// unknown fields. Returns the object (known fields only) and warnings.
pub fn decode(
    res: &Resource,
    body: &Value,
    mode: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core,
        discovery::v1 as disc, networking::v1 as net, rbac::v1 as rbac, storage::v1 as storage,
    };
    let custom = super::crd::decode(res, body);
    let result = match res.kind {
        _ if custom.is_some() => custom.unwrap_or_else(|| Ok((body.clone(), vec![]))),
        "CustomResourceDefinition" => round_trip::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(body),
        "Pod" => round_trip::<core::Pod>(body),
        "Service" => round_trip::<core::Service>(body),
        "Endpoints" => round_trip::<core::Endpoints>(body),
        "Node" => round_trip::<core::Node>(body),
        "Namespace" => round_trip::<core::Namespace>(body),
        "Event" => round_trip::<core::Event>(body),
        "ReplicationController" => round_trip::<core::ReplicationController>(body),
        "ConfigMap" => round_trip::<core::ConfigMap>(body),
        "Secret" => round_trip::<core::Secret>(body),
        "ServiceAccount" => round_trip::<core::ServiceAccount>(body),
        "Deployment" => round_trip::<apps::Deployment>(body),
        "ReplicaSet" => round_trip::<apps::ReplicaSet>(body),
        "Lease" => round_trip::<coord::Lease>(body),
        "EndpointSlice" => round_trip::<disc::EndpointSlice>(body),
        "Binding" => round_trip::<core::Binding>(body),
        "Role" => round_trip::<rbac::Role>(body),
        "ClusterRole" => round_trip::<rbac::ClusterRole>(body),
        "RoleBinding" => round_trip::<rbac::RoleBinding>(body),
        "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(body),
        "Job" => round_trip::<batch::Job>(body),
        "CronJob" => round_trip::<batch::CronJob>(body),
        "HorizontalPodAutoscaler" => round_trip::<
            k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
        >(body),
        "DaemonSet" => round_trip::<apps::DaemonSet>(body),
        "StatefulSet" => round_trip::<apps::StatefulSet>(body),
        "PersistentVolume" => round_trip::<core::PersistentVolume>(body),
        "PersistentVolumeClaim" => round_trip::<core::PersistentVolumeClaim>(body),
        "StorageClass" => round_trip::<storage::StorageClass>(body),
        "ControllerRevision" => round_trip::<apps::ControllerRevision>(body),
        "NetworkPolicy" => round_trip::<net::NetworkPolicy>(body),
        _ => Ok((body.clone(), vec![])),
    };
    let what = format!(
        "{} in version {:?} cannot be handled as a {}",
        res.kind, res.version, res.kind
    );
    let (value, unknown) = result.map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
    if unknown.is_empty() || mode == FieldValidation::Ignore {
        return Ok((value, vec![]));
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|u| format!("unknown field {u:?}"))
        .collect();
    match mode {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "{what}: strict decoding error: {}",
            listed.join(", ")
        ))),
        _ => Ok((value, listed)),
    }
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Whether `s` is an RFC 1123 label (≤ 63).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an RFC 1123 subdomain (≤ 253).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A Kubernetes qualified name as label keys spell it: `[prefix/]name`,
/// the prefix a DNS subdomain, the name at most 63 alphanumerics, `-`,
/// `_` or `.`, starting and ending alphanumeric.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && label_value_ok(name) && !name.is_empty()
}

fn label_value_ok(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Names of these resources must be DNS labels, not subdomains.
fn name_is_label(res: &Resource) -> bool {
    matches!(
        res.plural,
        "namespaces"
            | "services"
            | "replicationcontrollers"
            | "deployments"
            | "replicasets"
            | "daemonsets"
            | "statefulsets"
    )
}

/// Semantic validation of an object about to be stored (422 on failure).
pub fn validate(res: &Resource, obj: &Value) -> ApiResult<()> {
    let mut causes = Vec::new();
    let name = str_at(obj, &["metadata", "name"]).unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if res.group == "rbac.authorization.k8s.io" {
        // RBAC names only have to fit in a path: `system:discovery`.
        if let Some(msg) = super::authz::rbac::path_segment_problem(name) {
            causes.push(Cause::invalid("metadata.name", &Value::from(name), msg));
        }
    } else if name_is_label(res) && !is_dns_label(name) {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::from(name),
            DNS1123_LABEL_MSG,
        ));
    } else if !name_is_label(res) && !is_dns_subdomain(name) {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::from(name),
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
    validate_labels(obj.get("metadata"), "metadata", &mut causes);
    if !super::resources::is_builtin(res) {
        return match causes.is_empty() {
            true => super::crd::validate(res, obj),
            false => Err(ApiError::invalid(res.kind, res.group, name, causes)),
        };
    }
    match res.kind {
        "CustomResourceDefinition" => super::crd::validate_definition(obj, &mut causes),
        "Pod" => {
            if let Some(spec) = obj.get("spec") {
                validate_pod_spec(spec, "spec", &mut causes);
            } else {
                causes.push(Cause::required("spec.containers"));
            }
        }
        "Service" => validate_service(obj, &mut causes),
        "Deployment" | "ReplicaSet" | "ReplicationController" => {
            validate_workload(res, obj, &mut causes)
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            super::authz::rbac::validate(res.kind, obj, &mut causes)
        }
        "Job" => super::workloads::validate_job(obj, &mut causes),
        "CronJob" => super::cronjobs::validate(obj, &mut causes),
        "HorizontalPodAutoscaler" => super::autoscaling::validate(obj, &mut causes),
        "DaemonSet" => super::workloads::validate_daemonset(obj, &mut causes),
        "StatefulSet" => super::statefulsets::validate(obj, &mut causes),
        "PersistentVolume" => super::volumes::validate_pv(obj, &mut causes),
        "PersistentVolumeClaim" => super::volumes::validate_pvc(obj, &mut causes),
        "StorageClass" => super::volumes::validate_storage_class(obj, &mut causes),
        "ControllerRevision" => super::workloads::validate_revision(obj, &mut causes),
        "NetworkPolicy" => super::networkpolicies::validate(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.kind, res.group, name, causes))
    }
}

fn validate_labels(meta: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(labels) = meta
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
    else {
        return;
    };
    for (k, v) in labels {
        if !is_qualified_name(k) {
            causes.push(Cause::invalid(
                format!("{path}.labels"),
                &Value::from(k.as_str()),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        if !v.as_str().is_some_and(label_value_ok) {
            causes.push(Cause::invalid(
                format!("{path}.labels"),
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
}

pub(super) fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{path}.containers"))),
        Some(c) if c.is_empty() => causes.push(Cause::required(format!("{path}.containers"))),
        Some(_) => {}
    }
    let mut seen = std::collections::HashSet::new();
    // Names are unique across every kind of container, ephemeral ones too.
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let p = format!("{path}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{p}.name"))),
                Some(n) if !is_dns_label(n) => causes.push(Cause::invalid(
                    format!("{p}.name"),
                    &Value::from(n),
                    DNS1123_LABEL_MSG,
                )),
                Some(n) => {
                    if !seen.insert(n.to_string()) {
                        causes.push(Cause::duplicate(format!("{p}.name"), &Value::from(n)));
                    }
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                causes.push(Cause::required(format!("{p}.image")));
            }
            for (j, port) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let n = port
                    .get("containerPort")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    causes.push(Cause::invalid(
                        format!("{p}.ports[{j}].containerPort"),
                        &Value::from(n),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy") {
        if !matches!(rp.as_str(), Some("Always" | "OnFailure" | "Never")) {
            causes.push(Cause::not_supported(
                format!("{path}.restartPolicy"),
                rp,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::not_supported(
            "spec.type",
            &Value::from(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    for field in ["externalTrafficPolicy", "internalTrafficPolicy"] {
        if let Some(policy) = spec.get(field) {
            if !matches!(policy.as_str(), Some("Cluster" | "Local")) {
                causes.push(Cause::not_supported(
                    format!("spec.{field}"),
                    policy,
                    &["Cluster", "Local"],
                ));
            }
        }
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    let mut names = std::collections::HashSet::new();
    // One port (and one NodePort) per protocol: two entries for the same
    // one would ask the datapath and the claims for it twice.
    let mut pairs = std::collections::HashSet::new();
    let mut node_ports = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !pairs.insert((port, protocol.to_string())) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{i}]"),
                &serde_json::json!({"port": port, "protocol": protocol}),
            ));
        }
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &Value::from(port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = p.get("protocol") {
            if !matches!(proto.as_str(), Some("TCP" | "UDP" | "SCTP")) {
                causes.push(Cause::not_supported(
                    format!("spec.ports[{i}].protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{i}].name"),
                &Value::from(name),
            ));
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if np != 0 && !(30000..=32767).contains(&np) {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}].nodePort"),
                    &Value::from(np),
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
            if np != 0 && !node_ports.insert((np, protocol.to_string())) {
                causes.push(Cause::duplicate(
                    format!("spec.ports[{i}].nodePort"),
                    &Value::from(np),
                ));
            }
        }
    }
}

fn validate_workload(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid(
                "spec.replicas",
                &Value::from(r),
                "must be greater than or equal to 0",
            ));
        }
    }
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let selector = spec.get("selector");
    let selector_ok = match (res.kind, selector) {
        ("ReplicationController", Some(Value::Object(m))) => {
            !m.is_empty() && m.iter().all(|(k, v)| template_labels.get(k) == Some(v))
        }
        ("ReplicationController", _) => true,
        (_, Some(sel)) => {
            let ml = sel.get("matchLabels").and_then(Value::as_object);
            let me = sel.get("matchExpressions").and_then(Value::as_array);
            if ml.is_none_or(|m| m.is_empty()) && me.is_none_or(|m| m.is_empty()) {
                causes.push(Cause::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
                true
            } else {
                apimachinery::selectors::LabelSelector::from_json(sel)
                    .map(|s| s.matches(Some(&template_labels)))
                    .unwrap_or(false)
            }
        }
        (_, None) => {
            causes.push(Cause::required("spec.selector"));
            true
        }
    };
    if !selector_ok {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &Value::Object(template_labels.clone()),
            "`selector` does not match template `labels`",
        ));
    }
    match spec.pointer("/template/spec") {
        Some(ps) => validate_pod_spec(ps, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
    if let Some(strategy) = spec.pointer("/strategy/type") {
        if !matches!(strategy.as_str(), Some("RollingUpdate" | "Recreate")) {
            causes.push(Cause::not_supported(
                "spec.strategy.type",
                strategy,
                &["Recreate", "RollingUpdate"],
            ));
        }
    }
}
