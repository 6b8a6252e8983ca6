//! Authorization: who may do what. Admins (`system:masters`) may do
//! everything, nodes what [`node`] allows, everyone else nothing.

pub mod node;

use super::auth::User;
use super::errors::ApiResult;
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
    match user.node_name() {
        Some(n) => node::authorize(state, &user.name, n, verb, target, query).await,
        None => Err(super::errors::ApiError::forbidden(
            &user.name,
            verb,
            target.res.plural,
            target.namespace.as_deref().unwrap_or(""),
            "no rule allows this user",
        )),
    }
}
