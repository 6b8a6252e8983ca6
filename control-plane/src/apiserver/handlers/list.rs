//! GET of a collection: selectors, paging with continue tokens, tables.

use apimachinery::table::IncludeObject;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde_json::json;

use super::{json_response, storage_err, Filter};
use crate::apiserver::errors::{ApiError, ApiResult};
use crate::apiserver::request::{Query, Target, Wants};
use crate::apiserver::storage::StorageError;
use crate::apiserver::State;

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: i64,
    start: String,
}

/// GET of a collection, with selectors and paging.
pub async fn list(
    state: &State,
    target: &Target,
    wants: Wants,
    query: &Query,
) -> ApiResult<Response> {
    let filter = Filter::from_query(target, query)?;
    let limit = query.int("limit")?.filter(|l| *l > 0);
    let (mut start, mut at) = (None::<String>, None::<i64>);
    if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
        let c: Continue = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
        crate::apiserver::limits::continue_within(&c.start, &target.prefix())?;
        start = Some(c.start);
        at = Some(c.rv);
    }
    let mut items = Vec::new();
    let mut rv;
    let mut next = None;
    if target.res.plural == "componentstatuses" {
        items = crate::apiserver::componentstatus::list(state).await;
        rv = 0;
    } else {
        // Keep reading pages until the filtered result fills `limit`.
        loop {
            let page = match state
                .storage
                .list(&target.prefix(), start.as_deref(), limit, at)
                .await
            {
                Ok(p) => p,
                Err(StorageError::Unavailable(m)) if m.contains("compacted") => {
                    return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
                }
                Err(e) => return Err(storage_err(e, target)),
            };
            rv = page.revision;
            at = Some(page.revision);
            let last_key = page.items.last().map(|(k, _)| k.clone());
            for (key, stored) in page.items {
                if filter.matches(&stored.value) {
                    items.push(stored.value);
                    if limit.is_some_and(|l| items.len() as i64 >= l) {
                        start = Some(key);
                        break;
                    }
                }
                start = Some(key);
            }
            let full = limit.is_some_and(|l| items.len() as i64 >= l);
            let more = page.more || (full && start != last_key);
            if full {
                if more || start != last_key {
                    next = start.clone().map(|s| Continue { rv, start: s });
                }
                break;
            }
            if !page.more || last_key.is_none() {
                break;
            }
        }
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = next {
        let token = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&c).unwrap_or_default());
        meta["continue"] = json!(token);
    }
    let body = match wants {
        Wants::Table => {
            let include =
                IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
            super::table_of(target.res, &items, include, Some(&meta))
        }
        Wants::Json => json!({
            "kind": format!("{}List", target.res.kind),
            "apiVersion": target.res.api_version(),
            "metadata": meta,
            "items": items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}
