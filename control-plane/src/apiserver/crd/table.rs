//! Tables of custom objects: NAME, the version's additionalPrinterColumns
//! (or AGE when it has none), each cell read with a small JSONPath subset
//! (`.a.b`, `.a[0]`, `.a[*].b`, `.a[?(@.type=="Ready")].status`).

use apimachinery::table::{human_duration, parse_rfc3339, IncludeObject};
use serde_json::{json, Value};

use super::Column;

/// One step of a JSONPath.
#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.key=="value")]`
    Filter(String, String),
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut steps = Vec::new();
    let mut rest = path.strip_prefix('.').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = r[end + 1..].trim_start_matches('.');
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(i) = inner.parse() {
                steps.push(Step::Index(i));
            } else {
                let expr = inner.strip_prefix("?(@.")?.strip_suffix(')')?;
                let (k, v) = expr.split_once("==")?;
                steps.push(Step::Filter(
                    k.trim().to_string(),
                    v.trim().trim_matches(|c| c == '"' || c == '\'').to_string(),
                ));
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        steps.push(Step::Field(rest[..end].to_string()));
        rest = rest[end..].strip_prefix('.').unwrap_or(&rest[end..]);
    }
    Some(steps)
}

/// Every value `path` reaches in `obj`.
fn eval<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse(path) else {
        return vec![];
    };
    let mut cur = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                Step::Field(f) => next.extend(v.get(f)),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => next.extend(v.as_array().into_iter().flatten()),
                Step::Filter(k, want) => next.extend(v.as_array().into_iter().flatten().filter(
                    |e| match e.get(k) {
                        Some(Value::String(s)) => s == want,
                        Some(other) => {
                            serde_json::from_str::<Value>(want).is_ok_and(|w| w == *other)
                        }
                        None => false,
                    },
                )),
            }
        }
        cur = next;
    }
    cur
}

fn cell(obj: &Value, c: &Column, now: i64) -> Value {
    let found = eval(obj, &c.json_path);
    let Some(first) = found.first() else {
        return Value::Null;
    };
    match c.type_.as_str() {
        "date" => match first.as_str().and_then(parse_rfc3339) {
            Some(t) => json!(human_duration(now - t)),
            None => Value::Null,
        },
        "integer" | "number" | "boolean" if found.len() == 1 => (*first).clone(),
        _ => {
            let texts: Vec<String> = found
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            json!(texts.join(","))
        }
    }
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
           "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))})
}

/// A `meta.k8s.io/v1` Table of custom objects.
pub fn render(
    columns: &[Column],
    objects: &[Value],
    now: i64,
    include: IncludeObject,
    list_meta: Option<&Value>,
) -> Value {
    let age = Column {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    };
    let columns: Vec<&Column> = if columns.is_empty() {
        vec![&age]
    } else {
        columns.iter().collect()
    };
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    defs.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format,
               "description": c.description, "priority": c.priority})
    }));
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            cells.extend(columns.iter().map(|c| cell(obj, c, now)));
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(obj),
                IncludeObject::Object => row["object"] = obj.clone(),
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(m) = list_meta {
        for k in ["resourceVersion", "continue"] {
            if let Some(s) = m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                meta[k] = json!(s);
            }
        }
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
           "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_reach_fields_indices_and_filtered_conditions() {
        let obj = json!({"spec": {"size": 3, "tags": ["a", "b"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]}});
        assert_eq!(eval(&obj, ".spec.size"), vec![&json!(3)]);
        assert_eq!(eval(&obj, ".spec.tags[1]"), vec![&json!("b")]);
        assert_eq!(eval(&obj, ".spec.tags[*]").len(), 2);
        assert_eq!(
            eval(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![&json!("True")]
        );
        assert!(eval(&obj, ".spec.missing").is_empty());
    }

    #[test]
    fn a_table_has_the_printer_columns_after_the_name() {
        let cols = vec![Column {
            name: "Size".into(),
            type_: "integer".into(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            json_path: ".spec.size".into(),
        }];
        let t = render(
            &cols,
            &[json!({"metadata": {"name": "w"}, "spec": {"size": 3}})],
            0,
            IncludeObject::Metadata,
            None,
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Size");
        assert_eq!(t["rows"][0]["cells"], json!(["w", 3]));
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "w");
    }
}
