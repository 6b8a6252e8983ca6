//! metrics.k8s.io, served by the API server itself where clusters run
//! metrics-server: every agent samples its node's and containers' CPU and
//! memory (`/stats/resource` on its node API), and a request gathers the
//! latest from every node at once. `kubectl top nodes` and `kubectl top
//! pods` read it. A node that does not answer is left out, as
//! metrics-server leaves out a node it could not scrape.

use std::collections::BTreeMap;
use std::time::Duration;

use apimachinery::selectors::LabelSelector;
use axum::response::Response;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::handlers::json_response;
use super::request::{resource_prefix, Query, Target};
use super::resources::{self, Resource};
use super::State;

pub const GROUP: &str = "metrics.k8s.io";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";

/// Read-only views, never stored: kept apart from the stored kinds, so
/// neither the namespace controller nor the OpenAPI documents take them.
pub static RESOURCES: [Resource; 2] = [
    Resource {
        group: GROUP,
        version: "v1beta1",
        kind: "NodeMetrics",
        plural: "nodes",
        singular: "",
        namespaced: false,
        short_names: &[],
        categories: &[],
        verbs: &["get", "list"],
        subresources: &[],
    },
    Resource {
        group: GROUP,
        version: "v1beta1",
        kind: "PodMetrics",
        plural: "pods",
        singular: "",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: &["get", "list"],
        subresources: &[],
    },
];

/// How long a node's agent may take to answer before it is left out.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

type ApiResult<T> = Result<T, ApiError>;

/// `GET` of NodeMetrics or PodMetrics, one or a list.
pub async fn serve(state: &State, target: &Target, query: &Query) -> ApiResult<Response> {
    let selector = match query.get("labelSelector").filter(|s| !s.is_empty()) {
        Some(s) => Some(LabelSelector::parse(s).map_err(|e| {
            ApiError::bad_request(format!("unable to parse labelSelector {s:?}: {e}"))
        })?),
        None => None,
    };
    let nodes = stored(state, "nodes", None).await?;
    let summaries = futures::future::join_all(nodes.iter().map(|node| async move {
        let answer = tokio::time::timeout(
            NODE_TIMEOUT,
            super::nodeproxy::node_json(state, node, "/stats/resource"),
        )
        .await;
        match answer {
            Ok(Ok(summary)) => Some((node, summary)),
            Ok(Err(e)) => {
                tracing::debug!("resource metrics: {e}");
                None
            }
            Err(_) => None,
        }
    }))
    .await;
    let summaries: Vec<(&Value, Value)> = summaries.into_iter().flatten().collect();
    let items = match target.res.kind {
        "NodeMetrics" => node_items(&summaries, target.name.as_deref(), selector.as_ref()),
        _ => {
            let labels = match &selector {
                Some(_) => pod_labels(state, target.namespace.as_deref()).await?,
                None => BTreeMap::new(),
            };
            pod_items(&summaries, target, selector.as_ref(), &labels)
        }
    };
    match &target.name {
        Some(name) => {
            let item = items
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::not_found(target.res.plural, name))?;
            Ok(json_response(axum::http::StatusCode::OK, &item))
        }
        None => Ok(json_response(
            axum::http::StatusCode::OK,
            &json!({
                "kind": format!("{}List", target.res.kind),
                "apiVersion": API_VERSION,
                "metadata": {},
                "items": items,
            }),
        )),
    }
}

/// The stored objects of a core resource, optionally in one namespace.
async fn stored(state: &State, plural: &str, namespace: Option<&str>) -> ApiResult<Vec<Value>> {
    let res = resources::find("", "v1", plural).expect("a core resource");
    let mut prefix = resource_prefix(res);
    if let Some(ns) = namespace {
        prefix = format!("{prefix}{ns}/");
    }
    let page = state
        .storage
        .list(&prefix, None, None, None)
        .await
        .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))?;
    Ok(page.items.into_iter().map(|(_, s)| s.value).collect())
}

/// Pod labels by (namespace, name).
async fn pod_labels(
    state: &State,
    namespace: Option<&str>,
) -> ApiResult<BTreeMap<(String, String), BTreeMap<String, String>>> {
    let pods = stored(state, "pods", namespace).await?;
    Ok(pods
        .iter()
        .map(|p| {
            let meta = &p["metadata"];
            let key = (
                meta["namespace"].as_str().unwrap_or_default().to_string(),
                meta["name"].as_str().unwrap_or_default().to_string(),
            );
            (key, labels_of(meta))
        })
        .collect())
}

fn labels_of(meta: &Value) -> BTreeMap<String, String> {
    meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU in nanocores and memory in KiB, as metrics-server writes them.
fn usage(u: &Value) -> Value {
    let cpu = u["cpuNanoCores"].as_u64().unwrap_or(0);
    let mem = u["memoryWorkingSetBytes"].as_u64().unwrap_or(0);
    json!({"cpu": format!("{cpu}n"), "memory": format!("{}Ki", mem / 1024)})
}

fn window(summary: &Value) -> String {
    format!(
        "{}s",
        summary["windowSeconds"].as_f64().unwrap_or(0.0).round() as u64
    )
}

fn node_items(
    summaries: &[(&Value, Value)],
    name: Option<&str>,
    selector: Option<&LabelSelector>,
) -> Vec<Value> {
    summaries
        .iter()
        .filter(|(node, _)| name.is_none_or(|n| node["metadata"]["name"] == n))
        .filter(|(node, _)| {
            selector.is_none_or(|s| s.matches_labels(&labels_of(&node["metadata"])))
        })
        .map(|(node, summary)| {
            json!({
                "kind": "NodeMetrics",
                "apiVersion": API_VERSION,
                "metadata": {
                    "name": node["metadata"]["name"],
                    "labels": node["metadata"]["labels"],
                    "creationTimestamp": summary["timestamp"],
                },
                "timestamp": summary["timestamp"],
                "window": window(summary),
                "usage": usage(&summary["node"]),
            })
        })
        .collect()
}

fn pod_items(
    summaries: &[(&Value, Value)],
    target: &Target,
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<(String, String), BTreeMap<String, String>>,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (_, summary) in summaries {
        for pod in summary["pods"].as_array().into_iter().flatten() {
            let (ns, name) = (
                pod["namespace"].as_str().unwrap_or_default(),
                pod["name"].as_str().unwrap_or_default(),
            );
            if target.namespace.as_deref().is_some_and(|t| t != ns)
                || target.name.as_deref().is_some_and(|t| t != name)
            {
                continue;
            }
            let pod_labels = labels.get(&(ns.to_string(), name.to_string()));
            if let Some(s) = selector {
                if !pod_labels.is_some_and(|l| s.matches_labels(l)) {
                    continue;
                }
            }
            let containers: Vec<Value> = pod["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "usage": usage(&c["usage"])}))
                .collect();
            out.push(json!({
                "kind": "PodMetrics",
                "apiVersion": API_VERSION,
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": pod_labels,
                    "creationTimestamp": summary["timestamp"],
                },
                "timestamp": summary["timestamp"],
                "window": window(summary),
                "containers": containers,
            }));
        }
    }
    out
}
