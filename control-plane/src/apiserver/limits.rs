//! What one request may cost the server: objects no larger than a request
//! body may be, list continuations that stay inside the list, and query
//! numbers that are checked before they reach a timer or a buffer.

use serde_json::Value;

use super::errors::{ApiError, ApiResult};
use super::request::{Query, MAX_BODY};

/// The most operations one JSON patch may hold (Kubernetes' limit too).
pub const MAX_JSON_PATCH_OPS: usize = 10_000;

/// The longest a watch stays open, whatever `timeoutSeconds` asks.
pub const MAX_WATCH_SECONDS: i64 = 24 * 60 * 60;

/// The size of `v` as stored.
fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// Refuses an object larger than a request body may be: whatever a patch
/// or merge made of it, it must still fit in a request that sends it back.
pub fn object_fits(obj: &Value) -> ApiResult<()> {
    if size(obj) > MAX_BODY {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> ApiError {
    ApiError::new(
        413,
        "RequestEntityTooLarge",
        format!("the resulting object would be larger than {MAX_BODY} bytes"),
    )
}

/// Applies a JSON patch without letting it build an object larger than
/// [`MAX_BODY`] on the way: `copy` doubles what it copies, so a short patch
/// of repeated copies would otherwise grow exponentially before anything
/// measured the result. The growth is bounded from above as the patch
/// goes (what `add`/`replace` bring, what each `copy` duplicates, measured
/// in the document as it is at that point) and the patch is refused as
/// soon as the bound passes the limit.
pub fn json_patch(base: &Value, patch: &Value) -> ApiResult<Value> {
    let bad = |e: apimachinery::patch::PatchError| ApiError::bad_request(e.to_string());
    let Some(ops) = patch.as_array() else {
        return apimachinery::patch::json_patch(base, patch).map_err(bad);
    };
    if ops.len() > MAX_JSON_PATCH_OPS {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("a JSON patch may hold at most {MAX_JSON_PATCH_OPS} operations"),
        ));
    }
    let mut doc = base.clone();
    let mut bound = size(base);
    let mut pending: Vec<Value> = Vec::new();
    for op in ops {
        match op.get("op").and_then(Value::as_str) {
            Some("add" | "replace") => {
                bound = bound.saturating_add(op.get("value").map(size).unwrap_or(0));
            }
            Some("copy") => {
                // What is copied is read from the document as the earlier
                // operations left it.
                if !pending.is_empty() {
                    doc = apimachinery::patch::json_patch(&doc, &Value::Array(pending))
                        .map_err(bad)?;
                    pending = Vec::new();
                }
                let from = op.get("from").and_then(Value::as_str).unwrap_or("");
                bound = bound.saturating_add(doc.pointer(from).map(size).unwrap_or(0));
            }
            _ => {}
        }
        if bound > MAX_BODY {
            return Err(too_large());
        }
        pending.push(op.clone());
    }
    if pending.is_empty() {
        return Ok(doc);
    }
    apimachinery::patch::json_patch(&doc, &Value::Array(pending)).map_err(bad)
}

/// Checks that a list continuation starts inside `prefix`, the keys the
/// list reads: a token is only base64 the client hands back, and one
/// naming another resource's or namespace's key must not start a read
/// there.
pub fn continue_within(start: &str, prefix: &str) -> ApiResult<()> {
    if start.starts_with(prefix) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "continue key is not valid: it does not belong to this list",
        ))
    }
}

/// `timeoutSeconds` of a watch: positive, at most [`MAX_WATCH_SECONDS`].
pub fn watch_seconds(query: &Query) -> ApiResult<u64> {
    let asked = query.int("timeoutSeconds")?.filter(|t| *t > 0);
    Ok(asked.unwrap_or(1800).min(MAX_WATCH_SECONDS) as u64)
}

/// The numeric options of a log request, checked here rather than on the
/// node: an integer each, and none negative.
pub fn log_options(query: &Query) -> ApiResult<()> {
    for (k, least) in [("limitBytes", 1), ("tailLines", 0), ("sinceSeconds", 1)] {
        if let Some(v) = query.int(k)? {
            if v < least {
                return Err(ApiError::invalid(
                    "PodLogOptions",
                    "",
                    "",
                    vec![super::errors::Cause::invalid(
                        k,
                        &Value::from(v),
                        format!("must be greater than or equal to {least}"),
                    )],
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeated_copies_stop_at_the_size_limit() {
        let base = json!({"metadata": {"annotations": {"a": "x".repeat(1000)}}});
        let mut ops = Vec::new();
        for i in 0..40 {
            let from = if i == 0 {
                "/metadata/annotations/a".to_string()
            } else {
                format!("/c{}", i - 1)
            };
            ops.push(json!({"op": "add", "path": format!("/c{i}"), "value": {}}));
            ops.push(json!({"op": "copy", "from": from, "path": format!("/c{i}/l")}));
            ops.push(json!({"op": "copy", "from": from, "path": format!("/c{i}/r")}));
        }
        let e = json_patch(&base, &Value::Array(ops)).unwrap_err();
        assert_eq!(e.code, 413);
        // A patch that stays small applies as before.
        let ok = json_patch(
            &base,
            &json!([{"op": "copy", "from": "/metadata/annotations/a", "path": "/metadata/annotations/b"}]),
        )
        .unwrap();
        assert_eq!(
            ok["metadata"]["annotations"]["b"],
            base["metadata"]["annotations"]["a"]
        );
        let e = json_patch(
            &base,
            &json!([{"op": "add", "path": "/big", "value": "y".repeat(MAX_BODY)}]),
        )
        .unwrap_err();
        assert_eq!(e.code, 413);
        assert_eq!(
            json_patch(&base, &json!([{"op": "nope"}]))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn query_numbers_are_bounded() {
        let q = |s: &str| Query::parse(Some(s));
        assert_eq!(
            watch_seconds(&q("timeoutSeconds=9223372036854775807")).unwrap(),
            MAX_WATCH_SECONDS as u64
        );
        assert_eq!(watch_seconds(&q("timeoutSeconds=-5")).unwrap(), 1800);
        assert_eq!(
            watch_seconds(&q("timeoutSeconds=99999999999999999999"))
                .unwrap_err()
                .code,
            400
        );
        assert!(log_options(&q("limitBytes=10&tailLines=0")).is_ok());
        assert_eq!(log_options(&q("limitBytes=-1")).unwrap_err().code, 422);
        assert_eq!(log_options(&q("limitBytes=1e99")).unwrap_err().code, 400);
        assert!(continue_within("/registry/pods/a/x", "/registry/pods/a/").is_ok());
        assert!(continue_within("/registry/pods/b/x", "/registry/pods/a/").is_err());
        assert!(continue_within("/registry/secrets/a/x", "/registry/pods/").is_err());
    }
}
