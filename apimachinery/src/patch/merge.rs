//! RFC 7386 merge patch.

use serde_json::Value;

use super::PatchError;

/// Applies an RFC 7386 merge patch (`application/merge-patch+json`): objects
/// merge recursively, `null` deletes a key, anything else (lists included)
/// replaces. The body must be an object; a list here is almost always a JSON
/// patch sent with the wrong content type, so it is refused rather than
/// allowed to replace the whole object.
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::NotAnObject("a merge patch"));
    }
    Ok(merge_patch_value(target, patch))
}

fn merge_patch_value(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = target.as_object().cloned().unwrap_or_default();
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge_patch_value(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}
