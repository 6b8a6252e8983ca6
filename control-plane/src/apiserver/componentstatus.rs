//! `kubectl get cs`: etcd's health, and whether the scheduler and the
//! controller-manager hold a fresh leader lease.

use serde_json::{json, Value};

use super::storage::EtcdTls;
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

/// Whether the etcd member at `url` answers on its own (the API server's
/// shared client would route around a dead one).
async fn member_health(url: &str, tls: Option<&EtcdTls>) -> Result<(), String> {
    use std::time::Duration;
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        opts = opts.with_tls(tls.options());
    }
    let check = async {
        let mut client = etcd_client::Client::connect([url], Some(opts)).await?;
        client.status().await
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{url} did not answer within 3s")),
    }
}

/// The component statuses, computed now: the controller-manager, the
/// scheduler, and each etcd server as `etcd-N` in --etcd-servers order.
pub async fn list(state: &State) -> Vec<Value> {
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
    let tls = state.storage.tls();
    let checks = state
        .config
        .etcd_servers
        .iter()
        .map(|u| member_health(u, tls));
    for (i, health) in futures::future::join_all(checks)
        .await
        .into_iter()
        .enumerate()
    {
        let name = format!("etcd-{i}");
        out.push(match health {
            Ok(()) => status(&name, true, "ok", ""),
            Err(e) => status(&name, false, "", &e),
        });
    }
    out
}
