//! RFC 6902 JSON patch.

use serde_json::Value;

use super::PatchError;

/// Applies an RFC 6902 JSON patch (`application/json-patch+json`); `patch` is
/// the parsed body, a list of operations. The operations apply in order and
/// the first failure aborts the whole patch. `test` compares numbers by value
/// (`1` equals `1.0`), as the RFC asks.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or_else(|| {
        PatchError::InvalidJsonPatch("the body must be a list of operations".into())
    })?;
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        apply_operation(&mut doc, op, index)?;
    }
    Ok(doc)
}

fn apply_operation(doc: &mut Value, op: &Value, index: usize) -> Result<(), PatchError> {
    let invalid = |what: &str| PatchError::InvalidJsonPatch(format!("operation {index} {what}"));
    let op = op.as_object().ok_or_else(|| invalid("is not an object"))?;
    let member = |name: &str| {
        op.get(name)
            .ok_or_else(|| invalid(&format!("has no {name:?}")))
    };
    let string = |name: &str| {
        member(name)?
            .as_str()
            .ok_or_else(|| invalid(&format!("has a non-string {name:?}")))
    };
    let pointer = |name: &str| {
        let text = string(name)?;
        parse_pointer(text).ok_or_else(|| {
            invalid(&format!(
                "has {name} {text:?}, which does not start with '/'"
            ))
        })
    };
    let kind = string("op")?;
    let path = string("path")?;
    let tokens = pointer("path")?;
    let fail = |reason: &str| PatchError::JsonPatchFailed {
        index,
        op: kind.to_string(),
        path: path.to_string(),
        reason: reason.to_string(),
    };
    match kind {
        "add" => add_at(doc, &tokens, member("value")?.clone()).map_err(fail),
        "remove" => remove_at(doc, &tokens).map(drop).map_err(fail),
        "replace" => {
            let value = member("value")?;
            let slot = get_mut(doc, &tokens).ok_or_else(|| fail("the path does not exist"))?;
            *slot = value.clone();
            Ok(())
        }
        "move" => {
            let from = pointer("from")?;
            // A value cannot be moved into itself: after removing it there is
            // no parent left to add it to.
            if tokens.len() > from.len() && tokens.starts_with(&from) {
                return Err(fail("cannot move a value into one of its own children"));
            }
            let value = remove_at(doc, &from).map_err(|e| fail(&format!("from: {e}")))?;
            add_at(doc, &tokens, value).map_err(fail)
        }
        "copy" => {
            let from = pointer("from")?;
            let value = get(doc, &from)
                .cloned()
                .ok_or_else(|| fail("from: the path does not exist"))?;
            add_at(doc, &tokens, value).map_err(fail)
        }
        "test" => {
            let expected = member("value")?;
            match get(doc, &tokens) {
                Some(current) if json_equal(current, expected) => Ok(()),
                _ => Err(PatchError::TestFailed {
                    path: path.to_string(),
                }),
            }
        }
        other => Err(invalid(&format!("has unknown op {other:?}"))),
    }
}

/// Splits an RFC 6901 pointer into unescaped reference tokens.
fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    // `~1` is unescaped before `~0` so that `~01` means the text `~1`.
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// An array index as RFC 6901 spells it: digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |current, token| match current {
        Value::Object(map) => map.get(token),
        Value::Array(items) => array_index(token).and_then(|i| items.get(i)),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(doc, |current, token| match current {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => array_index(token).and_then(move |i| items.get_mut(i)),
        _ => None,
    })
}

fn add_at(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), &'static str> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent) {
        Some(Value::Object(map)) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let at = match last.as_str() {
                "-" => items.len(),
                token => array_index(token).ok_or("the last path element is not a list index")?,
            };
            if at > items.len() {
                return Err("the list index is out of range");
            }
            items.insert(at, value);
            Ok(())
        }
        Some(_) => Err("the parent is neither an object nor a list"),
        None => Err("the parent path does not exist"),
    }
}

fn remove_at(doc: &mut Value, tokens: &[String]) -> Result<Value, &'static str> {
    let Some((last, parent)) = tokens.split_last() else {
        return Err("the whole document cannot be removed");
    };
    match get_mut(doc, parent) {
        Some(Value::Object(map)) => map.remove(last.as_str()).ok_or("the path does not exist"),
        Some(Value::Array(items)) => match array_index(last) {
            Some(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err("the path does not exist"),
        },
        _ => Err("the path does not exist"),
    }
}

/// JSON equality with numbers compared by value, as RFC 6902 `test` wants.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}
