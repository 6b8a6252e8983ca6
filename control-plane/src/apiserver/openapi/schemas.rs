//! The component schemas of the built-in kinds, generated from the
//! k8s-openapi types (their `schemars` impls carry the upstream field
//! descriptions), plus the Kubernetes extensions those impls leave out: the
//! GroupVersionKind of each kind and the strategic-merge keys of lists.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps, authentication, authorization, autoscaling, batch, coordination, core, discovery,
    networking, rbac, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
use k8s_openapi::schemars::{self, JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Group, version and kind.
pub type Gvk = (&'static str, &'static str, &'static str);

/// Where a document's `$ref`s point before they are rewritten for v2 or v3.
pub const REF_PREFIX: &str = "#/definitions/";

/// Every definition the built-in kinds reach, by schema name, with the
/// name of each kind's own schema.
pub struct Builtin {
    pub definitions: Map<String, Value>,
    pub kinds: BTreeMap<Gvk, String>,
}

fn add<T: JsonSchema>(gen: &mut SchemaGenerator, kinds: &mut BTreeMap<Gvk, String>, gvk: Gvk) {
    gen.subschema_for::<T>();
    kinds.insert(gvk, T::schema_name().into_owned());
}

/// Generates the definitions of every kind the server serves itself, the
/// kinds of its subresources (Scale, TokenRequest, ...) and the list and
/// status types clients meet on the wire.
pub fn builtin() -> Builtin {
    let mut gen = schemars::generate::SchemaSettings::draft07()
        .with(|s| s.definitions_path = "/definitions".into())
        .into_generator();
    let mut kinds = BTreeMap::new();
    let k = &mut kinds;
    let g = &mut gen;
    add::<core::v1::Pod>(g, k, ("", "v1", "Pod"));
    add::<core::v1::Binding>(g, k, ("", "v1", "Binding"));
    add::<core::v1::Service>(g, k, ("", "v1", "Service"));
    add::<core::v1::Endpoints>(g, k, ("", "v1", "Endpoints"));
    add::<core::v1::Node>(g, k, ("", "v1", "Node"));
    add::<core::v1::Namespace>(g, k, ("", "v1", "Namespace"));
    add::<core::v1::Event>(g, k, ("", "v1", "Event"));
    add::<core::v1::ReplicationController>(g, k, ("", "v1", "ReplicationController"));
    add::<core::v1::ConfigMap>(g, k, ("", "v1", "ConfigMap"));
    add::<core::v1::Secret>(g, k, ("", "v1", "Secret"));
    add::<core::v1::ServiceAccount>(g, k, ("", "v1", "ServiceAccount"));
    add::<core::v1::ComponentStatus>(g, k, ("", "v1", "ComponentStatus"));
    add::<core::v1::PersistentVolume>(g, k, ("", "v1", "PersistentVolume"));
    add::<core::v1::PersistentVolumeClaim>(g, k, ("", "v1", "PersistentVolumeClaim"));
    add::<apps::v1::Deployment>(g, k, ("apps", "v1", "Deployment"));
    add::<apps::v1::ReplicaSet>(g, k, ("apps", "v1", "ReplicaSet"));
    add::<apps::v1::DaemonSet>(g, k, ("apps", "v1", "DaemonSet"));
    add::<apps::v1::StatefulSet>(g, k, ("apps", "v1", "StatefulSet"));
    add::<apps::v1::ControllerRevision>(g, k, ("apps", "v1", "ControllerRevision"));
    add::<batch::v1::Job>(g, k, ("batch", "v1", "Job"));
    add::<batch::v1::CronJob>(g, k, ("batch", "v1", "CronJob"));
    add::<autoscaling::v2::HorizontalPodAutoscaler>(
        g,
        k,
        ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    );
    add::<coordination::v1::Lease>(g, k, ("coordination.k8s.io", "v1", "Lease"));
    add::<discovery::v1::EndpointSlice>(g, k, ("discovery.k8s.io", "v1", "EndpointSlice"));
    const RBAC: &str = "rbac.authorization.k8s.io";
    add::<rbac::v1::ClusterRole>(g, k, (RBAC, "v1", "ClusterRole"));
    add::<rbac::v1::ClusterRoleBinding>(g, k, (RBAC, "v1", "ClusterRoleBinding"));
    add::<rbac::v1::Role>(g, k, (RBAC, "v1", "Role"));
    add::<rbac::v1::RoleBinding>(g, k, (RBAC, "v1", "RoleBinding"));
    const AUTHZ: &str = "authorization.k8s.io";
    add::<authorization::v1::SelfSubjectAccessReview>(
        g,
        k,
        (AUTHZ, "v1", "SelfSubjectAccessReview"),
    );
    add::<authorization::v1::SelfSubjectRulesReview>(g, k, (AUTHZ, "v1", "SelfSubjectRulesReview"));
    add::<authorization::v1::SubjectAccessReview>(g, k, (AUTHZ, "v1", "SubjectAccessReview"));
    add::<authorization::v1::LocalSubjectAccessReview>(
        g,
        k,
        (AUTHZ, "v1", "LocalSubjectAccessReview"),
    );
    const AUTHN: &str = "authentication.k8s.io";
    add::<authentication::v1::SelfSubjectReview>(g, k, (AUTHN, "v1", "SelfSubjectReview"));
    add::<authentication::v1::TokenRequest>(g, k, (AUTHN, "v1", "TokenRequest"));
    add::<autoscaling::v1::Scale>(g, k, ("autoscaling", "v1", "Scale"));
    add::<apiextensions::v1::CustomResourceDefinition>(
        g,
        k,
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
    );
    add::<storage::v1::StorageClass>(g, k, ("storage.k8s.io", "v1", "StorageClass"));
    add::<networking::v1::NetworkPolicy>(g, k, ("networking.k8s.io", "v1", "NetworkPolicy"));
    // Not kinds of their own, but what every write may answer or take.
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    let mut definitions = gen.take_definitions(false);
    for (gvk, name) in &kinds {
        if let Some(def) = definitions.get_mut(name) {
            mark_kind(def, *gvk);
        }
    }
    for (name, def) in definitions.iter_mut() {
        annotate(name, def);
    }
    Builtin { definitions, kinds }
}

/// Tags a kind's schema with its GroupVersionKind (how kubectl finds the
/// schema of a resource) and drops the `required: [metadata]` that the
/// Rust types add: Kubernetes lets a client leave metadata out.
pub fn mark_kind(def: &mut Value, (group, version, kind): Gvk) {
    def["x-kubernetes-group-version-kind"] =
        json!([{"group": group, "version": version, "kind": kind}]);
    if let Some(req) = def.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| r != "metadata");
        if req.is_empty() {
            def.as_object_mut().map(|o| o.remove("required"));
        }
    }
}

/// How a list property of a definition merges in a strategic merge patch,
/// as the Go struct tags of the upstream types say: the merge key (None for
/// a set of scalars) by (definition, property).
const PATCH_KEYS: &[(&str, &str, Option<&str>)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", Some("name")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        Some("name"),
    ),
    ("io.k8s.api.core.v1.PodSpec", "volumes", Some("name")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        Some("name"),
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", Some("ip")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Some("topologyKey"),
    ),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", Some("name")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        Some("name"),
    ),
    ("io.k8s.api.core.v1.Container", "env", Some("name")),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        Some("containerPort"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        Some("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        Some("devicePath"),
    ),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", Some("name")),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        Some("containerPort"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        Some("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        Some("devicePath"),
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", Some("port")),
    ("io.k8s.api.core.v1.PodStatus", "conditions", Some("type")),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", Some("ip")),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", Some("ip")),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", Some("type")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", Some("type")),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", None),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        Some("type"),
    ),
    ("io.k8s.api.batch.v1.JobStatus", "conditions", Some("type")),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Some("uid"),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        None,
    ),
];

/// Adds the patch strategy and list type of the lists in `PATCH_KEYS`.
fn annotate(name: &str, def: &mut Value) {
    for (_, prop, key) in PATCH_KEYS.iter().filter(|(d, _, _)| *d == name) {
        let Some(p) = def.pointer_mut(&format!("/properties/{prop}")) else {
            continue;
        };
        p["x-kubernetes-patch-strategy"] = json!("merge");
        match key {
            Some(key) => {
                p["x-kubernetes-patch-merge-key"] = json!(key);
                p["x-kubernetes-list-type"] = json!("map");
                p["x-kubernetes-list-map-keys"] = json!([key]);
            }
            None => p["x-kubernetes-list-type"] = json!("set"),
        }
    }
    // Upstream's format for the type; kubectl explain then names the field's
    // type after the schema (`<IntOrString>`) as it does for upstream.
    if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString" {
        def["format"] = json!("int-or-string");
    }
}

/// The names of the definitions `roots` reach through `$ref`s, roots
/// included, in sorted order.
pub fn closure(definitions: &Map<String, Value>, roots: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(def) = definitions.get(&name) {
            refs(def, &mut |r| {
                if !seen.contains(r) {
                    todo.push(r.to_string());
                }
            });
        }
    }
    seen.into_iter().collect()
}

fn refs(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => f(r.strip_prefix(REF_PREFIX).unwrap_or(r)),
                    _ => refs(v, f),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, f)),
        _ => {}
    }
}
