//! Keeps the policy maps equal to the cluster: watches NetworkPolicies,
//! Pods and Namespaces, recompiles on every batch of changes, and writes
//! the difference. Pod workers wait here until their pod's entries are in
//! place before they start its containers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kit::watch::Store;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::{watch, Mutex};

use super::compile::{compile, Identities, Inputs};
use super::encode::encode;
use super::maps::PolicyMaps;
use super::model::{namespace_labels, Labels, PodInfo};

type Name = (String, String);

#[derive(Default)]
struct State {
    pods: Store<PodInfo>,
    namespaces: Store<Labels>,
    policies: Store<NetworkPolicy>,
    /// Addresses of local pods the API does not show yet: their worker
    /// reported them before it writes the pod's status.
    local_ips: BTreeMap<Name, Ipv4Addr>,
    ids: Identities,
    maps: Option<PolicyMaps>,
}

/// NetworkPolicy enforcement on this node.
pub struct Engine {
    node: String,
    /// The node's address, a peer of its own (see `PodInfo::node_dns`).
    node_ip: Ipv4Addr,
    state: Mutex<State>,
    /// Whether every watch has listed once: before that, no rule is known.
    ready: watch::Sender<bool>,
}

/// How long a pod worker waits for the first lists before starting a pod
/// anyway (the API server is unreachable; the pod then runs unisolated
/// until the lists arrive).
const READY_WAIT: Duration = Duration::from_secs(60);

impl Engine {
    /// An engine writing the maps pinned in `pin_dir` (where the datapath
    /// pinned them).
    pub fn new(node: &str, node_ip: Ipv4Addr, pin_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let maps = PolicyMaps::open(pin_dir)?;
        Ok(Arc::new(Self {
            node: node.to_string(),
            node_ip,
            state: Mutex::new(State {
                maps: Some(maps),
                ..Default::default()
            }),
            ready: watch::channel(false).0,
        }))
    }

    /// Watches the cluster and keeps the maps in step, until the streams end.
    pub async fn run(self: Arc<Self>, client: kube::Client) {
        // Boxed: the three events differ much in size.
        enum Ev {
            Pod(Box<Result<watcher::Event<Pod>, watcher::Error>>),
            Ns(Box<Result<watcher::Event<Namespace>, watcher::Error>>),
            Policy(Box<Result<watcher::Event<NetworkPolicy>, watcher::Error>>),
        }
        let cfg = watcher::Config::default;
        let pods = kit::watch::events(Api::<Pod>::all(client.clone()), cfg())
            .map(|e| Ev::Pod(Box::new(e)));
        let nss = kit::watch::events(Api::<Namespace>::all(client.clone()), cfg())
            .map(|e| Ev::Ns(Box::new(e)));
        let pols = kit::watch::events(Api::<NetworkPolicy>::all(client), cfg())
            .map(|e| Ev::Policy(Box::new(e)));
        let events = futures::stream::select(pods, futures::stream::select(nss, pols));
        let mut events = std::pin::pin!(events);
        let node = self.node.clone();
        let handle = |state: &mut State, ev: Ev| {
            // Every sync compiles from the whole stores, so what changed
            // is not needed.
            let failed = match ev {
                Ev::Pod(e) => (*e).map(|e| {
                    state.pods.apply(e, |p| PodInfo::from_pod(&p, &node));
                }),
                Ev::Ns(e) => (*e).map(|e| {
                    state
                        .namespaces
                        .apply(e, |n| namespace_labels(&n).map(|x| x.1));
                }),
                Ev::Policy(e) => (*e).map(|e| {
                    state.policies.apply(e, Some);
                }),
            };
            if let Err(e) = failed {
                tracing::debug!("watching for NetworkPolicy: {e}");
            }
        };
        while let Some(ev) = events.next().await {
            let mut state = self.state.lock().await;
            handle(&mut state, ev);
            // A burst of changes is compiled and written once.
            for _ in 0..4096 {
                match events.next().now_or_never() {
                    Some(Some(ev)) => handle(&mut state, ev),
                    _ => break,
                }
            }
            let listed =
                state.pods.listed() && state.namespaces.listed() && state.policies.listed();
            if listed {
                self.sync(&mut state);
                self.ready.send_replace(true);
            }
        }
    }

    /// Puts the entries of local pod `pod`, now at `ip`, in place; returns
    /// once they are written (or the cluster's state could not be read in
    /// time, which is logged).
    pub async fn pod_attached(&self, pod: &Pod, ip: Ipv4Addr) {
        let mut ready = self.ready.subscribe();
        let listed = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if !listed {
            tracing::warn!(pod = %pod.name_any(), "NetworkPolicy state not listed yet; starting the pod before its policy");
        }
        let name = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut state = self.state.lock().await;
        state.local_ips.insert(name.clone(), ip);
        // The worker's copy of the pod may be newer than the watch's.
        if let Some(info) = PodInfo::from_pod(pod, &self.node) {
            state.pods.entry(name).or_insert(info);
        }
        self.sync(&mut state);
    }

    /// Forgets the address a worker reported for a pod that is gone.
    pub async fn pod_detached(&self, namespace: &str, name: &str) {
        let mut state = self.state.lock().await;
        state
            .local_ips
            .remove(&(namespace.to_string(), name.to_string()));
        self.sync(&mut state);
    }

    fn sync(&self, state: &mut State) {
        let mut pods: Vec<PodInfo> = Vec::with_capacity(state.pods.len() + 1);
        pods.push(PodInfo::node_dns(self.node_ip));
        for (name, pod) in state.pods.iter() {
            let mut pod = pod.clone();
            if pod.local && pod.ip.is_none() {
                pod.ip = state.local_ips.get(name).copied();
            }
            pods.push(pod);
        }
        let policies: Vec<NetworkPolicy> = state.policies.values().cloned().collect();
        let namespaces: BTreeMap<String, Labels> = state
            .namespaces
            .iter()
            .map(|((_, n), l)| (n.clone(), l.clone()))
            .collect();
        let compiled = compile(
            &mut state.ids,
            &Inputs {
                pods: &pods,
                namespaces: &namespaces,
                policies: &policies,
            },
        );
        let Some(maps) = state.maps.as_mut() else {
            return;
        };
        let local: Vec<Name> = compiled.endpoints.keys().cloned().collect();
        if let Err(e) = maps.assign_slots(&local) {
            tracing::warn!("assigning policy slots: {e}");
            return;
        }
        super::metrics::publish(&maps.slots);
        let entries = encode(&compiled, &maps.slots);
        if entries.dropped_blocks > 0 {
            tracing::warn!(
                dropped = entries.dropped_blocks,
                "a pod has more ipBlocks than the datapath's slots; the rest allow nothing"
            );
        }
        if let Err(e) = maps.apply(entries) {
            tracing::warn!("writing the policy maps: {e}");
        }
    }
}
