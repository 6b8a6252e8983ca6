//! Endpoints and EndpointSlices: for every Service with a selector, the
//! addresses of the pods it selects, split by readiness, with named target
//! ports resolved per pod. Terminating pods leave Endpoints and stay in
//! EndpointSlices marked `terminating`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use apimachinery::selectors::selector_matches;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::context::{self, Context, Error, Result};

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

/// The shared context plus this controller's own pod cache, fed by the
/// same stream that triggers it.
pub struct Ctx {
    shared: Arc<Context>,
    pods: kube::runtime::reflector::Store<Pod>,
}

impl std::ops::Deref for Ctx {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

/// Runs the endpoints controller until the process ends.
pub async fn run(shared: Arc<Context>, concurrency: u16) {
    let (pods, pod_events) = (shared.pods.clone(), shared.pod_feed.subscribe());
    let ctx = Arc::new(Ctx { shared, pods });
    let controller = Controller::new(
        Api::<Service>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let services = controller.store();
    controller
        .watches_stream(pod_events, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            services
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace().as_deref() == Some(ns.as_str())
                        && selector_of(s)
                            .is_some_and(|sel| selector_matches(Some(&sel), pod.labels()))
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .run(
            |o, c| context::bounded(reconcile(o, c)),
            |s: Arc<Service>, e: &Error, _| {
                tracing::warn!("endpoints for {}: {e}", s.name_any());
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

fn selector_of(svc: &Service) -> Option<LabelSelector> {
    let sel = svc.spec.as_ref()?.selector.clone()?;
    if sel.is_empty() {
        return None;
    }
    Some(LabelSelector {
        match_labels: Some(sel),
        match_expressions: None,
    })
}

/// The container port a service port reaches on `pod`, if any.
fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP")
                        == port.protocol.as_deref().unwrap_or("TCP")
            })
            .map(|p| p.container_port),
    }
}

/// (name, port, protocol) as they appear in Endpoints and slices.
type PortSet = Vec<(String, i32, String)>;

struct Backend {
    ip: String,
    node: Option<String>,
    ready: bool,
    terminating: bool,
    target: Value,
    hostname: Option<String>,
}

/// The DNS host name a pod has under `svc`: its `hostname` when its
/// `subdomain` names the Service (a StatefulSet member under its governing
/// Service), so `<hostname>.<service>.<ns>.svc` resolves to it.
fn hostname_under(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())
        && pod.namespace() == svc.namespace())
    .then(|| host.to_string())
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    // Decisions need the whole picture: never act on a cache still listing.
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let Some(selector) = selector_of(&svc) else {
        // Without a selector the user manages the endpoints.
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.clone().unwrap_or_default();

    // Group backends by the ports they resolve to.
    let mut groups: BTreeMap<PortSet, Vec<Backend>> = BTreeMap::new();
    for pod in ctx.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || !selector_matches(Some(&selector), pod.labels())
        {
            continue;
        }
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ip) = status.pod_ip.clone().filter(|i| !i.is_empty()) else {
            continue;
        };
        let mut set: PortSet = Vec::new();
        for p in &ports {
            if let Some(tp) = target_port(p, &pod) {
                set.push((
                    p.name.clone().unwrap_or_default(),
                    tp,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ));
            }
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        groups.entry(set).or_default().push(Backend {
            ip,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready: publish_not_ready || context::pod_ready_since(&pod).is_some(),
            terminating,
            target: json!({"kind": "Pod", "namespace": ns, "name": pod.name_any(), "uid": pod.uid()}),
            hostname: hostname_under(&pod, &svc),
        });
    }
    for backends in groups.values_mut() {
        backends.sort_by(|a, b| a.ip.cmp(&b.ip));
    }

    // Endpoints: terminating pods are gone already.
    let mut subsets = Vec::new();
    for (set, backends) in &groups {
        let addr = |b: &Backend| {
            let mut a = json!({"ip": b.ip, "targetRef": b.target});
            if let Some(n) = &b.node {
                a["nodeName"] = json!(n);
            }
            if let Some(h) = &b.hostname {
                a["hostname"] = json!(h);
            }
            a
        };
        let ready: Vec<Value> = backends
            .iter()
            .filter(|b| b.ready && !b.terminating)
            .map(addr)
            .collect();
        let not_ready: Vec<Value> = backends
            .iter()
            .filter(|b| !b.ready && !b.terminating)
            .map(addr)
            .collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let mut subset = json!({
            "ports": set.iter().map(|(n, p, proto)| {
                let mut v = json!({"port": p, "protocol": proto});
                if !n.is_empty() { v["name"] = json!(n); }
                v
            }).collect::<Vec<_>>(),
        });
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        subsets.push(subset);
    }
    let ep_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let labels = svc.labels().clone();
    let desired: Endpoints = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        // Not a controller reference (Kubernetes sets none), but it lets the
        // garbage collector remove the Endpoints with their Service.
        "metadata": {"name": name, "namespace": ns, "labels": labels,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc.uid()}]},
        "subsets": subsets,
    }))
    .map_err(|e| Error::Other(e.to_string()))?;
    match ep_api.get_opt(&name).await? {
        None => match ep_api.create(&PostParams::default(), &desired).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)))
            }
            Err(e) => return Err(e.into()),
        },
        Some(current) => {
            if current.subsets.clone().unwrap_or_default()
                != desired.subsets.clone().unwrap_or_default()
                || current.metadata.labels != desired.metadata.labels
            {
                let mut next = desired.clone();
                next.metadata.resource_version = current.metadata.resource_version.clone();
                ep_api.replace(&name, &PostParams::default(), &next).await?;
            }
        }
    }

    // EndpointSlices: one per port set, named after the service and ports.
    let es_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = es_api
        .list(
            &ListParams::default().labels(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={MANAGER}")),
        )
        .await?;
    let mut wanted_names = BTreeSet::new();
    let owner = json!([{
        "apiVersion": "v1", "kind": "Service", "name": name, "uid": svc.uid(),
        "controller": true, "blockOwnerDeletion": true,
    }]);
    let mut slice_labels = labels.clone();
    slice_labels.insert(SERVICE_NAME.into(), name.clone());
    slice_labels.insert(MANAGED_BY.into(), MANAGER.into());
    // A service with no backends still has one (empty) slice.
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    for (set, backends) in &groups {
        let slice_name = format!(
            "{name}-{}",
            short_hash(&format!("{}{set:?}", svc.uid().unwrap_or_default()))
        );
        wanted_names.insert(slice_name.clone());
        let endpoints: Vec<Value> = backends
            .iter()
            .map(|b| {
                let mut e = json!({
                    "addresses": [b.ip],
                    "conditions": {"ready": b.ready && !b.terminating, "serving": b.ready, "terminating": b.terminating},
                    "targetRef": b.target,
                });
                if let Some(n) = &b.node {
                    e["nodeName"] = json!(n);
                }
                if let Some(h) = &b.hostname {
                    e["hostname"] = json!(h);
                }
                e
            })
            .collect();
        let desired: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns, "labels": slice_labels, "ownerReferences": owner},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": set.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect::<Vec<_>>(),
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        match existing.items.iter().find(|s| s.name_any() == slice_name) {
            None => match es_api.create(&PostParams::default(), &desired).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(200)))
                }
                Err(e) => return Err(e.into()),
            },
            Some(cur) => {
                if cur.endpoints != desired.endpoints || cur.ports != desired.ports {
                    let mut next = desired.clone();
                    next.metadata.resource_version = cur.metadata.resource_version.clone();
                    es_api
                        .replace(&slice_name, &PostParams::default(), &next)
                        .await?;
                }
            }
        }
    }
    for stale in existing
        .items
        .iter()
        .filter(|s| !wanted_names.contains(&s.name_any()))
    {
        let _ = es_api
            .delete(&stale.name_any(), &DeleteParams::default())
            .await;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|i| ALPHABET[((h >> (i * 5)) as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(hostname: Option<&str>, subdomain: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"containers": [], "hostname": hostname, "subdomain": subdomain},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_member_gets_its_hostname_only_under_the_service_it_names() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "None"},
        }))
        .expect("a service");
        assert_eq!(
            hostname_under(&pod(Some("web-0"), Some("web")), &svc).as_deref(),
            Some("web-0")
        );
        assert_eq!(
            hostname_under(&pod(Some("web-0"), Some("other")), &svc),
            None
        );
        assert_eq!(hostname_under(&pod(Some("web-0"), None), &svc), None);
        assert_eq!(hostname_under(&pod(None, Some("web")), &svc), None);
        let mut elsewhere = pod(Some("web-0"), Some("web"));
        elsewhere.metadata.namespace = Some("prod".into());
        assert_eq!(hostname_under(&elsewhere, &svc), None);
    }
}
