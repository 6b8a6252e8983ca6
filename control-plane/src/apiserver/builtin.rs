//! The Services every cluster has: `default/kubernetes`, whose endpoints
//! are the live API servers, and `kube-system/kube-dns` at the cluster DNS
//! address (which every agent answers itself).
//!
//! Each API server with an address pods can reach puts that address under
//! `ENDPOINT_KEYS` in etcd, bound to an etcd lease it renews; a server that
//! dies drops out when its lease expires. Every server then writes the
//! remaining set into the Endpoints and EndpointSlice of `kubernetes`, so
//! in-cluster clients (and `kubernetes.default` in DNS) always lead to a
//! server that answers, as kube-apiserver's lease endpoint reconciler does.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{json, Value};

use super::handlers;
use super::request::{Query, Target};
use super::resources;
use super::State;

/// Where API servers announce themselves; outside `/registry/`, so the
/// watch cache never sees these plain values.
const ENDPOINT_KEYS: &str = "/kestrel/apiserver-endpoints/";

/// How often a server renews its key and reconciles the endpoints.
const INTERVAL: Duration = Duration::from_secs(10);

/// How long a server's key outlives its last renewal: three missed
/// renewals, so one slow etcd round does not drop a live server.
const KEY_TTL_SECS: i64 = 30;

/// Port name and number of the `kubernetes` Service, as in every cluster.
const HTTPS_PORT: i64 = 443;

/// The address other machines and pods reach this server at: the flag, or
/// a bind or advertised address that is neither unspecified nor loopback.
pub fn endpoint_address(
    flag: Option<IpAddr>,
    bind: IpAddr,
    advertise_url: Option<&str>,
) -> Option<Ipv4Addr> {
    let usable = |ip: IpAddr| match ip {
        IpAddr::V4(v4) if !v4.is_unspecified() && !v4.is_loopback() => Some(v4),
        _ => None,
    };
    if let Some(ip) = flag {
        return usable(ip);
    }
    usable(bind).or_else(|| {
        let url = advertise_url?;
        let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
        usable(host.parse().ok()?)
    })
}

/// The two Services, then (every `INTERVAL`, for as long as the server
/// runs) this server's key and the `kubernetes` endpoints.
pub async fn run(state: State, endpoint: Option<(Ipv4Addr, u16)>, target_port: u16) {
    match endpoint {
        Some((ip, port)) => {
            tracing::info!(%ip, port, "announcing this API server as an endpoint of Service default/kubernetes")
        }
        None => tracing::info!(
            "no routable --advertise-address: this API server is not an endpoint of Service default/kubernetes"
        ),
    }
    let cidr = state.config.service_cidr;
    let mut services = vec![("default", kubernetes_service(cidr.nth(1), target_port))];
    // The range's tenth address unless told otherwise, as kubeadm does;
    // the allocator never hands it out.
    let dns = state.config.cluster_dns.unwrap_or(cidr.nth(10));
    if cidr.contains_ip(dns) {
        services.push(("kube-system", dns_service(dns)));
    } else {
        tracing::warn!(%dns, "--cluster-dns is outside --service-cluster-ip-range: no Service kube-system/kube-dns");
    }
    let mut lease: Option<i64> = None;
    let mut ticker = tokio::time::interval(INTERVAL);
    loop {
        ticker.tick().await;
        // Until both exist: an etcd that was not there at first, or a
        // Service deleted by hand, is made good on the next round.
        for (ns, svc) in &services {
            ensure_service(&state, ns, svc).await;
        }
        if let Some((ip, port)) = endpoint {
            match announce(&state, ip, port, lease).await {
                Ok(id) => lease = Some(id),
                Err(e) => {
                    lease = None;
                    tracing::warn!("announcing this API server in etcd: {e}");
                }
            }
        }
        if let Err(e) = reconcile(&state, target_port).await {
            tracing::warn!("updating the endpoints of Service default/kubernetes: {e}");
        }
    }
}

fn kubernetes_service(ip: Ipv4Addr, target_port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip.to_string(), "type": "ClusterIP",
                 "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": HTTPS_PORT, "protocol": "TCP",
                            "targetPort": target_port}]},
    })
}

fn dns_service(ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "KubeDNS",
                                "kubernetes.io/cluster-service": "true"}},
        "spec": {"clusterIP": ip.to_string(), "type": "ClusterIP",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    })
}

fn target(plural: &str, group: &str, version: &str, ns: &str, name: Option<&str>) -> Target {
    Target {
        res: resources::find(group, version, plural).expect("a built-in resource"),
        namespace: Some(ns.to_string()),
        name: name.map(str::to_string),
        sub: None,
    }
}

/// Creates the Service unless one of that name exists (whatever it holds:
/// an administrator may have changed it).
async fn ensure_service(state: &State, ns: &str, svc: &Value) {
    let name = svc["metadata"]["name"].as_str().unwrap_or_default();
    let t = target("services", "", "v1", ns, Some(name));
    match state.storage.get(&t.key()).await {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => {
            tracing::debug!("reading Service {ns}/{name}: {e}");
            return;
        }
    }
    let collection = target("services", "", "v1", ns, None);
    match handlers::create(state, &collection, &Query::default(), svc.clone()).await {
        Ok(_) => tracing::info!("created Service {ns}/{name}"),
        // Another API server made it first.
        Err(_) if matches!(state.storage.get(&t.key()).await, Ok(Some(_))) => {}
        Err(e) => tracing::warn!("creating Service {ns}/{name}: {e}"),
    }
}

/// Puts this server's key, bound to a fresh etcd lease (the old one, if
/// any, is revoked so the key never hangs on to it).
async fn announce(state: &State, ip: Ipv4Addr, port: u16, old: Option<i64>) -> anyhow::Result<i64> {
    let client = state.storage.client();
    let mut leases = client.lease_client();
    let id = tokio::time::timeout(INTERVAL, leases.grant(KEY_TTL_SECS, None))
        .await??
        .id();
    let mut kv = client.kv_client();
    let opts = etcd_client::PutOptions::new().with_lease(id);
    tokio::time::timeout(
        INTERVAL,
        kv.put(format!("{ENDPOINT_KEYS}{ip}"), port.to_string(), Some(opts)),
    )
    .await??;
    if let Some(old) = old {
        let _ = tokio::time::timeout(INTERVAL, leases.revoke(old)).await;
    }
    Ok(id)
}

/// The announced servers, as (address, port), in address order.
async fn announced(state: &State) -> anyhow::Result<Vec<(Ipv4Addr, u16)>> {
    let client = state.storage.client();
    let mut kv = client.kv_client();
    let opts = etcd_client::GetOptions::new().with_prefix();
    let resp = tokio::time::timeout(INTERVAL, kv.get(ENDPOINT_KEYS, Some(opts))).await??;
    let mut out: Vec<(Ipv4Addr, u16)> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(kv.key()).ok()?;
            let ip = key.strip_prefix(ENDPOINT_KEYS)?.parse().ok()?;
            let port = std::str::from_utf8(kv.value()).ok()?.parse().ok()?;
            Some((ip, port))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Endpoints and EndpointSlice `default/kubernetes` as the announced set
/// says. One port for all: the servers of a cluster share their secure
/// port (as kube-apiserver requires); a server on another one is left out.
async fn reconcile(state: &State, target_port: u16) -> anyhow::Result<()> {
    let live = announced(state).await?;
    let port = live.first().map(|(_, p)| *p).unwrap_or(target_port);
    let ips: Vec<String> = live
        .iter()
        .filter(|(_, p)| *p == port)
        .map(|(ip, _)| ip.to_string())
        .collect();
    let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let subsets = if ips.is_empty() {
        json!([])
    } else {
        json!([{"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": ports}])
    };
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     // The slice is written here too, not mirrored from this.
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    });
    put(
        state,
        target("endpoints", "", "v1", "default", Some("kubernetes")),
        endpoints,
        |old| old.get("subsets").cloned().unwrap_or(json!([])) == subsets,
    )
    .await?;
    let slice_endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "kestrel-apiserver"}},
        "addressType": "IPv4",
        "endpoints": slice_endpoints,
        "ports": ports,
    });
    put(
        state,
        target(
            "endpointslices",
            "discovery.k8s.io",
            "v1",
            "default",
            Some("kubernetes"),
        ),
        slice,
        |old| {
            let addrs: Vec<&Value> = old["endpoints"]
                .as_array()
                .map(|a| a.iter().map(|e| &e["addresses"]).collect())
                .unwrap_or_default();
            let want: Vec<&Value> = slice_endpoints.iter().map(|e| &e["addresses"]).collect();
            addrs == want && old["ports"] == ports
        },
    )
    .await
}

/// Creates `obj`, or replaces the stored one unless `same` says it already
/// holds what `obj` would write. Goes through the ordinary handlers, so
/// defaults, validation and watch events are those of any client's write.
async fn put(
    state: &State,
    t: Target,
    mut obj: Value,
    same: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    match state.storage.get(&t.key()).await? {
        Some(old) if same(&old.value) => Ok(()),
        Some(old) => {
            obj["metadata"]["resourceVersion"] = json!(old.rev.to_string());
            handlers::update(state, &t, &Query::default(), obj).await?;
            Ok(())
        }
        None => {
            let collection = Target { name: None, ..t };
            handlers::create(state, &collection, &Query::default(), obj).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_address_is_one_other_machines_can_reach() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let a: IpAddr = "10.99.0.2".parse().unwrap();
        let want = Some("10.99.0.2".parse().unwrap());
        assert_eq!(endpoint_address(None, a, None), want);
        assert_eq!(
            endpoint_address(None, any, Some("https://10.99.0.2:6443")),
            want
        );
        assert_eq!(endpoint_address(Some(a), lo, None), want);
        assert_eq!(
            endpoint_address(None, lo, Some("https://127.0.0.1:6443")),
            None
        );
        assert_eq!(
            endpoint_address(None, any, Some("https://cp.example:6443")),
            None
        );
        assert_eq!(endpoint_address(Some(lo), a, None), None);
        assert_eq!(endpoint_address(None, any, None), None);
    }
}
