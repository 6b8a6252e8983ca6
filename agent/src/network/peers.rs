//! Routes to the other nodes' pods, from the Node objects.
//!
//! Each Node's route stands alone. A Node whose pod CIDR the agent must not
//! route (outside the cluster CIDR, or overlapping this node's or an older
//! node's) is refused, and one whose route the kernel refuses (an address
//! no interface reaches, such as a machine that left the node network) is
//! reported; either way the other Nodes are routed all the same. Problems
//! are told once, as a Warning Event on that Node and a log line, and told
//! again only when they change.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kit::watch::Store;
use kube::api::Api;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::routes::{NodeRoute, Routes};
use super::{vxlan, Network};

/// Event reason of a pod CIDR the agent will not route.
pub const REASON_REFUSED: &str = "PodCIDRRefused";
/// Event reason of a route the kernel would not add.
pub const REASON_FAILED: &str = "FailedToCreateRoute";

/// What this node should route, and what it will not.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// (Node name, its route), by route.
    pub routes: Vec<(String, NodeRoute)>,
    /// The VXLAN peers, in tunnel mode.
    pub peers: Vec<vxlan::Peer>,
    /// (Node name, why its pod CIDR is not routed).
    pub refused: Vec<(String, String)>,
}

/// This node as the plan needs it.
pub struct Own<'a> {
    pub name: &'a str,
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    /// The VXLAN device's index in tunnel mode.
    pub tunnel: Option<u32>,
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The routes to the pods of `nodes` (all but this one). Of two Nodes
/// whose pod CIDRs overlap, the older keeps its route: a Node created
/// later cannot take traffic from one that already runs pods.
pub fn plan(own: &Own<'_>, nodes: &[Arc<Node>]) -> Plan {
    let mut order: Vec<&Arc<Node>> = nodes.iter().filter(|n| n.name_any() != own.name).collect();
    order.sort_by_key(|n| (n.creation_timestamp().map(|t| t.0), n.name_any()));
    let mut claimed: Vec<(Ipv4Net, String)> = vec![(own.pod_cidr, "this node".into())];
    let mut plan = Plan::default();
    for n in order {
        let name = n.name_any();
        let Some(text) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()) else {
            continue;
        };
        // A Node still registering has no address yet; nothing to say.
        let Some(address) = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
        else {
            continue;
        };
        let mut refuse = |why: String| plan.refused.push((name.clone(), why));
        let Ok(cidr) = text.parse::<Ipv4Net>() else {
            refuse(format!("spec.podCIDR {text:?} is not an IPv4 CIDR"));
            continue;
        };
        let Ok(via) = address.parse::<Ipv4Addr>() else {
            refuse(format!("InternalIP {address:?} is not an IPv4 address"));
            continue;
        };
        if !own.cluster_cidr.contains(&cidr) {
            refuse(format!(
                "pod CIDR {cidr} is outside the cluster CIDR {}",
                own.cluster_cidr
            ));
            continue;
        }
        if let Some((other, holder)) = claimed.iter().find(|(c, _)| overlap(*c, cidr)) {
            let holder = match holder.as_str() {
                "this node" => format!("node {}'s own", own.name),
                h => format!("node {h}'s"),
            };
            refuse(format!(
                "pod CIDR {cidr} overlaps {holder} pod CIDR {other}"
            ));
            continue;
        }
        claimed.push((cidr, name.clone()));
        let route = match own.tunnel {
            None => NodeRoute {
                pod_cidr: cidr,
                via,
                dev: None,
            },
            Some(dev) => {
                plan.peers.push(vxlan::Peer {
                    node_ip: via,
                    overlay_ip: cidr.network(),
                });
                NodeRoute {
                    pod_cidr: cidr,
                    via: cidr.network(),
                    dev: Some(dev),
                }
            }
        };
        plan.routes.push((name, route));
    }
    plan.routes.sort_by(|a, b| a.1.cmp(&b.1));
    plan.peers.sort();
    plan.peers.dedup();
    plan.refused.sort();
    plan
}

/// Tells of each Node's routing problem once, and again only when it
/// changes.
struct Reporter {
    recorder: kit::events::Recorder,
    own: String,
    /// Node name -> the problem last told.
    told: HashMap<String, String>,
}

impl Reporter {
    async fn report(&mut self, problems: Vec<(Arc<Node>, &'static str, String)>) {
        let names: Vec<String> = problems.iter().map(|p| p.0.name_any()).collect();
        self.told.retain(|n, _| names.contains(n));
        for (node, reason, message) in problems {
            let name = node.name_any();
            if self.told.get(&name) == Some(&message) {
                continue;
            }
            tracing::warn!(node = %name, reason, "not routing to node {name}: {message}");
            self.event(&node, reason, &message);
            self.told.insert(name, message);
        }
    }

    fn event(&self, node: &Node, reason: &str, message: &str) {
        // Nodes have no namespace; the recorder puts their Events in
        // default, as kubelet's are.
        let reference = kit::events::reference(node);
        let message = format!("node {}: {message}", self.own);
        self.recorder.record(reference, "Warning", reason, message);
    }
}

/// Keeps the routes to other nodes' pod CIDRs equal to the Node objects,
/// until dropped.
pub async fn sync_routes(
    client: kube::Client,
    self_name: String,
    network: Arc<Network>,
    recorder: kit::events::Recorder,
) {
    let routes = match Routes::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("no netlink socket for node routes: {e}");
            return;
        }
    };
    let own = Own {
        name: &self_name,
        pod_cidr: network.pod_cidr,
        cluster_cidr: network.cluster_cidr,
        tunnel: network.tunnel,
    };
    let mut reporter = Reporter {
        recorder,
        own: self_name.clone(),
        told: HashMap::new(),
    };
    let api: Api<Node> = Api::all(client);
    let stream = kit::watch::events(api, watcher::Config::default());
    futures::pin_mut!(stream);
    let mut nodes: Store<Arc<Node>> = Store::default();
    // Nodes have no namespace.
    let node =
        |nodes: &Store<Arc<Node>>, name: &str| nodes.get(&(String::new(), name.into())).cloned();
    let mut last: Option<Vec<NodeRoute>> = None;
    loop {
        // Resync every 30 s even when nothing happens, in case someone
        // removed our routes by hand, or a refused route may now be made.
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::debug!("watching nodes: {e}");
                continue;
            }
            Ok(Some(Ok(ev))) => {
                // The plan is made from every Node each time.
                nodes.apply(ev, |n| Some(Arc::new(n)));
            }
            Err(_) => {}
        }
        // Until the first complete list, a missing node may just be unseen.
        if !nodes.listed() || nodes.relisting() {
            continue;
        }
        let all: Vec<Arc<Node>> = nodes.values().cloned().collect();
        let plan = plan(&own, &all);
        if let Some(dev) = own.tunnel {
            // Neighbours before routes: a route must never point at a tunnel
            // endpoint the device cannot address yet.
            if let Err(e) = vxlan::sync_peers(routes.handle(), dev, &plan.peers).await {
                tracing::warn!("syncing VXLAN peers: {e}");
            }
        }
        let want: Vec<NodeRoute> = plan.routes.iter().map(|(_, r)| r.clone()).collect();
        let mut problems: Vec<(Arc<Node>, &'static str, String)> = plan
            .refused
            .iter()
            .filter_map(|(n, why)| Some((node(&nodes, n)?, REASON_REFUSED, why.clone())))
            .collect();
        match routes.sync(&want).await {
            Ok(done) => {
                for (route, e) in &done.failed {
                    let owner = plan.routes.iter().find(|(_, r)| r == route);
                    match owner.and_then(|(n, _)| node(&nodes, n)) {
                        Some(node) => problems.push((
                            node,
                            REASON_FAILED,
                            format!("route {} via {}: {e}", route.pod_cidr, route.via),
                        )),
                        None => tracing::warn!(
                            "removing the route {} via {}: {e}",
                            route.pod_cidr,
                            route.via
                        ),
                    }
                }
                let made = want.len() - done.failed.len().min(want.len());
                if done.changed > 0 || last.as_ref() != Some(&want) {
                    tracing::info!(
                        "node routes: {made} of {} to other nodes ({} changed)",
                        want.len(),
                        done.changed
                    );
                    last = Some(want);
                }
            }
            Err(e) => tracing::warn!("reading node routes: {e}"),
        }
        reporter.report(problems).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, created: &str, cidr: &str, ip: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn bad_pod_cidrs_are_refused_and_the_rest_routed() {
        let own = Own {
            name: "a",
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            tunnel: None,
        };
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:00:01Z";
        let nodes = [
            node("a", t0, "10.244.1.0/24", "10.0.0.1"),
            node("b", t0, "10.244.2.0/24", "10.0.0.2"),
            // Younger than b, same CIDR: b keeps it.
            node("c", t1, "10.244.2.0/25", "10.0.0.3"),
            node("d", t0, "10.245.0.0/24", "10.0.0.4"),
            node("e", t0, "10.244.0.0/20", "10.0.0.5"),
            node("f", t0, "nonsense", "10.0.0.6"),
            node("g", t0, "10.244.7.0/24", "192.0.2.7"),
        ];
        let p = plan(&own, &nodes);
        let routed: Vec<(&str, String)> = p
            .routes
            .iter()
            .map(|(n, r)| (n.as_str(), format!("{} via {}", r.pod_cidr, r.via)))
            .collect();
        assert_eq!(
            routed,
            [
                ("b", "10.244.2.0/24 via 10.0.0.2".to_string()),
                ("g", "10.244.7.0/24 via 192.0.2.7".to_string())
            ]
        );
        let refused: Vec<&str> = p.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, ["c", "d", "e", "f"]);
        let why = |n: &str| &p.refused.iter().find(|r| r.0 == n).unwrap().1;
        assert!(why("c").contains("overlaps node b's"), "{}", why("c"));
        assert!(
            why("d").contains("outside the cluster CIDR"),
            "{}",
            why("d")
        );
        assert!(why("e").contains("node a's own"), "{}", why("e"));
    }
}
