//! GET of one object (or its /scale).

use axum::http::StatusCode;
use axum::response::Response;

use super::scale::scale_of;
use super::{json_response, read, render};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target, Wants};
use crate::apiserver::State;

/// GET of one object.
pub async fn get(
    state: &State,
    target: &Target,
    wants: Wants,
    query: &Query,
) -> ApiResult<Response> {
    if target.res.plural == "componentstatuses" {
        let all = crate::apiserver::componentstatus::list(state).await;
        let name = target.name.as_deref().unwrap_or("");
        let cs = all
            .into_iter()
            .find(|c| c["metadata"]["name"] == name)
            .ok_or_else(|| ApiError::not_found("componentstatuses", name))?;
        return Ok(json_response(
            StatusCode::OK,
            &render(state, target, wants, query, &cs)?,
        ));
    }
    let stored = read(state, target).await?;
    let obj = match target.sub.as_deref() {
        Some("scale") => scale_of(target, &stored.value),
        _ => stored.value,
    };
    Ok(json_response(
        StatusCode::OK,
        &render(state, target, wants, query, &obj)?,
    ))
}
