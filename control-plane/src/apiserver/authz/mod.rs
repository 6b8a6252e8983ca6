//! Authorization: who may do what, as `--authorization-mode=Node,RBAC`.
//! Admins (`system:masters`) may do everything; otherwise a request is
//! allowed when [`node`] or [`rbac`] allows it.

pub mod aggregation;
pub mod bootstrap;
pub mod components;
pub mod escalation;
pub mod node;
pub mod nonresource;
pub mod rbac;
pub mod reviews;

use super::auth::User;
use super::errors::{ApiError, ApiResult};
use super::request::{self, Query, Target};
use super::State;
use axum::http::Method;

/// Decides whether `user` may send `method` to `target`.
pub async fn authorize(
    state: &State,
    user: &User,
    method: &Method,
    target: &Target,
    query: &Query,
) -> ApiResult<()> {
    let verb = request::verb(method, target, query);
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let by_node = match user.node_name() {
        Some(n) => node::authorize(state, &user.name, n, verb, target, query).await,
        None => Err(ApiError::forbidden_plain("")),
    };
    if by_node.is_ok() || state.rbac.allows(user, &attributes(verb, target)) {
        return Ok(());
    }
    match by_node {
        Err(e) if user.node_name().is_some() => Err(e),
        _ => Err(forbidden(user, verb, target)),
    }
}

/// A resource request in RBAC's terms.
pub fn attributes(verb: &str, target: &Target) -> rbac::Attributes {
    rbac::Attributes {
        verb: verb.to_string(),
        resource: Some(rbac::ResourceAttributes {
            namespace: target.namespace.clone().unwrap_or_default(),
            group: target.res.group.to_string(),
            resource: target.res.plural.to_string(),
            subresource: target.sub.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
        }),
        path: String::new(),
    }
}

/// The refusal as Kubernetes words it, so clients and scripts that match
/// on it keep working.
fn forbidden(user: &User, verb: &str, target: &Target) -> ApiError {
    let res = match &target.sub {
        Some(sub) => format!("{}/{sub}", target.res.plural),
        None => target.res.plural.to_string(),
    };
    let scope = match &target.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_string(),
    };
    let what = match &target.name {
        Some(n) => format!("{} {n:?}", target.res.plural),
        None => target.res.plural.to_string(),
    };
    ApiError::forbidden_plain(format!(
        "{what} is forbidden: User {:?} cannot {verb} resource {res:?} in API group {:?} {scope}",
        user.name, target.res.group
    ))
}
