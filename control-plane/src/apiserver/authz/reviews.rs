//! Asking the authorizer instead of trying: `SelfSubjectAccessReview` and
//! `SubjectAccessReview` (`kubectl auth can-i`), `SelfSubjectRulesReview`
//! (`can-i --list`) and `SelfSubjectReview` (`kubectl auth whoami`).
//! Nothing is stored; the answer is the request with a status.
//!
//! A review consults RBAC and `system:masters`, not the Node authorizer,
//! whose answers depend on which pods are bound where at that moment.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::super::auth::User;
use super::super::errors::{ApiError, ApiResult};
use super::super::request::{self, Target};
use super::super::State;
use super::rbac::{Attributes, ResourceAttributes};

/// Whether the request is for one of the review resources.
pub fn is_review(target: &Target) -> bool {
    matches!(
        target.res.group,
        "authorization.k8s.io" | "authentication.k8s.io"
    )
}

/// Answers a POST of a review.
pub fn handle(
    state: &State,
    user: &User,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    match answer(state, user, target, headers, body) {
        Ok(v) => (
            StatusCode::CREATED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn answer(
    state: &State,
    user: &User,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Value> {
    let mut obj = request::decode_body(&request::content_type(headers), body)?;
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let status = match target.res.kind {
        "SelfSubjectReview" => {
            json!({"userInfo": {"username": user.name, "groups": user.groups}})
        }
        "SelfSubjectAccessReview" => access(state, user, &spec)?,
        "LocalSubjectAccessReview" | "SubjectAccessReview" => {
            let name = spec.get("user").and_then(Value::as_str).unwrap_or("");
            let groups: Vec<String> = spec
                .get("groups")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if name.is_empty() && groups.is_empty() {
                return Err(ApiError::invalid(
                    target.res.kind,
                    target.res.group,
                    "",
                    vec![super::super::errors::Cause::required("spec.user")],
                ));
            }
            let subject = User {
                name: name.to_string(),
                groups,
            };
            access(state, &subject, &spec)?
        }
        "SelfSubjectRulesReview" => {
            let ns = spec.get("namespace").and_then(Value::as_str).unwrap_or("");
            rules(state, user, ns)
        }
        _ => return Err(ApiError::path_not_found(target.res.plural)),
    };
    if let Some(o) = obj.as_object_mut() {
        o.insert("status".into(), status);
        o.insert("apiVersion".into(), target.res.api_version().into());
        o.insert("kind".into(), target.res.kind.into());
        o.entry("metadata").or_insert(json!({}));
    }
    Ok(obj)
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// Whether `user` may do what `spec` describes.
fn access(state: &State, user: &User, spec: &Value) -> ApiResult<Value> {
    let attrs = if let Some(r) = spec.get("resourceAttributes") {
        Attributes {
            verb: text(r, "verb"),
            resource: Some(ResourceAttributes {
                namespace: text(r, "namespace"),
                group: text(r, "group"),
                resource: text(r, "resource"),
                subresource: text(r, "subresource"),
                name: text(r, "name"),
            }),
            path: String::new(),
        }
    } else if let Some(n) = spec.get("nonResourceAttributes") {
        Attributes {
            verb: text(n, "verb"),
            resource: None,
            path: text(n, "path"),
        }
    } else {
        return Err(ApiError::bad_request(
            "exactly one of spec.resourceAttributes and spec.nonResourceAttributes must be set",
        ));
    };
    let allowed = allows(state, user, &attrs);
    Ok(if allowed {
        json!({"allowed": true, "reason": "allowed by RBAC"})
    } else {
        json!({"allowed": false})
    })
}

/// Whether `user` may do `attrs`, as the admins' group or by RBAC.
pub fn allows(state: &State, user: &User, attrs: &Attributes) -> bool {
    user.groups.iter().any(|g| g == "system:masters") || state.rbac.allows(user, attrs)
}

/// The rules `user` holds in `ns` (and cluster-wide), as `can-i --list` prints.
fn rules(state: &State, user: &User, ns: &str) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    let mut all = state.rbac.rules_for(user, ns);
    if user.groups.iter().any(|g| g == "system:masters") {
        all.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        all.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    for rule in all {
        let pick = |k: &str| rule.get(k).cloned().unwrap_or(json!([]));
        let urls = pick("nonResourceURLs");
        if urls.as_array().is_some_and(|a| !a.is_empty()) {
            non_resource_rules.push(json!({"verbs": pick("verbs"), "nonResourceURLs": urls}));
        } else {
            let mut r = json!({"verbs": pick("verbs"), "apiGroups": pick("apiGroups"),
                               "resources": pick("resources")});
            if let Some(names) = rule.get("resourceNames") {
                r["resourceNames"] = names.clone();
            }
            resource_rules.push(r);
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// The user named by `Impersonate-User` / `Impersonate-Group`, once `user`
/// is found to hold `impersonate` on each; `user` itself when neither is sent.
pub fn impersonate(state: &State, user: User, headers: &HeaderMap) -> ApiResult<User> {
    let as_user = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let as_groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let Some(name) = as_user else {
        if as_groups.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups without impersonating a user",
        ));
    };
    let check = |resource: &str, namespace: &str, target: &str| {
        let attrs = Attributes {
            verb: "impersonate".into(),
            resource: Some(ResourceAttributes {
                namespace: namespace.into(),
                group: String::new(),
                resource: resource.into(),
                subresource: String::new(),
                name: target.into(),
            }),
            path: String::new(),
        };
        if allows(state, &user, &attrs) {
            Ok(())
        } else {
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {namespace:?}")
            };
            Err(ApiError::forbidden_plain(format!(
                "{resource} {target:?} is forbidden: User {:?} cannot impersonate resource {resource:?} in API group \"\" {scope}",
                user.name
            )))
        }
    };
    let mut groups = as_groups;
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            check("serviceaccounts", ns, sa)?;
            for g in [
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        None => check("users", "", &name)?,
    }
    for g in groups.iter() {
        if g.starts_with("system:serviceaccounts") && name.starts_with("system:serviceaccount:") {
            continue;
        }
        check("groups", "", g)?;
    }
    if name != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    tracing::debug!(by = %user.name, as = %name, "impersonating");
    Ok(User { name, groups })
}
