//! `metadata.managedFields` on every write, and server-side apply's
//! conflicts: which manager wrote what, from the request's `fieldManager`
//! (or its user agent) and the fields its write changed.

use std::sync::Arc;

use apimachinery::patch::Lists;
use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult, Cause};
use super::handlers::now_rfc3339;
use super::request::{Query, Target};
use apimachinery::fields::{self, Entry, Writer};

/// The query key under which the API server passes the user agent's
/// product (`kubectl` of `kubectl/v1.32.4 (linux/amd64) ...`) to the
/// handlers, as the manager of writes that name none.
pub const AGENT_MANAGER: &str = "\u{0}userAgent";

/// Metadata fields the server owns, left out of every manager's set.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// How the lists of a target's objects merge: by the built-in table, or by
/// a custom resource's schema.
struct ListSchema(Option<Arc<super::crd::Version>>);

impl ListSchema {
    pub fn of(target: &Target) -> Self {
        Self(super::crd::registry().version(target.res))
    }

    pub fn lists(&self) -> Lists<'_> {
        static NONE: Value = Value::Null;
        match &self.0 {
            None => Lists::Builtin,
            Some(version) => Lists::Schema(version.schema.as_ref().unwrap_or(&NONE)),
        }
    }
}

/// The applied configuration `applied` merged into `live` (`Value::Null`
/// for none), lists keyed as `target`'s kind keys them.
pub fn merge(
    target: &Target,
    live: &Value,
    applied: &Value,
) -> Result<Value, apimachinery::patch::PatchError> {
    apimachinery::patch::apply_merge_with(live, applied, ListSchema::of(target).lists())
}

/// The product of a `User-Agent` header, the default manager's name.
pub fn agent_product(user_agent: &str) -> String {
    user_agent
        .split('/')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The manager a write is recorded under: `fieldManager`, else the user
/// agent's product. Refused as upstream does when it is not a short
/// printable name.
fn manager(query: &Query) -> ApiResult<String> {
    if let Some(name) = query.get("fieldManager") {
        if name.len() > 128 {
            return Err(options_invalid(Cause::invalid(
                "fieldManager",
                &json!(name),
                "must have at most 128 bytes",
            )));
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(options_invalid(Cause::invalid(
                "fieldManager",
                &json!(name),
                "must only contain printable characters",
            )));
        }
        if !name.is_empty() {
            return Ok(name.to_string());
        }
    }
    let agent: String = query
        .get(AGENT_MANAGER)
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect();
    Ok(if agent.is_empty() {
        "unknown".to_string()
    } else {
        agent
    })
}

fn options_invalid(cause: Cause) -> ApiError {
    ApiError::invalid("PatchOptions", "meta.k8s.io", "", vec![cause])
}

/// `force` belongs to apply alone; apply needs a named manager.
pub fn check_options(query: &Query, apply: bool) -> ApiResult<()> {
    if query.get("force").is_some() && !apply {
        return Err(options_invalid(Cause::forbidden(
            "force",
            "may not be specified for non-apply patch",
        )));
    }
    if apply && query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(options_invalid(Cause::required_msg(
            "fieldManager",
            "is required for apply patch",
        )));
    }
    Ok(())
}

/// The part of `obj` that managers own for a write to `target`: no type or
/// server-set metadata, and only the status (for /status) or everything
/// but the status (for kinds whose status is a subresource).
fn scope(target: &Target, obj: &Value) -> Value {
    let mut cut = obj.clone();
    let Some(map) = cut.as_object_mut() else {
        return Value::Null;
    };
    if target.sub.as_deref() == Some("status") {
        map.retain(|k, _| k == "status");
        return cut;
    }
    map.remove("apiVersion");
    map.remove("kind");
    if target.res.has_status() {
        map.remove("status");
    }
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            meta.remove(*field);
        }
    }
    cut
}

/// The fields `kubectl apply` (client-side) last set and nobody changed
/// since, from its last-applied annotation. kubectl's server-side apply
/// may take these over without a conflict, as upstream lets it, so that
/// moving a manifest from one to the other needs no `--force-conflicts`.
fn client_side_applied(target: &Target, live: &Value, lists: Lists) -> fields::Set {
    let Some(text) = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get("kubectl.kubernetes.io/last-applied-configuration"))
        .and_then(Value::as_str)
    else {
        return fields::Set::default();
    };
    match serde_json::from_str::<Value>(text) {
        Ok(last) => fields::still_as_written(live, &scope(target, &last), lists),
        Err(_) => fields::Set::default(),
    }
}

fn subresource(target: &Target) -> &str {
    target.sub.as_deref().unwrap_or_default()
}

/// The entries a write starts from: the client's when it sent its own
/// (`[{}]` clears them all, and the write is then not recorded either),
/// else the stored object's.
fn starting_entries(old: &Value, new: &Value) -> Option<Vec<Entry>> {
    let sent = new.pointer("/metadata/managedFields");
    let stored = old.pointer("/metadata/managedFields");
    match sent.and_then(Value::as_array) {
        Some(list) if !list.is_empty() && list.iter().all(|e| e == &json!({})) => None,
        Some(list) if !list.is_empty() && sent != stored => Some(fields::read(new)),
        _ => Some(fields::read(old)),
    }
}

/// Who writes to `target`, when, and how its lists are keyed: what a
/// [`Writer`] borrows.
struct Write {
    manager: String,
    api_version: String,
    subresource: String,
    time: String,
    schema: ListSchema,
}

impl Write {
    fn of(target: &Target, query: &Query) -> ApiResult<Self> {
        Ok(Self {
            manager: manager(query)?,
            api_version: target.res.api_version(),
            subresource: subresource(target).to_string(),
            time: now_rfc3339(),
            schema: ListSchema::of(target),
        })
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            manager: &self.manager,
            api_version: &self.api_version,
            subresource: &self.subresource,
            time: &self.time,
            lists: self.schema.lists(),
        }
    }
}

/// Records a create, an update or a non-apply patch of `target` that takes
/// the object from `old` (`Value::Null` on create) to `new`.
pub fn on_update(target: &Target, query: &Query, old: &Value, new: &mut Value) -> ApiResult<()> {
    let write = Write::of(target, query)?;
    let Some(mut entries) = starting_entries(old, new) else {
        fields::write(new, &[]);
        return Ok(());
    };
    let writer = write.writer();
    fields::record_update(
        &mut entries,
        &writer,
        &scope(target, old),
        &scope(target, new),
    );
    fields::write(new, &entries);
    Ok(())
}

/// Server-side apply of `applied` to `live` (`Value::Null` when the apply
/// creates the object), with `merged` the result of merging them. Returns
/// the object to store, with the fields the manager stopped applying
/// removed and its managedFields recorded, or the 409 for conflicts.
pub fn apply(
    target: &Target,
    query: &Query,
    live: &Value,
    applied: &Value,
    merged: Value,
) -> ApiResult<Value> {
    let write = Write::of(target, query)?;
    let force = query.flag("force");
    let mut entries = fields::read(live);
    let writer = write.writer();
    let applied = scope(target, applied);
    let forgiven = match writer.manager {
        "kubectl" => client_side_applied(target, live, writer.lists),
        _ => fields::Set::default(),
    };
    match fields::apply(
        &mut entries,
        &writer,
        live,
        &applied,
        merged,
        force,
        &forgiven,
    ) {
        Ok(mut out) => {
            fields::write(&mut out, &entries);
            Ok(out)
        }
        Err(conflicts) => {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| {
                    json!({
                        "type": "FieldManagerConflict",
                        "message": format!("conflict with {}", c.manager),
                        "field": c.path,
                    })
                })
                .collect();
            Err(
                ApiError::new(409, "Conflict", fields::conflict_message(&conflicts))
                    .with_details(json!({ "causes": causes })),
            )
        }
    }
}
