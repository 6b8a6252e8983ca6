//! No one grants through RBAC more than they hold: writing a Role or
//! ClusterRole needs every one of its rules (or `escalate` on it), and
//! writing a binding needs every rule of the role it binds (or `bind` on
//! that role), in the binding's namespace or cluster-wide.

use std::sync::Arc;

use serde_json::Value;

use super::super::auth::User;
use super::super::errors::{ApiError, ApiResult};
use super::super::request::Target;
use super::rbac::{rule_allows, Attributes, Cache, ResourceAttributes};

tokio::task_local! {
    static WRITER: (User, Arc<Cache>);
}

/// Runs a request's handling with who writes and the rules they hold.
pub async fn scope<F: std::future::Future>(user: User, cache: Arc<Cache>, f: F) -> F::Output {
    WRITER.scope((user, cache), f).await
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `held` covers every request `rule` would allow.
fn covered(held: &[Value], rule: &Value) -> bool {
    let allowed = |attrs: &Attributes| held.iter().any(|h| rule_allows(h, attrs));
    let verbs = strings(rule, "verbs");
    let urls = strings(rule, "nonResourceURLs");
    if !urls.is_empty() {
        return verbs.iter().all(|v| {
            urls.iter().all(|u| {
                allowed(&Attributes {
                    verb: v.clone(),
                    resource: None,
                    path: u.clone(),
                })
            })
        });
    }
    let mut names = strings(rule, "resourceNames");
    if names.is_empty() {
        names.push(String::new());
    }
    for v in &verbs {
        for g in strings(rule, "apiGroups") {
            for r in strings(rule, "resources") {
                let (resource, sub) = r.split_once('/').unwrap_or((&r, ""));
                for n in &names {
                    let attrs = Attributes {
                        verb: v.clone(),
                        resource: Some(ResourceAttributes {
                            namespace: String::new(),
                            group: g.clone(),
                            resource: resource.to_string(),
                            subresource: sub.to_string(),
                            name: n.clone(),
                        }),
                        path: String::new(),
                    };
                    if !allowed(&attrs) {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Refuses writing `obj` when it would grant its writer more than they hold.
pub fn check(target: &Target, obj: &Value) -> ApiResult<()> {
    if target.res.group != "rbac.authorization.k8s.io" {
        return Ok(());
    }
    let Ok((user, cache)) = WRITER.try_with(|w| w.clone()) else {
        return Ok(());
    };
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let ns = target.namespace.clone().unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let may = |verb: &str, resource: &str, name: &str| {
        cache.allows(
            &user,
            &Attributes {
                verb: verb.into(),
                resource: Some(ResourceAttributes {
                    namespace: ns.clone(),
                    group: "rbac.authorization.k8s.io".into(),
                    resource: resource.into(),
                    subresource: String::new(),
                    name: name.into(),
                }),
                path: String::new(),
            },
        )
    };
    let held = cache.rules_for(&user, &ns);
    let (rules, bypass) = match target.res.kind {
        "Role" | "ClusterRole" => (
            obj.get("rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            may("escalate", target.res.plural, &name),
        ),
        _ => {
            let kind = obj
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let role = obj
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let plural = if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            (
                cache.role_rules_of(kind, &ns, role),
                may("bind", plural, role),
            )
        }
    };
    if bypass || rules.iter().all(|r| covered(&held, r)) {
        return Ok(());
    }
    let missing: Vec<String> = rules
        .iter()
        .filter(|r| !covered(&held, r))
        .map(|r| r.to_string())
        .collect();
    Err(ApiError::forbidden_plain(format!(
        "{} {name:?} is forbidden: user {:?} is attempting to grant RBAC permissions not currently held: {}",
        target.res.plural,
        user.name,
        missing.join("; ")
    )))
}
