//! Field ownership for server-side apply: sets of field paths in the
//! `FieldsV1` form that `metadata.managedFields` carries, the managers'
//! entries, and the apply and update steps that move ownership between them.
//!
//! A path element is written as in `FieldsV1`: `f:name` for a map key,
//! `k:{"name":"web"}` for the item of a keyed list, `v:"x"` for a member of a
//! list of primitives. A [`Set`] is a tree of them; a node is *owned* when it
//! is a leaf or carries the `.` marker (a keyed list item owns itself as well
//! as its fields, so dropping it from an applied configuration removes it).
//!
//! Lists are classified as the apply merge classifies them
//! ([`crate::patch::Lists`]: the built-in table, or a custom resource's
//! schema): keyed lists have items, lists of primitives merged as sets have
//! values, every other list is atomic and owned as one field.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::patch::{ListStrategy, Lists};

#[cfg(test)]
mod tests;

/// A set of field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    own: bool,
    children: BTreeMap<String, Set>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.own && self.children.is_empty()
    }

    /// Every field of `value` (an object), as the manager that wrote all of
    /// it would own them. `null`s are left out: in an applied configuration
    /// they mean "not specified".
    pub fn of(value: &Value) -> Set {
        Set::of_with(value, Lists::Builtin)
    }

    /// [`Set::of`] with the lists classified by `lists`.
    pub fn of_with(value: &Value, lists: Lists) -> Set {
        let mut set = Set::default();
        if let Some(map) = value.as_object() {
            set.add_map(map, &mut Vec::new(), lists);
        }
        set
    }

    fn add_map(&mut self, map: &Map<String, Value>, path: &mut Vec<String>, lists: Lists) {
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            let child = self.children.entry(format!("f:{key}")).or_default();
            path.push(key.clone());
            child.add_value(value, path, lists);
            path.pop();
        }
    }

    fn add_value(&mut self, value: &Value, path: &mut Vec<String>, lists: Lists) {
        match value {
            Value::Object(map) if !map.is_empty() => self.add_map(map, path, lists),
            Value::Array(items) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                match lists.strategy(&names) {
                    ListStrategy::MergeKey(key)
                        if items.iter().all(|i| item_key(i, key).is_some()) =>
                    {
                        for item in items {
                            let Some(element) = item_key(item, key) else {
                                continue;
                            };
                            let child = self.children.entry(element).or_default();
                            child.own = true;
                            if let Some(map) = item.as_object() {
                                child.add_map(map, path, lists);
                            }
                        }
                        if items.is_empty() {
                            self.own = true;
                        }
                    }
                    ListStrategy::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                        for item in items {
                            self.children.entry(format!("v:{item}")).or_default().own = true;
                        }
                        if items.is_empty() {
                            self.own = true;
                        }
                    }
                    _ => self.own = true,
                }
            }
            _ => self.own = true,
        }
    }

    /// The set from a `fieldsV1` object. Anything that is not an object is
    /// an empty set.
    pub fn from_v1(v1: &Value) -> Set {
        let mut set = Set::default();
        if let Some(map) = v1.as_object() {
            set.own = map.is_empty();
            for (key, value) in map {
                if key == "." {
                    set.own = true;
                } else {
                    set.children.insert(key.clone(), Set::from_v1(value));
                }
            }
        }
        set
    }

    /// The `fieldsV1` object of this set.
    pub fn to_v1(&self) -> Value {
        let mut map = Map::new();
        if self.own && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (key, child) in &self.children {
            map.insert(key.clone(), child.to_v1());
        }
        Value::Object(map)
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.own |= other.own;
        for (key, child) in &other.children {
            let merged = match out.children.get(key) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(key.clone(), merged);
        }
        out
    }

    /// The paths of `self` that `other` does not have.
    pub fn difference(&self, other: &Set) -> Set {
        let mut out = Set {
            own: self.own && !other.own,
            children: BTreeMap::new(),
        };
        for (key, child) in &self.children {
            let rest = match other.children.get(key) {
                Some(theirs) => child.difference(theirs),
                None => child.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(key.clone(), rest);
            }
        }
        out
    }

    pub fn intersection(&self, other: &Set) -> Set {
        let mut out = Set {
            own: self.own && other.own,
            children: BTreeMap::new(),
        };
        for (key, child) in &self.children {
            if let Some(theirs) = other.children.get(key) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(key.clone(), both);
                }
            }
        }
        out
    }

    /// Whether the set has the path, owned or as the parent of owned ones.
    fn touches(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.touches(rest)),
        }
    }

    /// The owned paths, depth first in key order.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.own && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (key, child) in &self.children {
            prefix.push(key.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The owned paths of this set whose value differs between `old` and
    /// `new`. An owned node with fields below it (a keyed list item) counts
    /// as changed only when it appears or disappears; its fields speak for
    /// the rest.
    pub fn changed(&self, old: &Value, new: &Value) -> Set {
        let mut out = Set::default();
        for path in self.paths() {
            let node = self.node(&path);
            let (before, after) = (get(old, &path), get(new, &path));
            let differs = match node.is_some_and(|n| !n.children.is_empty()) {
                true => before.is_some() != after.is_some(),
                false => before != after,
            };
            if differs {
                out.insert(&path);
            }
        }
        out
    }

    fn node(&self, path: &[String]) -> Option<&Set> {
        match path.split_first() {
            None => Some(self),
            Some((first, rest)) => self.children.get(first)?.node(rest),
        }
    }

    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.own = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }
}

/// Whether `path` ends at a field of a keyed list item that is part of
/// the item's key.
fn names_its_item(path: &[String]) -> bool {
    match path {
        [.., item, field] => match (parse_key(item), field.strip_prefix("f:")) {
            (Some(key), Some(name)) => key.contains_key(name),
            _ => false,
        },
        _ => false,
    }
}

/// The element for a keyed list item, `k:{"<key>":<value>}`.
fn item_key(item: &Value, key: &str) -> Option<String> {
    let value = item.get(key).filter(|v| !v.is_null())?;
    let mut element = String::from("k:{");
    let _ = write!(element, "{}:{value}", Value::String(key.to_string()));
    element.push('}');
    Some(element)
}

/// Parses a `k:` element into its field names and values.
fn parse_key(element: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(element.strip_prefix("k:")?) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn matches_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

/// The value at `path` in `value`, if there is one.
pub fn get<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    let found = if let Some(name) = first.strip_prefix("f:") {
        value.as_object()?.get(name).filter(|v| !v.is_null())?
    } else if first.starts_with("k:") {
        let key = parse_key(first)?;
        value.as_array()?.iter().find(|i| matches_key(i, &key))?
    } else if let Some(literal) = first.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(literal).ok()?;
        value.as_array()?.iter().find(|i| **i == wanted)?
    } else {
        return None;
    };
    get(found, rest)
}

/// Removes the field, list item or set member at `path` from `value`.
/// Missing paths are left alone.
pub fn remove(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if !rest.is_empty() {
        let next = if let Some(name) = first.strip_prefix("f:") {
            value.as_object_mut().and_then(|m| m.get_mut(name))
        } else if first.starts_with("k:") {
            let Some(key) = parse_key(first) else { return };
            value
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|i| matches_key(i, &key)))
        } else {
            None
        };
        if let Some(next) = next {
            remove(next, rest);
        }
        return;
    }
    if let Some(name) = first.strip_prefix("f:") {
        if let Some(map) = value.as_object_mut() {
            map.remove(name);
        }
    } else if first.starts_with("k:") {
        if let (Some(key), Some(items)) = (parse_key(first), value.as_array_mut()) {
            items.retain(|i| !matches_key(i, &key));
        }
    } else if let Some(literal) = first.strip_prefix("v:") {
        if let (Ok(wanted), Some(items)) =
            (serde_json::from_str::<Value>(literal), value.as_array_mut())
        {
            items.retain(|i| *i != wanted);
        }
    }
}

/// A path as upstream prints it in conflicts:
/// `.spec.containers[name="web"].image`, `.metadata.finalizers[="x"]`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(name) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = parse_key(element) {
            let fields: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(out, "[{}]", fields.join(","));
        } else if let Some(literal) = element.strip_prefix("v:") {
            let _ = write!(out, "[={literal}]");
        } else {
            out.push_str(element);
        }
    }
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    /// Empty for the main resource.
    pub subresource: String,
    pub fields: Set,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("manager".into(), Value::String(self.manager.clone()));
        map.insert("operation".into(), Value::String(self.operation.clone()));
        map.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if !self.time.is_empty() {
            map.insert("time".into(), Value::String(self.time.clone()));
        }
        map.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        map.insert("fieldsV1".into(), self.fields.to_v1());
        if !self.subresource.is_empty() {
            map.insert(
                "subresource".into(),
                Value::String(self.subresource.clone()),
            );
        }
        Value::Object(map)
    }

    fn from_json(v: &Value) -> Entry {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            time: s("time"),
            subresource: s("subresource"),
            fields: v.get("fieldsV1").map(Set::from_v1).unwrap_or_default(),
        }
    }
}

/// The entries of `obj`'s `metadata.managedFields`.
pub fn read(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().map(Entry::from_json).collect())
        .unwrap_or_default()
}

/// Writes `entries` (those with fields) as `obj`'s `metadata.managedFields`,
/// or removes the field when none is left.
pub fn write(obj: &mut Value, entries: &[Entry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who writes, how the write is recorded, and how the object's lists are
/// keyed.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub time: &'a str,
    pub lists: Lists<'a>,
}

/// Records a non-apply write (create, update, patch) that took the object
/// from `old` to `new`, both already cut to the fields managers may own
/// (`Value::Null` for `old` on create). The writer gains the fields whose
/// value it changed, the other managers lose them, and every entry loses
/// fields that are gone from the object.
pub fn record_update(entries: &mut Vec<Entry>, writer: &Writer, old: &Value, new: &Value) {
    let present = Set::of_with(new, writer.lists);
    let everything = present.union(&Set::of_with(old, writer.lists));
    let changed = everything.changed(old, new).intersection(&present);
    for entry in entries.iter_mut() {
        entry.fields = entry.fields.difference(&changed).intersection(&present);
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.is(writer.manager, "Update", writer.subresource))
        {
            Some(mine) => {
                mine.fields = mine.fields.union(&changed);
                mine.api_version = writer.api_version.to_string();
                mine.time = writer.time.to_string();
            }
            None => entries.push(Entry {
                manager: writer.manager.to_string(),
                operation: "Update".into(),
                api_version: writer.api_version.to_string(),
                time: writer.time.to_string(),
                subresource: writer.subresource.to_string(),
                fields: changed,
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// A field that another manager owns and an apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The other entry's manager, with how it wrote (see [`conflict_message`]).
    pub manager: String,
    pub path: String,
}

/// Server-side apply of `applied` (cut to the fields managers may own) by
/// `writer` over `live` (cut the same way); `merged` is `live` with the
/// applied configuration merged in. On success returns `merged` with the
/// fields the writer applied before and no longer applies removed (unless
/// another manager also owns them), and updates `entries`. Fields owned by
/// other managers whose value the apply changes are conflicts, except
/// those in `forgiven`; when only forgiven ones are left, or with `force`,
/// they all move to the writer instead.
pub fn apply(
    entries: &mut Vec<Entry>,
    writer: &Writer,
    live: &Value,
    applied: &Value,
    mut merged: Value,
    force: bool,
    forgiven: &Set,
) -> Result<Value, Vec<Conflict>> {
    let applying = Set::of_with(applied, writer.lists);
    let changed = applying.changed(live, &merged);
    let mine = |e: &Entry| e.is(writer.manager, "Apply", writer.subresource);
    let mut conflicts = Vec::new();
    for entry in entries.iter().filter(|e| !force && !mine(e)) {
        let theirs = entry.fields.intersection(&changed).difference(forgiven);
        for path in theirs.paths() {
            conflicts.push(Conflict {
                manager: describe(entry),
                path: display(&path),
            });
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    // Forced, forgiven or nobody else's: what the apply changed is the
    // applier's alone from now on.
    for entry in entries.iter_mut().filter(|e| !mine(e)) {
        entry.fields = entry.fields.difference(&changed);
    }
    let others = entries
        .iter()
        .filter(|e| !mine(e))
        .fold(Set::default(), |acc, e| acc.union(&e.fields));
    let before = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    // A whole item goes before its fields are looked at; an item kept for
    // another owner keeps the fields that name it.
    let mut dropped = before.difference(&applying).paths();
    dropped.sort_by_key(Vec::len);
    for path in dropped {
        if !others.touches(&path) && !names_its_item(&path) {
            remove(&mut merged, &path);
        }
    }
    let present = Set::of_with(&merged, writer.lists);
    for entry in entries.iter_mut() {
        entry.fields = entry.fields.intersection(&present);
    }
    let fields = applying.intersection(&present);
    match entries.iter_mut().find(|e| mine(e)) {
        Some(entry) => {
            entry.fields = fields;
            entry.api_version = writer.api_version.to_string();
            entry.time = writer.time.to_string();
        }
        None => entries.push(Entry {
            manager: writer.manager.to_string(),
            operation: "Apply".into(),
            api_version: writer.api_version.to_string(),
            time: writer.time.to_string(),
            subresource: writer.subresource.to_string(),
            fields,
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    Ok(merged)
}

/// The fields of `earlier` (an object as some writer once wrote it) that
/// still hold the values it gave them in `live`.
pub fn still_as_written(live: &Value, earlier: &Value, lists: Lists) -> Set {
    let set = Set::of_with(earlier, lists);
    set.difference(&set.changed(earlier, live))
}

/// How a conflicting manager is named: `"kubectl-edit" using apps/v1` for
/// an update, the bare quoted name for an apply.
fn describe(entry: &Entry) -> String {
    let mut out = format!("{:?}", entry.manager);
    if !entry.subresource.is_empty() {
        let _ = write!(out, " with subresource {:?}", entry.subresource);
    }
    if entry.operation == "Update" {
        let _ = write!(out, " using {}", entry.api_version);
    }
    out
}

/// The message of the 409 an apply with conflicts gets.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager, only.path
        );
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(&c.manager).or_default().push(&c.path);
    }
    let mut lines = Vec::new();
    for (manager, paths) in by_manager {
        lines.push(format!("conflicts with {manager}:"));
        lines.extend(paths.iter().map(|p| format!("- {p}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}
