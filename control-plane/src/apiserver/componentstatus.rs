//! `kubectl get cs`: etcd's health, and whether the scheduler and the
//! controller-manager hold a fresh leader lease.

use serde_json::{json, Value};

use super::State;

fn status(name: &str, healthy: bool, message: &str, error: &str) -> Value {
    let mut cond = json!({"type": "Healthy", "status": if healthy { "True" } else { "False" }});
    if !message.is_empty() {
        cond["message"] = json!(message);
    }
    if !error.is_empty() {
        cond["error"] = json!(error);
    }
    json!({"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name}, "conditions": [cond]})
}

async fn lease_fresh(state: &State, name: &str) -> Result<String, String> {
    let key = format!("/registry/leases/kube-system/{name}");
    let lease = state.storage.get(&key).await.map_err(|e| e.to_string())?;
    let Some(lease) = lease else {
        return Err(format!("no {name} lease: the component has not started"));
    };
    let spec = &lease.value["spec"];
    let holder = spec["holderIdentity"].as_str().unwrap_or("");
    let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(15);
    let renewed = spec["renewTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp());
    match renewed {
        Some(t) if chrono::Utc::now().timestamp() - t <= duration * 2 && !holder.is_empty() => {
            Ok("ok".into())
        }
        Some(t) => Err(format!(
            "leader lease last renewed {}s ago",
            chrono::Utc::now().timestamp() - t
        )),
        None => Err("leader lease never renewed".into()),
    }
}

/// The three component statuses, computed now.
pub async fn list(state: &State) -> Vec<Value> {
    let etcd = match state.storage.current_revision().await {
        Ok(_) => status("etcd-0", true, "ok", ""),
        Err(e) => status("etcd-0", false, "", &e.to_string()),
    };
    let mut out = vec![];
    for (name, lease) in [
        ("controller-manager", "kube-controller-manager"),
        ("scheduler", "kube-scheduler"),
    ] {
        out.push(match lease_fresh(state, lease).await {
            Ok(m) => status(name, true, &m, ""),
            Err(e) => status(name, false, "", &e),
        });
    }
    out.push(etcd);
    out
}
