//! The pure decisions of a DaemonSet sync, from the nodes and the daemon
//! pods alone: which nodes need a pod, which pods go, how far a rolling
//! update may move, and the status that comes out of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::nodes::{should_run, target_node, HASH_LABEL};
use crate::controllers::context::{pod_available, pod_ready_since};

/// What one sync does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes that get a new daemon pod.
    pub create: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Failed pods to replace, as (node, pod): deleted unless their node
    /// is backing off from failing pods.
    pub failed: Vec<(String, String)>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty() && self.failed.is_empty()
    }
}

/// Everything a decision reads.
pub struct View<'a> {
    /// The template's pod spec with the daemon tolerations.
    pub spec: &'a PodSpec,
    pub nodes: &'a [Arc<Node>],
    /// The pods this DaemonSet controls.
    pub pods: &'a [Arc<Pod>],
    /// The current revision's hash.
    pub hash: &'a str,
    pub min_ready: i32,
    pub now: Timestamp,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn updated(p: &Pod, hash: &str) -> bool {
    p.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)
}

/// Scheduled before unscheduled, then oldest first, as Kubernetes orders
/// the pods of one node.
fn oldest_first(pods: &mut [&Arc<Pod>]) {
    pods.sort_by_key(|p| {
        let bound = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (!bound, created, p.name_any())
    });
}

impl View<'_> {
    /// The daemon pods per node they are for; `live` leaves out pods being
    /// deleted and finished ones.
    fn by_node(&self, live: bool) -> BTreeMap<String, Vec<&Arc<Pod>>> {
        let mut out: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
        for p in self.pods {
            if live
                && (p.metadata.deletion_timestamp.is_some()
                    || matches!(phase(p), "Succeeded" | "Failed"))
            {
                continue;
            }
            if let Some(n) = target_node(p) {
                out.entry(n).or_default().push(p);
            }
        }
        for pods in out.values_mut() {
            oldest_first(pods);
        }
        out
    }

    fn available(&self, p: &Pod) -> bool {
        pod_available(p, self.min_ready, self.now)
    }

    fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.name_any() == name)
    }

    /// One pod on every node that should run one, none elsewhere. With
    /// `surge`, a node may briefly hold an old and a new pod.
    pub fn manage(&self, surge: bool) -> Plan {
        let mut plan = Plan::default();
        let by_node = self.by_node(false);
        for node in self.nodes {
            let name = node.name_any();
            let (run, keep) = should_run(self.spec, node);
            let pods: Vec<&Arc<Pod>> = by_node.get(&name).cloned().unwrap_or_default();
            if run && pods.is_empty() {
                plan.create.push(name);
                continue;
            }
            let live: Vec<&Arc<Pod>> = pods
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            if !keep {
                plan.delete.extend(live.iter().map(|p| p.name_any()));
                continue;
            }
            let mut running = Vec::new();
            for p in live {
                match phase(p) {
                    "Failed" => plan.failed.push((name.clone(), p.name_any())),
                    "Succeeded" => plan.delete.push(p.name_any()),
                    _ => running.push(p),
                }
            }
            if !surge {
                // The oldest stays, any extra goes.
                plan.delete
                    .extend(running.iter().skip(1).map(|p| p.name_any()));
                continue;
            }
            if running.is_empty() && run {
                plan.create.push(name);
                continue;
            }
            // Surging: at most the oldest new and the oldest old pod, and
            // the old one only while the new one is not ready yet.
            let (mut newest, mut oldest) = (None, None);
            for p in running {
                let slot = if updated(p, self.hash) {
                    &mut newest
                } else {
                    &mut oldest
                };
                if slot.is_none() {
                    *slot = Some(p);
                } else {
                    plan.delete.push(p.name_any());
                }
            }
            if let (Some(n), Some(o)) = (newest, oldest) {
                if pod_ready_since(o).is_none() || pod_ready_since(n).is_some() {
                    plan.delete.push(o.name_any());
                }
            }
        }
        // A pod for a node that no longer exists and was never bound has
        // nowhere to go; bound ones are the pod garbage collector's.
        for (node, pods) in &by_node {
            if self.node(node).is_none() {
                plan.delete.extend(
                    pods.iter()
                        .filter(|p| p.spec.as_ref().is_none_or(|s| s.node_name.is_none()))
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .map(|p| p.name_any()),
                );
            }
        }
        plan
    }

    /// How many nodes should run the pod.
    pub fn desired(&self) -> i32 {
        self.nodes
            .iter()
            .filter(|n| should_run(self.spec, n).0)
            .count() as i32
    }

    /// The next step of a rolling update: without surge, delete old pods
    /// while at most `max_unavailable` nodes lack an available pod (the
    /// next sync puts new ones there); with surge, start new pods beside
    /// at most `max_surge` available old ones and delete each old pod once
    /// its replacement is available.
    pub fn rolling_update(&self, max_surge: i32, max_unavailable: i32) -> Plan {
        let mut plan = Plan::default();
        let by_node = self.by_node(true);
        if max_surge == 0 {
            let mut unavailable = 0;
            let mut replace_now = Vec::new();
            let mut candidates = Vec::new();
            for pods in by_node.values() {
                let (new, old): (Vec<&&Arc<Pod>>, Vec<&&Arc<Pod>>) =
                    pods.iter().partition(|p| updated(p, self.hash));
                match (new.as_slice(), old.as_slice()) {
                    ([n], []) => unavailable += i32::from(!self.available(n)),
                    ([], [o]) if !self.available(o) => replace_now.push(o.name_any()),
                    ([], [o]) => candidates.push(o.name_any()),
                    // Several pods, or none: manage settles the node first.
                    _ => unavailable += 1,
                }
            }
            let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32);
            plan.delete = replace_now;
            plan.delete
                .extend(candidates.into_iter().take(room as usize));
            return plan;
        }
        let mut surging = 0;
        let mut candidates = Vec::new();
        for (node, pods) in &by_node {
            let (new, old): (Vec<&&Arc<Pod>>, Vec<&&Arc<Pod>>) =
                pods.iter().partition(|p| updated(p, self.hash));
            match (new.as_slice(), old.as_slice()) {
                (_, []) => {}
                ([], [o]) => {
                    let runs = self.node(node).is_some_and(|n| should_run(self.spec, n).0);
                    if !runs {
                        plan.delete.push(o.name_any());
                    } else if !self.available(o) {
                        plan.create.push(node.clone());
                    } else {
                        candidates.push(node.clone());
                    }
                }
                ([n], [o]) if self.available(n) => plan.delete.push(o.name_any()),
                ([_], [_]) => surging += 1,
                _ => surging += 1,
            }
        }
        let room = (max_surge - surging).clamp(0, candidates.len() as i32);
        plan.create
            .extend(candidates.into_iter().take(room as usize));
        plan
    }

    /// The status counts, computed as Kubernetes does from the oldest live
    /// pod of each node.
    pub fn counts(&self) -> Counts {
        let by_node = self.by_node(true);
        let mut c = Counts::default();
        for node in self.nodes {
            let pods = by_node.get(&node.name_any());
            if !should_run(self.spec, node).0 {
                c.misscheduled += i32::from(pods.is_some());
                continue;
            }
            c.desired += 1;
            let Some(p) = pods.and_then(|p| p.first()) else {
                continue;
            };
            c.current += 1;
            if pod_ready_since(p).is_some() {
                c.ready += 1;
                c.available += i32::from(self.available(p));
            }
            c.updated += i32::from(updated(p, self.hash));
        }
        c
    }
}

/// The counts `kubectl get ds` and `kubectl rollout status` read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counts {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub updated: i32,
    pub available: i32,
}

fn scaled(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * f64::from(total) / 100.0).ceil().max(0.0) as i32
        }
    }
}

/// (maxSurge, maxUnavailable) in nodes, percentages of the desired count
/// rounded up; both zero would never progress, so unavailable becomes 1.
pub fn surge_and_unavailable(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, 0);
    let unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), desired, 1);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// Whether template changes roll out by themselves (RollingUpdate, the
/// default) rather than waiting for pods to be deleted (OnDelete).
pub fn rolls_out(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}
