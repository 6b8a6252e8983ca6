//! Kubernetes' strategic merge patch and the merge behind server-side apply:
//! both merge lists by the strategy of the field that holds them.

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

use super::PatchError;

/// Applies a Kubernetes strategic merge patch
/// (`application/strategic-merge-patch+json`) to the object `target`.
///
/// Maps merge recursively and `null` deletes a key. Lists merge as the
/// path-based table in `list_strategy` says: by merge key (patch items merge
/// into the live item with the same key, new ones are appended), as a set of
/// primitives, or replaced. Directives: `$patch: replace|delete` in a map, `$patch: delete`
/// and `$patch: replace` items in a keyed list, `$retainKeys`,
/// `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>`.
///
/// Order of a merged list: the items named by `$setElementOrder/<field>`
/// (else by the patch list) come in that order; every other live item goes
/// just before the earliest of them, in that order, that followed it in the
/// live list (a named item new to the list counts as following every live
/// item); items that are neither named nor live go last.
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let target = target
        .as_object()
        .ok_or(PatchError::NotAnObject("the object being patched"))?;
    let patch = patch
        .as_object()
        .ok_or(PatchError::NotAnObject("a strategic merge patch"))?;
    let cx = Cx {
        mode: Mode::Strategic,
        lists: Lists::Builtin,
    };
    merge_map(cx, Some(target), patch, &mut Vec::new()).map(Value::Object)
}

/// Server-side apply with create-or-update semantics: merges the applied
/// configuration (the `application/apply-patch+yaml` body, parsed) into
/// `live`, which is `Value::Null` when the object does not exist yet.
///
/// Maps merge recursively, so fields the server set (status, uid,
/// resourceVersion, ...) survive. Lists with a merge key merge by key: applied
/// items merge into the live item with the same key, keep its other fields,
/// and live-only items stay. Other lists and scalars are replaced.
/// `metadata.finalizers` is a set union. Unlike a strategic merge, `$` keys
/// are plain fields, and `null` means "not specified" (manifests often carry
/// `creationTimestamp: null`), so it never deletes anything.
///
/// This merge only adds and changes; removing what a manager stopped
/// applying needs the ownership record, which [`crate::fields::apply`]
/// keeps.
pub fn apply_merge(live: &Value, applied: &Value) -> Result<Value, PatchError> {
    apply_merge_with(live, applied, Lists::Builtin)
}

/// [`apply_merge`] with the lists classified by `lists`, the schema of a
/// custom resource for instance.
pub fn apply_merge_with(live: &Value, applied: &Value, lists: Lists) -> Result<Value, PatchError> {
    let applied = applied
        .as_object()
        .ok_or(PatchError::NotAnObject("an applied configuration"))?;
    let cx = Cx {
        mode: Mode::Apply,
        lists,
    };
    merge_map(cx, live.as_object(), applied, &mut Vec::new()).map(Value::Object)
}

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy<'s> {
    /// The patch list replaces the live one.
    Replace,
    /// Objects merged by the value of this field.
    MergeKey(&'s str),
    /// Primitive values merged as a set union.
    Set,
}

/// The merge strategy of the list at `path`, the object keys from the root
/// to the list with list positions left out (the ports of a container in a
/// Deployment are at `spec.template.spec.containers.ports`).
///
/// Kubernetes reads these strategies from the Go struct tags of its compiled
/// in types. This crate has no schema, so it recognises the well-known list
/// fields by their name and, where a name is ambiguous, the name of the field
/// that holds them: `ports` is keyed by `containerPort` in a container but by
/// `port` in a Service spec. Unknown lists are replaced, the Kubernetes
/// default. Extend the table here.
pub fn list_strategy(path: &[&str]) -> ListStrategy<'static> {
    use ListStrategy::{MergeKey, Replace, Set};
    let mut names = path.iter().rev().copied();
    let field = names.next().unwrap_or_default();
    let parent = names.next().unwrap_or_default();
    match (parent, field) {
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "env"
            | "resourceClaims"
            | "schedulingGates",
        ) => MergeKey("name"),
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => {
            MergeKey("containerPort")
        }
        ("spec", "ports") => MergeKey("port"),
        (_, "volumeMounts") => MergeKey("mountPath"),
        (_, "volumeDevices") => MergeKey("devicePath"),
        (_, "hostAliases") => MergeKey("ip"),
        (_, "topologySpreadConstraints") => MergeKey("topologyKey"),
        (_, "conditions") => MergeKey("type"),
        (_, "ownerReferences") => MergeKey("uid"),
        // Node status; the `addresses` of Endpoints subsets are replaced.
        ("status", "addresses") => MergeKey("type"),
        ("status", "podIPs" | "hostIPs") => MergeKey("ip"),
        ("status", "volumesAttached") => MergeKey("name"),
        ("", "webhooks") => MergeKey("name"),
        ("metadata", "finalizers") | ("spec", "podCIDRs") => Set,
        _ => Replace,
    }
}

/// Where the merge strategies of an object's lists come from.
#[derive(Debug, Clone, Copy)]
pub enum Lists<'s> {
    /// The table of built-in kinds' list fields ([`list_strategy`]).
    Builtin,
    /// A custom resource's structural schema (`openAPIV3Schema`): lists
    /// are merged as its `x-kubernetes-list-type` says (`map` by its one
    /// `x-kubernetes-list-map-keys` key, `set`), and otherwise atomic, as
    /// upstream treats them. `metadata` keeps the built-in table.
    Schema(&'s Value),
}

impl<'s> Lists<'s> {
    /// The merge strategy of the list at `path` (object keys from the
    /// root, list positions left out).
    pub fn strategy(&self, path: &[&str]) -> ListStrategy<'s> {
        let root = match self {
            Lists::Builtin => return list_strategy(path),
            Lists::Schema(_) if path.first() == Some(&"metadata") => return list_strategy(path),
            Lists::Schema(root) => *root,
        };
        let mut node = root;
        for name in path {
            // The path leaves list positions out: step into items.
            while node.get("type").and_then(Value::as_str) == Some("array") {
                match node.get("items") {
                    Some(items) => node = items,
                    None => return ListStrategy::Replace,
                }
            }
            node = match node.get("properties").and_then(|p| p.get(*name)) {
                Some(field) => field,
                None => match node.get("additionalProperties") {
                    Some(values) if values.is_object() => values,
                    _ => return ListStrategy::Replace,
                },
            };
        }
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListStrategy::Set,
            Some("map") => match node
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                Some([key]) => key
                    .as_str()
                    .map_or(ListStrategy::Replace, ListStrategy::MergeKey),
                _ => ListStrategy::Replace,
            },
            _ => ListStrategy::Replace,
        }
    }
}

/// How a merge runs: its kind and where its list strategies come from.
#[derive(Debug, Clone, Copy)]
struct Cx<'s> {
    mode: Mode,
    lists: Lists<'s>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Strategic merge patch: directives are interpreted, `null` deletes.
    Strategic,
    /// Server-side apply: no directives, `null` is ignored, keyed lists that
    /// cannot be merged by key are replaced instead of refused.
    Apply,
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

fn is_directive(key: &str) -> bool {
    key == PATCH
        || key == RETAIN_KEYS
        || key.starts_with(SET_ORDER)
        || key.starts_with(DELETE_PRIMITIVES)
}

fn strategic_error(message: String, path: &[&str]) -> PatchError {
    if path.is_empty() {
        PatchError::Strategic(message)
    } else {
        PatchError::Strategic(format!("{message} (in {})", path.join(".")))
    }
}

/// Merges the patch map into the live map (`None` when there is none, or it
/// is not a map). `path` locates the map and is restored on success.
fn merge_map<'p>(
    cx: Cx<'_>,
    live: Option<&Map<String, Value>>,
    patch: &'p Map<String, Value>,
    path: &mut Vec<&'p str>,
) -> Result<Map<String, Value>, PatchError> {
    let strategic = cx.mode == Mode::Strategic;
    let mut out = live.cloned().unwrap_or_default();
    if strategic {
        match patch.get(PATCH).map(Value::as_str) {
            None | Some(Some("merge")) => {}
            // Merging into nothing keeps exactly the patch, minus directives.
            Some(Some("replace")) => out.clear(),
            Some(Some("delete")) => return Ok(Map::new()),
            Some(other) => {
                let shown = other.unwrap_or("(not a string)");
                return Err(strategic_error(
                    format!("unknown $patch directive {shown:?}"),
                    path,
                ));
            }
        }
        if let Some(keys) = patch.get(RETAIN_KEYS) {
            let not_list =
                || strategic_error("$retainKeys must be a list of field names".into(), path);
            let keep = keys
                .as_array()
                .ok_or_else(not_list)?
                .iter()
                .map(|k| k.as_str().ok_or_else(not_list))
                .collect::<Result<HashSet<&str>, _>>()?;
            if let Some((key, _)) = patch
                .iter()
                .find(|(k, v)| !v.is_null() && !is_directive(k) && !keep.contains(k.as_str()))
            {
                let message = format!("field {key:?} is set but not listed in $retainKeys");
                return Err(strategic_error(message, path));
            }
            out.retain(|k, _| keep.contains(k.as_str()));
        }
    }
    for (key, value) in patch {
        if strategic && is_directive(key) {
            continue;
        }
        if value.is_null() {
            if strategic {
                out.remove(key);
            }
            continue;
        }
        let order = if strategic {
            patch.get(&format!("{SET_ORDER}{key}"))
        } else {
            None
        };
        path.push(key);
        let merged = merge_value(cx, out.get(key), value, order, path)?;
        path.pop();
        out.insert(key.clone(), merged);
    }
    if strategic {
        // Ordering and deletion run after the merge, as in Kubernetes, so a
        // value both added and deleted ends up deleted.
        for (key, value) in patch {
            if let Some(field) = key.strip_prefix(SET_ORDER) {
                if !value.is_array() {
                    return Err(strategic_error(format!("{key} must be a list"), path));
                }
                // Lists in the patch were ordered while they were merged.
                if patch.contains_key(field) {
                    continue;
                }
                path.push(field);
                let reordered = match out.get(field) {
                    Some(Value::Array(items))
                        if cx.lists.strategy(path) != ListStrategy::Replace =>
                    {
                        Some(merge_list(cx, Some(items), &[], Some(value), path)?)
                    }
                    _ => None,
                };
                path.pop();
                if let Some(items) = reordered {
                    out.insert(field.to_string(), Value::Array(items));
                }
            } else if let Some(field) = key.strip_prefix(DELETE_PRIMITIVES) {
                let message = || format!("{key} must be a list");
                let remove: HashSet<String> = value
                    .as_array()
                    .ok_or_else(|| strategic_error(message(), path))?
                    .iter()
                    .map(identity)
                    .collect();
                if let Some(Value::Array(items)) = out.get_mut(field) {
                    items.retain(|item| !remove.contains(&identity(item)));
                }
            }
        }
    }
    Ok(out)
}

/// Merges one patch value into the live value at `path`. A live value of a
/// different type than the patch is ignored, so the patch replaces it.
fn merge_value<'p>(
    cx: Cx<'_>,
    live: Option<&Value>,
    patch: &'p Value,
    order: Option<&'p Value>,
    path: &mut Vec<&'p str>,
) -> Result<Value, PatchError> {
    Ok(match patch {
        Value::Object(map) => {
            Value::Object(merge_map(cx, live.and_then(Value::as_object), map, path)?)
        }
        Value::Array(items) => Value::Array(merge_list(
            cx,
            live.and_then(Value::as_array),
            items,
            order,
            path,
        )?),
        scalar => scalar.clone(),
    })
}

/// Merges the patch list into the live list at `path`; `order` is the value
/// of the `$setElementOrder` directive for it, if any.
fn merge_list<'p>(
    cx: Cx<'_>,
    live: Option<&Vec<Value>>,
    patch: &'p [Value],
    order: Option<&'p Value>,
    path: &mut Vec<&'p str>,
) -> Result<Vec<Value>, PatchError> {
    let live = live.map(Vec::as_slice).unwrap_or_default();
    let order = match order {
        None => None,
        Some(Value::Array(items)) => Some(items.as_slice()),
        Some(_) => {
            let field = path.last().copied().unwrap_or_default();
            return Err(strategic_error(
                format!("{SET_ORDER}{field} must be a list"),
                path,
            ));
        }
    };
    match cx.lists.strategy(path) {
        ListStrategy::Replace => replace_list(cx, patch, path),
        ListStrategy::Set => {
            let added = replace_list(cx, patch, path)?;
            let mut seen = HashSet::new();
            let merged = live
                .iter()
                .chain(&added)
                .filter(|v| seen.insert(identity(v)))
                .cloned()
                .collect();
            let named: Vec<&Value> = order.unwrap_or(patch).iter().collect();
            Ok(reorder(merged, &named, live, None))
        }
        ListStrategy::MergeKey(key) => merge_keyed(cx, live, patch, key, order, path),
    }
}

/// A replaced list: the patch items, minus directive items, with directives
/// stripped from the objects in them.
fn replace_list<'p>(
    cx: Cx<'_>,
    patch: &'p [Value],
    path: &mut Vec<&'p str>,
) -> Result<Vec<Value>, PatchError> {
    let mut out = Vec::with_capacity(patch.len());
    for item in patch {
        if cx.mode == Mode::Strategic && item.get(PATCH).is_some() {
            continue;
        }
        out.push(merge_value(cx, None, item, None, path)?);
    }
    Ok(out)
}

fn merge_keyed<'p>(
    cx: Cx<'_>,
    live: &[Value],
    patch: &'p [Value],
    key: &str,
    order: Option<&'p [Value]>,
    path: &mut Vec<&'p str>,
) -> Result<Vec<Value>, PatchError> {
    let strategic = cx.mode == Mode::Strategic;
    let mut items: Vec<(&Value, &Map<String, Value>)> = Vec::new();
    let mut deleted = HashSet::new();
    let mut replace = false;
    for item in patch {
        let directive = item.get(PATCH).filter(|_| strategic).map(Value::as_str);
        // `{"$patch": "replace"}` needs no merge key: it drops the live list.
        if directive == Some(Some("replace")) {
            replace = true;
            continue;
        }
        let (Some(object), Some(id)) = (item.as_object(), item.get(key)) else {
            // An apply whose items lack the key cannot merge them by it:
            // the list is treated as atomic, which is what such a list is.
            if !strategic {
                return replace_list(cx, patch, path);
            }
            let message =
                format!("every item of this list must be an object with the merge key {key:?}");
            return Err(strategic_error(message, path));
        };
        match directive {
            None => items.push((id, object)),
            Some(Some("delete")) => {
                deleted.insert(identity(id));
            }
            Some(other) => {
                let shown = other.unwrap_or("(not a string)");
                return Err(strategic_error(
                    format!("unsupported $patch directive {shown:?} in a list"),
                    path,
                ));
            }
        }
    }
    if replace {
        let mut out = Vec::with_capacity(items.len());
        for (_, object) in items {
            out.push(Value::Object(merge_map(cx, None, object, path)?));
        }
        return Ok(out);
    }
    let mut merged: Vec<Value> = live
        .iter()
        .filter(|item| {
            !item
                .get(key)
                .is_some_and(|id| deleted.contains(&identity(id)))
        })
        .cloned()
        .collect();
    let mut positions: HashMap<String, usize> = HashMap::new();
    for (i, item) in merged.iter().enumerate() {
        if let Some(id) = item.get(key) {
            positions.entry(identity(id)).or_insert(i);
        }
    }
    for (id, object) in &items {
        match positions
            .get(&identity(id))
            .and_then(|&i| merged.get_mut(i))
        {
            Some(slot) => *slot = Value::Object(merge_map(cx, slot.as_object(), object, path)?),
            None => {
                positions.insert(identity(id), merged.len());
                merged.push(Value::Object(merge_map(cx, None, object, path)?));
            }
        }
    }
    let named: Vec<&Value> = match order {
        Some(entries) => entries
            .iter()
            .map(|entry| {
                entry.get(key).ok_or_else(|| {
                    let field = path.last().copied().unwrap_or_default();
                    let message =
                        format!("every item of {SET_ORDER}{field} must be an object with {key:?}");
                    strategic_error(message, path)
                })
            })
            .collect::<Result<_, _>>()?,
        None => items.iter().map(|(id, _)| *id).collect(),
    };
    Ok(reorder(merged, &named, live, Some(key)))
}

/// A hashable stand-in for a value, so that list operations stay linear on
/// large untrusted lists. Equal scalars give equal strings.
fn identity(value: &Value) -> String {
    value.to_string()
}

/// The identity of a list item: its merge key value, or the item itself.
fn item_id<'a>(item: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match key {
        Some(key) => item.get(key),
        None => Some(item),
    }
}

/// Orders a merged list: the items whose identity is in `named` come in that
/// order; each other item that is in the live list goes right before the
/// earliest named item, in the new order, that came after it in the live list
/// (or is not in it); the rest go last. Kubernetes interleaves the same way,
/// except that it puts unnamed live items after named items new to the list.
fn reorder(merged: Vec<Value>, named: &[&Value], live: &[Value], key: Option<&str>) -> Vec<Value> {
    // Positions are recorded back to front so that the first duplicate wins.
    let named_at: HashMap<String, usize> = named
        .iter()
        .enumerate()
        .rev()
        .map(|(i, v)| (identity(v), i))
        .collect();
    let live_at: HashMap<String, usize> = live
        .iter()
        .enumerate()
        .rev()
        .filter_map(|(i, item)| item_id(item, key).map(|id| (identity(id), i)))
        .collect();
    let position = |at: &HashMap<String, usize>, item: &Value| {
        item_id(item, key).and_then(|id| at.get(&identity(id)).copied())
    };
    let (mut listed, others): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|item| position(&named_at, item).is_some());
    listed.sort_by_cached_key(|item| position(&named_at, item));
    let mut out = Vec::with_capacity(listed.len() + others.len());
    let mut listed = listed.into_iter().peekable();
    let mut others = others.into_iter().peekable();
    while let (Some(other), Some(next)) = (others.peek(), listed.peek()) {
        let other_first = match (position(&live_at, other), position(&live_at, next)) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        out.extend(if other_first {
            others.next()
        } else {
            listed.next()
        });
    }
    out.extend(listed);
    out.extend(others);
    out
}
