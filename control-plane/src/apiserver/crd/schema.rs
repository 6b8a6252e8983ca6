//! Structural OpenAPI v3 schemas of custom resources: pruning fields the
//! schema does not name, applying defaults, and validating values, with
//! field paths as Kubernetes writes them (`spec.items[0].name`).

use serde_json::{json, Map, Value};

use crate::apiserver::errors::Cause;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Structural-schema rules that a CRD's schema must follow: every node has
/// a type unless int-or-string or preserve-unknown-fields says otherwise,
/// and the root is an object.
pub fn check_structural(s: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    let Some(o) = s.as_object() else {
        causes.push(Cause::invalid(path, s, "must be a schema object"));
        return;
    };
    let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
    if root && ty != "object" {
        causes.push(Cause::invalid(
            join(path, "type"),
            &json!(ty),
            "must be object at the root",
        ));
    }
    let untyped_ok =
        flag(s, "x-kubernetes-int-or-string") || flag(s, "x-kubernetes-preserve-unknown-fields");
    if ty.is_empty() && !untyped_ok {
        causes.push(Cause::required(join(path, "type")));
    }
    if !ty.is_empty()
        && !matches!(
            ty,
            "object" | "array" | "string" | "integer" | "number" | "boolean"
        )
    {
        causes.push(Cause::not_supported(
            join(path, "type"),
            &json!(ty),
            &["array", "boolean", "integer", "number", "object", "string"],
        ));
    }
    if ty == "array" && o.get("items").is_none() {
        causes.push(Cause::required(join(path, "items")));
    }
    if o.contains_key("properties")
        && matches!(o.get("additionalProperties"), Some(Value::Object(_)))
    {
        causes.push(Cause::forbidden(
            join(path, "additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    if let Some(Value::Object(props)) = o.get("properties") {
        for (k, p) in props {
            check_structural(p, &format!("{path}.properties[{k}]"), false, causes);
        }
    }
    if let Some(items) = o.get("items") {
        check_structural(items, &join(path, "items"), false, causes);
    }
    if let Some(add @ Value::Object(_)) = o.get("additionalProperties") {
        check_structural(add, &join(path, "additionalProperties"), false, causes);
    }
    if let Some(p) = o.get("pattern").and_then(Value::as_str) {
        if regex::Regex::new(p).is_err() {
            causes.push(Cause::invalid(
                join(path, "pattern"),
                &json!(p),
                "must be a valid regular expression",
            ));
        }
    }
}

/// Prunes a whole object: apiVersion, kind and metadata always stay.
pub fn prune_root(obj: &mut Value, s: &Value, unknown: &mut Vec<String>) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let props = s.get("properties").and_then(Value::as_object);
    let keys: Vec<String> = o.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(ps) => {
                if let Some(v) = o.get_mut(&k) {
                    prune(v, ps, &k, unknown);
                }
            }
            None if flag(s, "x-kubernetes-preserve-unknown-fields") => {}
            None => {
                o.remove(&k);
                unknown.push(k);
            }
        }
    }
}

/// Removes the fields `s` does not describe, listing their paths.
fn prune(v: &mut Value, s: &Value, path: &str, unknown: &mut Vec<String>) {
    let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
    match v {
        Value::Object(o) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            let embedded = flag(s, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                let p = join(path, &k);
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props.and_then(|m| m.get(&k)).or(additional);
                match sub {
                    Some(ss) => {
                        if let Some(child) = o.get_mut(&k) {
                            prune(child, ss, &p, unknown);
                        }
                    }
                    None if preserve || s.get("additionalProperties") == Some(&json!(true)) => {}
                    None => {
                        o.remove(&k);
                        unknown.push(p);
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, child) in a.iter_mut().enumerate() {
                    prune(child, items, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the defaults of absent fields, at every depth that exists.
pub fn default(v: &mut Value, s: &Value) {
    match v {
        Value::Object(o) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    match o.get_mut(k) {
                        Some(child) => default(child, ps),
                        None => {
                            if let Some(d) = ps.get("default") {
                                let mut d = d.clone();
                                // A default object gets its own nested defaults too.
                                default(&mut d, ps);
                                o.insert(k.clone(), d);
                            }
                        }
                    }
                }
            }
            if let Some(add) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for child in o.values_mut() {
                    default(child, add);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for child in a.iter_mut() {
                    default(child, items);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(v: &Value, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => true,
    }
}

/// Validates `v` against `s`; every problem becomes a cause naming its path.
pub fn validate(v: &Value, s: &Value, path: &str, causes: &mut Vec<Cause>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if v.is_null() && flag(s, "nullable") {
        return;
    }
    if flag(s, "x-kubernetes-int-or-string") {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: shown.to_string(),
                message: format!(
                    "Invalid value: {:?}: {shown} in body must be of type integer or string: {:?}",
                    type_name(v),
                    type_name(v)
                ),
            });
        }
        return;
    }
    if let Some(ty) = s.get("type").and_then(Value::as_str) {
        if !type_ok(v, ty) {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: shown.to_string(),
                message: format!(
                    "Invalid value: {:?}: {shown} in body must be of type {ty}: {:?}",
                    type_name(v),
                    type_name(v)
                ),
            });
            return;
        }
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let names: Vec<String> = allowed
                .iter()
                .map(|a| a.as_str().map(str::to_string).unwrap_or(a.to_string()))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            causes.push(Cause::not_supported(shown, v, &refs));
        }
    }
    match v {
        Value::Number(n) => numbers(n.as_f64().unwrap_or(0.0), v, s, shown, causes),
        Value::String(st) => strings(st, v, s, shown, causes),
        Value::Array(a) => {
            let len = a.len() as u64;
            if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                if len < min {
                    causes.push(Cause::invalid(
                        shown,
                        v,
                        format!("{shown} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
                if len > max {
                    causes.push(Cause {
                        reason: "FieldValueTooMany",
                        field: shown.to_string(),
                        message: format!("Too many: {len}: must have at most {max} items"),
                    });
                }
            }
            if let Some(items) = s.get("items") {
                for (i, child) in a.iter().enumerate() {
                    validate(child, items, &format!("{path}[{i}]"), causes);
                }
            }
        }
        Value::Object(o) => objects(o, s, path, causes),
        _ => {}
    }
}

fn numbers(n: f64, v: &Value, s: &Value, shown: &str, causes: &mut Vec<Cause>) {
    let bound = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(min) = bound("minimum") {
        let exclusive = flag(s, "exclusiveMinimum");
        if n < min || (exclusive && n == min) {
            let word = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            causes.push(Cause::invalid(
                shown,
                v,
                format!("{shown} in body should be {word} {min}"),
            ));
        }
    }
    if let Some(max) = bound("maximum") {
        let exclusive = flag(s, "exclusiveMaximum");
        if n > max || (exclusive && n == max) {
            let word = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            causes.push(Cause::invalid(
                shown,
                v,
                format!("{shown} in body should be {word} {max}"),
            ));
        }
    }
    if let Some(m) = bound("multipleOf").filter(|m| *m > 0.0) {
        if (n / m).fract() != 0.0 {
            causes.push(Cause::invalid(
                shown,
                v,
                format!("{shown} in body should be a multiple of {m}"),
            ));
        }
    }
}

fn strings(st: &str, v: &Value, s: &Value, shown: &str, causes: &mut Vec<Cause>) {
    let len = st.chars().count() as u64;
    if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
        if len < min {
            causes.push(Cause::invalid(
                shown,
                v,
                format!("{shown} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
        if len > max {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: shown.to_string(),
                message: format!("Too long: may not be more than {max} bytes"),
            });
        }
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        if let Ok(re) = regex::Regex::new(p) {
            if !re.is_match(st) {
                causes.push(Cause::invalid(
                    shown,
                    v,
                    format!("{shown} in body should match '{p}'"),
                ));
            }
        }
    }
}

fn objects(o: &Map<String, Value>, s: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(req) = s.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !o.contains_key(r) {
                causes.push(Cause::required(join(path, r)));
            }
        }
    }
    if flag(s, "x-kubernetes-embedded-resource") {
        for r in ["apiVersion", "kind"] {
            if o.get(r).and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required(join(path, r)));
            }
        }
    }
    let n = o.len() as u64;
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64) {
        if n < min {
            causes.push(Cause::invalid(
                join(path, ""),
                &json!(n),
                format!("should have at least {min} properties"),
            ));
        }
    }
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
        if n > max {
            causes.push(Cause::invalid(
                join(path, ""),
                &json!(n),
                format!("should have at most {max} properties"),
            ));
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties").filter(|a| a.is_object());
    for (k, child) in o {
        // The root's metadata is ObjectMeta, checked on its own.
        if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(cs) = props.and_then(|p| p.get(k)).or(additional) {
            validate(child, cs, &join(path, k), causes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1},
                "color": {"type": "string", "default": "blue", "enum": ["blue", "red"]},
                "port": {"x-kubernetes-int-or-string": true},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}}}},
                "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                             "properties": {"spec": {"type": "object"}}}
            }}
        }})
    }

    #[test]
    fn unknown_fields_are_pruned_and_listed_but_preserved_ones_stay() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "junk": 1, "spec": {"size": 2, "bogus": true, "extra": {"any": {"thing": 1}},
            "items": [{"name": "a", "x": 1}],
            "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "zap": 1}}});
        let mut unknown = Vec::new();
        prune_root(&mut obj, &schema(), &mut unknown);
        assert_eq!(
            unknown,
            vec!["junk", "spec.bogus", "spec.items[0].x", "spec.template.zap"]
        );
        assert_eq!(obj["spec"]["extra"], json!({"any": {"thing": 1}}));
        assert_eq!(obj["spec"]["template"]["metadata"], json!({"name": "p"}));
        assert_eq!(obj["metadata"], json!({"name": "a"}));
    }

    #[test]
    fn defaults_fill_absent_fields_only() {
        let mut obj = json!({"spec": {"size": 1}});
        default(&mut obj, &schema());
        assert_eq!(obj["spec"]["color"], "blue");
        let mut obj = json!({"spec": {"size": 1, "color": "red"}});
        default(&mut obj, &schema());
        assert_eq!(obj["spec"]["color"], "red");
    }

    #[test]
    fn every_bad_field_is_named() {
        let obj = json!({"metadata": {"name": "a"}, "spec": {"size": 0, "color": "green",
            "port": true, "items": [{"name": "long"}], "template": {}}});
        let mut causes = Vec::new();
        validate(&obj, &schema(), "", &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.color",
                "spec.items[0].name",
                "spec.port",
                "spec.size",
                "spec.template.apiVersion",
                "spec.template.kind"
            ]
        );
        let obj = json!({"spec": {"size": "three"}});
        let mut causes = Vec::new();
        validate(&obj, &schema(), "", &mut causes);
        assert_eq!(causes.len(), 1);
        assert!(
            causes[0].message.contains("must be of type integer"),
            "{causes:?}"
        );
        let obj = json!({"spec": {}});
        let mut causes = Vec::new();
        validate(&obj, &schema(), "", &mut causes);
        assert_eq!(causes[0].field, "spec.size");
        assert_eq!(causes[0].message, "Required value");
    }

    #[test]
    fn int_or_string_takes_both() {
        for port in [json!(80), json!("http")] {
            let obj = json!({"spec": {"size": 1, "port": port}});
            let mut causes = Vec::new();
            validate(&obj, &schema(), "", &mut causes);
            assert!(causes.is_empty(), "{causes:?}");
        }
    }

    #[test]
    fn schemas_without_types_are_not_structural() {
        let mut causes = Vec::new();
        check_structural(
            &json!({"type": "object", "properties": {"a": {}, "b": {"type": "array"}}}),
            "s",
            true,
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["s.properties[a].type", "s.properties[b].items"]
        );
    }
}
