//! Tolerant accessors over stored objects. Rows are built from whatever JSON
//! was persisted, so every lookup degrades to "absent" instead of failing:
//! a wrong type or a missing key reads like Go's zero value would.

use serde_json::{Map, Value};

use super::time::{human_duration, parse_rfc3339, GO_ZERO_TIME};

/// The value at `path` through nested objects; JSON `null` counts as absent,
/// matching how Go decodes `null` into a nil pointer.
pub(super) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = cur.as_object()?.get(*key)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// The string at `path`, or `""` when absent or not a string.
pub(super) fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or("")
}

/// The integer at `path`. Floats are truncated and oversized values clamp,
/// so hand-written objects still render something plausible.
pub(super) fn int(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path).and_then(as_int)
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|_| i64::MAX))
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// The array at `path`, or an empty slice.
pub(super) fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The object at `path`, if it is one.
pub(super) fn map<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    at(v, path).and_then(Value::as_object)
}

/// Whether the boolean at `path` is `true`.
pub(super) fn flag(v: &Value, path: &[&str]) -> bool {
    at(v, path).and_then(Value::as_bool) == Some(true)
}

/// The instant at `path` in Unix seconds; unparsable values and Go's zero
/// time count as unset, as `metav1.Time.IsZero` would report.
pub(super) fn timestamp(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path)
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
        .filter(|t| *t != GO_ZERO_TIME)
}

/// Human time elapsed since `ts`, or `"<unknown>"` when it is unset.
pub(super) fn since(ts: Option<i64>, now: i64) -> String {
    match ts {
        Some(t) => human_duration(now.saturating_sub(t)),
        None => "<unknown>".to_string(),
    }
}

/// The AGE cell of any object.
pub(super) fn age(obj: &Value, now: i64) -> Value {
    since(timestamp(obj, &["metadata", "creationTimestamp"]), now).into()
}

/// The NAME cell of any object.
pub(super) fn name(obj: &Value) -> Value {
    text(obj, &["metadata", "name"]).into()
}

/// `s`, or `"<none>"` when it is empty.
pub(super) fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

/// A label map as `k1=v1,k2=v2` sorted by key, or `"<none>"` when empty.
pub(super) fn format_labels(labels: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", scalar(v)))
        .collect();
    pairs.sort();
    or_none(&pairs.join(","))
}

/// A scalar as label text; non-strings show their JSON form rather than vanish.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A `metav1.LabelSelector` in selector syntax (`app=x,tier in (a,b),!old`),
/// requirements sorted by key. Empty or absent selectors give `""`.
/// `Err` marks a selector Kubernetes would refuse to convert (unknown
/// operator, or values that do not fit the operator).
pub(super) fn label_selector(sel: Option<&Value>) -> Result<String, ()> {
    let Some(sel) = sel else {
        return Ok(String::new());
    };
    let sel = sel.as_object().ok_or(())?;
    let mut reqs: Vec<(String, String)> = Vec::new();
    match sel.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                let v = v.as_str().ok_or(())?;
                reqs.push((k.clone(), format!("{k}={v}")));
            }
        }
        Some(_) => return Err(()),
    }
    match sel.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(exprs)) => {
            for e in exprs {
                reqs.push(expression(e)?);
            }
        }
        Some(_) => return Err(()),
    }
    // Kubernetes keeps requirements ordered by key; a stable sort also keeps
    // our output deterministic when one key appears twice.
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

/// One `matchExpressions` entry as `(key, rendered requirement)`.
fn expression(e: &Value) -> Result<(String, String), ()> {
    let key = text(e, &["key"]).to_string();
    let mut values = Vec::new();
    for v in list(e, &["values"]) {
        values.push(v.as_str().ok_or(())?.to_string());
    }
    values.sort();
    let rendered = match (text(e, &["operator"]), values.is_empty()) {
        ("In", false) => format!("{key} in ({})", values.join(",")),
        ("NotIn", false) => format!("{key} notin ({})", values.join(",")),
        ("Exists", true) => key.clone(),
        ("DoesNotExist", true) => format!("!{key}"),
        _ => return Err(()),
    };
    Ok((key, rendered))
}

/// The CONTAINERS and IMAGES cells of a pod template: names and images of
/// `containers`, each comma-joined in declaration order.
pub(super) fn container_cells(containers: &[Value]) -> (Value, Value) {
    let names: Vec<&str> = containers.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, &["image"])).collect();
    (names.join(",").into(), images.join(",").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookups_tolerate_wrong_shapes() {
        let v = json!({"a": {"b": 3, "s": "x", "n": null, "f": 2.7, "big": u64::MAX}, "l": 5});
        assert_eq!(int(&v, &["a", "b"]), Some(3));
        assert_eq!(int(&v, &["a", "f"]), Some(2));
        assert_eq!(int(&v, &["a", "big"]), Some(i64::MAX));
        assert_eq!(int(&v, &["a", "s"]), None);
        assert_eq!(text(&v, &["a", "b"]), "");
        assert_eq!(text(&v, &["a", "s"]), "x");
        assert!(at(&v, &["a", "n"]).is_none());
        assert!(list(&v, &["l"]).is_empty());
        assert!(at(&v, &["l", "deeper"]).is_none());
    }

    #[test]
    fn timestamps_and_ages() {
        let v = json!({"metadata": {"creationTimestamp": "1970-01-01T00:01:00Z"}});
        assert_eq!(age(&v, 60 + 5), json!("5s"));
        assert_eq!(age(&json!({}), 0), json!("<unknown>"));
        let zero = json!({"metadata": {"creationTimestamp": "0001-01-01T00:00:00Z"}});
        assert_eq!(age(&zero, 0), json!("<unknown>"));
        assert_eq!(since(Some(100), 50), "<invalid>");
    }

    #[test]
    fn labels_sorted_and_none() {
        let m = json!({"tier": "web", "app": "x"});
        assert_eq!(format_labels(m.as_object()), "app=x,tier=web");
        assert_eq!(format_labels(None), "<none>");
        assert_eq!(format_labels(json!({}).as_object()), "<none>");
    }

    #[test]
    fn selectors_render_like_kubernetes() {
        let sel = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "old", "operator": "DoesNotExist"},
                {"key": "canary", "operator": "Exists", "values": []}
            ]
        });
        assert_eq!(
            label_selector(Some(&sel)),
            Ok("app=web,canary,env notin (dev),!old,tier in (a,b)".to_string())
        );
        assert_eq!(label_selector(None), Ok(String::new()));
        assert_eq!(label_selector(Some(&json!({}))), Ok(String::new()));
        let bad_op = json!({"matchExpressions": [{"key": "a", "operator": "Near"}]});
        assert_eq!(label_selector(Some(&bad_op)), Err(()));
        let empty_in = json!({"matchExpressions": [{"key": "a", "operator": "In"}]});
        assert_eq!(label_selector(Some(&empty_in)), Err(()));
        assert_eq!(label_selector(Some(&json!("app=x"))), Err(()));
    }

    #[test]
    fn container_cells_join_in_order() {
        let cs = json!([{"name": "app", "image": "nginx:1"}, {"name": "side", "image": "envoy"}]);
        let (n, i) = container_cells(cs.as_array().unwrap());
        assert_eq!((n, i), (json!("app,side"), json!("nginx:1,envoy")));
        assert_eq!(container_cells(&[]), (json!(""), json!("")));
    }
}
