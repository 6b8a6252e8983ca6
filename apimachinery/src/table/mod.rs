//! Server-side `meta.k8s.io/v1` Tables.
//!
//! `kubectl get` sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`
//! and prints whatever columns and cells the server returns, so the columns
//! and cell text here follow the built-in Kubernetes printers: kubectl only
//! upper-cases the column names and hides priority-1 columns unless
//! `-o wide` is given. Like the real API server we always emit the wide
//! cells and let the client choose.

mod autoscaling;
mod batch;
mod cluster;
mod events;
mod fields;
mod network;
mod pods;
mod policy;
mod rbac;
mod stateful;
mod storage;
mod time;
mod workloads;

#[cfg(test)]
mod tests;

use serde_json::{json, Map, Value};

pub use self::storage::DEFAULT_CLASS_ANNOTATION;
pub use self::time::{human_duration, parse_rfc3339};

/// What each Table row's `object` field carries, chosen by the
/// `includeObject` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No `object` field at all.
    None,
    /// A `PartialObjectMetadata` holding just the object's metadata; the
    /// Kubernetes default, which kubectl relies on for the NAMESPACE column
    /// and `--show-labels`.
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter. Absent or empty means
    /// [`IncludeObject::Metadata`]; values are case-sensitive, as in
    /// Kubernetes. The error text is meant for a 400 `Status` message.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("") {
            "" | "Metadata" => Ok(Self::Metadata),
            "None" => Ok(Self::None),
            "Object" => Ok(Self::Object),
            other => Err(format!(
                "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
            )),
        }
    }
}

/// Renders `objects` (whole stored objects of one resource) as a
/// `meta.k8s.io/v1` Table:
///
/// ```json
/// {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
///  "metadata": {"resourceVersion": "..", "continue": ".."},
///  "columnDefinitions": [{"name", "type", "format", "description", "priority"}, ..],
///  "rows": [{"cells": [..], "object": ..}, ..]}
/// ```
///
/// `resource` is the plural lower-case resource name (`"pods"`,
/// `"deployments"`, ...); unknown resources get the generic NAME/AGE table.
/// `now` is the current Unix time in seconds, used for the age columns.
/// `include` picks what each row's `object` holds. `list_meta` is the
/// list's `ListMeta` (`resourceVersion`, `continue`, `remainingItemCount`
/// are copied when present); for a single-object GET pass
/// `{"resourceVersion": <the object's>}` as Kubernetes reports it.
///
/// Never panics, whatever the objects contain: missing or mistyped fields
/// render as kubectl would show Go's zero values.
pub fn render(
    resource: &str,
    objects: &[Value],
    now: i64,
    include: IncludeObject,
    list_meta: Option<&Value>,
) -> Value {
    let printer = printer_for(resource);
    let columns: Vec<Value> = printer.columns.iter().map(|c| c.to_json()).collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let row = (printer.row)(obj, now);
            debug_assert_eq!(row.cells.len(), printer.columns.len(), "{resource}");
            row.into_json(obj, include)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": table_metadata(list_meta),
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The Table's own `ListMeta`, keeping only well-formed, non-empty fields
/// (Kubernetes omits empty ones).
fn table_metadata(list_meta: Option<&Value>) -> Value {
    let mut out = Map::new();
    if let Some(meta) = list_meta.and_then(Value::as_object) {
        for key in ["resourceVersion", "continue"] {
            if let Some(s) = meta
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                out.insert(key.to_string(), s.into());
            }
        }
        if let Some(n) = meta.get("remainingItemCount").and_then(Value::as_i64) {
            out.insert("remainingItemCount".to_string(), n.into());
        }
    }
    Value::Object(out)
}

/// One `TableColumnDefinition`. All fields are serialized, even empty ones,
/// because Kubernetes does not omit them either.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

impl Column {
    /// A standard (priority 0) column of OpenAPI type `kind`.
    const fn new(name: &'static str, kind: &'static str, description: &'static str) -> Self {
        Column {
            name,
            kind,
            format: "",
            description,
            priority: 0,
        }
    }

    /// Shown only with `-o wide`.
    const fn wide(self) -> Self {
        Column {
            priority: 1,
            ..self
        }
    }

    fn to_json(self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// The NAME column every table starts with; format `name` tells clients
/// which cell identifies the object.
const NAME: Column = Column {
    format: "name",
    ..Column::new(
        "Name",
        "string",
        "The object's name, unique among objects of its kind in the same namespace (or cluster-wide for cluster-scoped kinds). Clients use it to address the object.",
    )
};

/// How long ago the object was created.
const AGE: Column = Column::new(
    "Age",
    "string",
    "Time elapsed since the object was created (metadata.creationTimestamp).",
);

/// Wide column listing a pod template's container names.
const CONTAINERS: Column = Column::new(
    "Containers",
    "string",
    "Names of the containers in the pod template.",
)
.wide();

/// Wide column listing a pod template's container images.
const IMAGES: Column = Column::new(
    "Images",
    "string",
    "Container images used by the pod template.",
)
.wide();

/// One rendered row before it is wrapped into JSON.
pub(crate) struct Row {
    cells: Vec<Value>,
    /// `TableRowCondition`s; only pods set them (Completed for finished pods).
    conditions: Option<Value>,
}

impl Row {
    fn new(cells: Vec<Value>) -> Self {
        Row {
            cells,
            conditions: None,
        }
    }

    fn into_json(self, obj: &Value, include: IncludeObject) -> Value {
        let mut row = Map::new();
        row.insert("cells".to_string(), Value::Array(self.cells));
        if let Some(conditions) = self.conditions {
            row.insert("conditions".to_string(), conditions);
        }
        let object = match include {
            IncludeObject::None => None,
            IncludeObject::Metadata => {
                let metadata = obj
                    .get("metadata")
                    .filter(|m| m.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                Some(json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                }))
            }
            IncludeObject::Object => Some(obj.clone()),
        };
        if let Some(object) = object {
            row.insert("object".to_string(), object);
        }
        Value::Object(row)
    }
}

/// Builds one object's row from the object and the current Unix time.
type RowFn = fn(&Value, i64) -> Row;

/// Columns plus the function producing one row's cells (one per column).
struct Printer {
    columns: &'static [Column],
    row: RowFn,
}

fn printer_for(resource: &str) -> Printer {
    let (columns, row): (&'static [Column], RowFn) = match resource.to_ascii_lowercase().as_str() {
        "pods" => (pods::COLUMNS, pods::row),
        "nodes" => (cluster::NODE_COLUMNS, cluster::node_row),
        "services" => (network::SERVICE_COLUMNS, network::service_row),
        "endpoints" => (network::ENDPOINTS_COLUMNS, network::endpoints_row),
        "endpointslices" => (network::SLICE_COLUMNS, network::slice_row),
        "networkpolicies" => (policy::NETWORK_POLICY_COLUMNS, policy::network_policy_row),
        "deployments" => (workloads::DEPLOYMENT_COLUMNS, workloads::deployment_row),
        "replicasets" => (workloads::REPLICASET_COLUMNS, workloads::replicaset_row),
        "replicationcontrollers" => (workloads::RC_COLUMNS, workloads::rc_row),
        "jobs" => (batch::JOB_COLUMNS, batch::job_row),
        "cronjobs" => (batch::CRONJOB_COLUMNS, batch::cronjob_row),
        "horizontalpodautoscalers" => (autoscaling::HPA_COLUMNS, autoscaling::hpa_row),
        "daemonsets" => (batch::DAEMONSET_COLUMNS, batch::daemonset_row),
        "statefulsets" => (stateful::STATEFULSET_COLUMNS, stateful::statefulset_row),
        "persistentvolumes" => (storage::PV_COLUMNS, storage::pv_row),
        "persistentvolumeclaims" => (storage::PVC_COLUMNS, storage::pvc_row),
        "storageclasses" => (storage::STORAGE_CLASS_COLUMNS, storage::storage_class_row),
        "controllerrevisions" => (workloads::REVISION_COLUMNS, workloads::revision_row),
        "events" => (events::COLUMNS, events::row),
        "namespaces" => (cluster::NAMESPACE_COLUMNS, cluster::namespace_row),
        "configmaps" => (cluster::CONFIGMAP_COLUMNS, cluster::configmap_row),
        "secrets" => (cluster::SECRET_COLUMNS, cluster::secret_row),
        "leases" => (cluster::LEASE_COLUMNS, cluster::lease_row),
        "componentstatuses" => (cluster::COMPONENT_COLUMNS, cluster::component_row),
        "roles" | "clusterroles" => (rbac::ROLE_COLUMNS, rbac::role_row),
        "rolebindings" | "clusterrolebindings" => (rbac::BINDING_COLUMNS, rbac::binding_row),
        _ => (GENERIC_COLUMNS, generic_row),
    };
    Printer { columns, row }
}

/// NAME and AGE: what any resource without a dedicated printer gets.
const GENERIC_COLUMNS: &[Column] = &[NAME, AGE];

fn generic_row(obj: &Value, now: i64) -> Row {
    Row::new(vec![fields::name(obj), fields::age(obj, now)])
}
