//! Filters (may the pod run on this node?) and scores (how good is it?),
//! in the order and with the wording of kube-scheduler's plugins, so a
//! `FailedScheduling` event reads the way Kubernetes users know.

use std::collections::{BTreeMap, HashMap, HashSet};

use apimachinery::nodeaffinity;
use apimachinery::selectors::selector_matches;
use apimachinery::taints::tolerates;
use k8s_openapi::api::core::v1::{
    NodeSelectorTerm, PodAffinityTerm, PreferredSchedulingTerm, Taint, Toleration,
    TopologySpreadConstraint,
};

use super::cache::{Cache, NodeInfo, PodInfo};

pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// One node selector term against a cached node.
fn term_matches(t: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    nodeaffinity::term_matches(t, &node.labels, &node.name)
}

/// Everything computed once per pod before the nodes are walked.
pub struct PreFilter {
    tolerations: Vec<Toleration>,
    node_selector: BTreeMap<String, String>,
    required_terms: Option<Vec<NodeSelectorTerm>>,
    preferred_terms: Vec<PreferredSchedulingTerm>,
    /// Required pod affinity terms with the domains holding a matching pod.
    affinity: Vec<(PodAffinityTerm, HashSet<String>)>,
    /// True when no pod anywhere matches any affinity term and the pod
    /// matches its own terms: the first replica may go anywhere.
    affinity_self_satisfied: bool,
    /// Required anti-affinity terms with the domains holding a matching pod.
    anti_affinity: Vec<(PodAffinityTerm, HashSet<String>)>,
    /// (topologyKey, value) domains forbidden by existing pods' anti-affinity.
    existing_anti: HashSet<(String, String)>,
    hard_spread: Vec<Spread>,
    soft_spread: Vec<Spread>,
}

struct Spread {
    c: TopologySpreadConstraint,
    counts: HashMap<String, i64>,
    min: i64,
    self_match: i64,
}

fn term_namespaces(term: &PodAffinityTerm, own: &str) -> Vec<String> {
    match &term.namespaces {
        Some(n) if !n.is_empty() => n.clone(),
        _ => vec![own.to_string()],
    }
}

fn term_matches_pod(term: &PodAffinityTerm, owner_ns: &str, other: &PodInfo) -> bool {
    // A namespaceSelector is treated as "all namespaces" when empty and is
    // otherwise not supported: namespaces' labels are not cached.
    let ns_ok = match &term.namespace_selector {
        Some(s)
            if s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|m| m.is_empty()) =>
        {
            true
        }
        _ => term_namespaces(term, owner_ns).contains(&other.namespace),
    };
    ns_ok && selector_matches(term.label_selector.as_ref(), &other.labels)
}

impl PreFilter {
    pub fn new(pod: &PodInfo, cache: &Cache) -> Self {
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let affinity = spec.affinity.clone().unwrap_or_default();
        let node_aff = affinity.node_affinity.unwrap_or_default();
        let required_terms = node_aff
            .required_during_scheduling_ignored_during_execution
            .map(|r| r.node_selector_terms);
        let pod_aff = affinity
            .pod_affinity
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .unwrap_or_default();
        let pod_anti = affinity
            .pod_anti_affinity
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .unwrap_or_default();
        let mut pre = PreFilter {
            tolerations: spec.tolerations.unwrap_or_default(),
            node_selector: spec.node_selector.unwrap_or_default(),
            required_terms,
            preferred_terms: node_aff
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            affinity: pod_aff.into_iter().map(|t| (t, HashSet::new())).collect(),
            affinity_self_satisfied: false,
            anti_affinity: pod_anti.into_iter().map(|t| (t, HashSet::new())).collect(),
            existing_anti: HashSet::new(),
            hard_spread: Vec::new(),
            soft_spread: Vec::new(),
        };
        if !pre.affinity.is_empty() || !pre.anti_affinity.is_empty() {
            for node in &cache.nodes {
                for other in node.pods.values() {
                    for (term, domains) in
                        pre.affinity.iter_mut().chain(pre.anti_affinity.iter_mut())
                    {
                        if let Some(v) = node.labels.get(&term.topology_key) {
                            if term_matches_pod(term, &pod.namespace, other) {
                                domains.insert(v.clone());
                            }
                        }
                    }
                }
            }
            pre.affinity_self_satisfied = pre.affinity.iter().all(|(_, d)| d.is_empty())
                && pre
                    .affinity
                    .iter()
                    .all(|(t, _)| term_matches_pod(t, &pod.namespace, pod));
        }
        for other in cache.with_anti_affinity.values() {
            let Some(node) = cache.node_of(&other.key).and_then(|n| cache.node(n)) else {
                continue;
            };
            let terms = other
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                });
            for term in terms.into_iter().flatten() {
                if term_matches_pod(term, &other.namespace, pod) {
                    if let Some(v) = node.labels.get(&term.topology_key) {
                        pre.existing_anti
                            .insert((term.topology_key.clone(), v.clone()));
                    }
                }
            }
        }
        for c in spec.topology_spread_constraints.unwrap_or_default() {
            let hard = c.when_unsatisfiable == "DoNotSchedule";
            let mut counts: HashMap<String, i64> = HashMap::new();
            for node in &cache.nodes {
                let Some(v) = node.labels.get(&c.topology_key) else {
                    continue;
                };
                if !pre.node_affinity_ok(node) {
                    continue;
                }
                let n = node
                    .pods
                    .values()
                    .filter(|o| {
                        // A pod on its way out no longer counts towards the
                        // spread (its resources still do, until it is gone).
                        !o.terminating
                            && o.namespace == pod.namespace
                            && selector_matches(c.label_selector.as_ref(), &o.labels)
                    })
                    .count() as i64;
                *counts.entry(v.clone()).or_default() += n;
            }
            let min = counts.values().copied().min().unwrap_or(0);
            let self_match = i64::from(selector_matches(c.label_selector.as_ref(), &pod.labels));
            let s = Spread {
                c,
                counts,
                min,
                self_match,
            };
            if hard {
                pre.hard_spread.push(s);
            } else {
                pre.soft_spread.push(s);
            }
        }
        pre
    }

    fn node_affinity_ok(&self, node: &NodeInfo) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
            && self
                .required_terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| term_matches(t, node)))
    }

    /// Runs the filters in kube-scheduler's order; the reasons of the first
    /// failing one explain why the node does not fit.
    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        // NodeUnschedulable
        if node.unschedulable
            && !self.tolerations.iter().any(|t| {
                tolerates(
                    t,
                    &Taint {
                        key: "node.kubernetes.io/unschedulable".into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    },
                )
            })
        {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
        if !node.ready {
            return Err(vec!["node(s) were not ready".into()]);
        }
        // TaintToleration
        for taint in &node.taints {
            if taint.effect == "PreferNoSchedule" {
                continue;
            }
            if !self.tolerations.iter().any(|t| tolerates(t, taint)) {
                return Err(vec![format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.as_deref().unwrap_or("")
                )]);
            }
        }
        // NodeAffinity
        if !self.node_affinity_ok(node) {
            return Err(vec![
                "node(s) didn't match Pod's node affinity/selector".into()
            ]);
        }
        // NodePorts
        for (proto, ip, port) in &pod.host_ports {
            let clash = node.used_ports.iter().any(|(p, i, n)| {
                p == proto && n == port && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
            });
            if clash {
                return Err(vec![
                    "node(s) didn't have free ports for the requested pod ports".into(),
                ]);
            }
        }
        // NodeResourcesFit
        let mut insufficient = Vec::new();
        let a = &node.allocatable;
        let r = &node.requested;
        let p = &pod.requests;
        if r.pods + 1 > a.pods {
            insufficient.push("Too many pods".to_string());
        }
        if p.cpu > 0 && r.cpu + p.cpu > a.cpu {
            insufficient.push("Insufficient cpu".into());
        }
        if p.memory > 0 && r.memory + p.memory > a.memory {
            insufficient.push("Insufficient memory".into());
        }
        if p.ephemeral_storage > 0
            && r.ephemeral_storage + p.ephemeral_storage > a.ephemeral_storage
        {
            insufficient.push("Insufficient ephemeral-storage".into());
        }
        for (name, want) in &p.scalar {
            let have = a.scalar.get(name).copied().unwrap_or(0);
            let used = r.scalar.get(name).copied().unwrap_or(0);
            if *want > 0 && used + want > have {
                insufficient.push(format!("Insufficient {name}"));
            }
        }
        if !insufficient.is_empty() {
            return Err(insufficient);
        }
        // PodTopologySpread
        for s in &self.hard_spread {
            let Some(v) = node.labels.get(&s.c.topology_key) else {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into(),
                ]);
            };
            let count = s.counts.get(v).copied().unwrap_or(0);
            if count + s.self_match - s.min > i64::from(s.c.max_skew) {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints".into()
                ]);
            }
        }
        // InterPodAffinity: the pod's own affinity, its anti-affinity, then
        // the anti-affinity of pods already placed.
        if !self.affinity_self_satisfied {
            for (term, domains) in &self.affinity {
                let ok = node
                    .labels
                    .get(&term.topology_key)
                    .is_some_and(|v| domains.contains(v));
                if !ok {
                    return Err(vec!["node(s) didn't match pod affinity rules".into()]);
                }
            }
        }
        for (term, domains) in &self.anti_affinity {
            if node
                .labels
                .get(&term.topology_key)
                .is_some_and(|v| domains.contains(v))
            {
                return Err(vec!["node(s) didn't match pod anti-affinity rules".into()]);
            }
        }
        for (key, value) in &self.existing_anti {
            if node.labels.get(key) == Some(value) {
                return Err(vec![
                    "node(s) didn't satisfy existing pods anti-affinity rules".into(),
                ]);
            }
        }
        Ok(())
    }

    /// Scores the feasible nodes (0..=100 per plugin, weighted) and returns
    /// one total per node, in the order given.
    pub fn score(&self, pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut total = vec![0i64; nodes.len()];
        let mut spread_raw = Vec::with_capacity(nodes.len());
        let mut pref_raw = Vec::with_capacity(nodes.len());
        let mut soft_raw = Vec::with_capacity(nodes.len());
        let mut taint_raw = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let cpu = fraction(n.nonzero_cpu + pod.nonzero_cpu, n.allocatable.cpu);
            let mem = fraction(n.nonzero_memory + pod.nonzero_memory, n.allocatable.memory);
            // NodeResourcesFit with LeastAllocated: emptier is better.
            let least = ((1.0 - cpu).max(0.0) + (1.0 - mem).max(0.0)) * 50.0;
            // NodeResourcesBalancedAllocation: cpu and memory used alike.
            let balanced = (1.0 - (cpu.min(1.0) - mem.min(1.0)).abs() / 2.0) * 100.0;
            total[i] += least as i64 + balanced as i64;
            spread_raw.push(
                pod.owner
                    .as_ref()
                    .and_then(|o| n.owners.get(o))
                    .copied()
                    .unwrap_or(0) as i64,
            );
            pref_raw.push(
                self.preferred_terms
                    .iter()
                    .filter(|t| term_matches(&t.preference, n))
                    .map(|t| i64::from(t.weight))
                    .sum::<i64>(),
            );
            soft_raw.push(
                self.soft_spread
                    .iter()
                    .map(|s| {
                        n.labels
                            .get(&s.c.topology_key)
                            .and_then(|v| s.counts.get(v))
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum::<i64>(),
            );
            taint_raw.push(
                n.taints
                    .iter()
                    .filter(|t| {
                        t.effect == "PreferNoSchedule"
                            && !self.tolerations.iter().any(|tol| tolerates(tol, t))
                    })
                    .count() as i64,
            );
        }
        // Spreading replicas of one controller (weight 2): fewer is better.
        add_normalized(&mut total, &spread_raw, true, 2);
        // Preferred node affinity (weight 2): more weight matched is better.
        add_normalized(&mut total, &pref_raw, false, 2);
        // ScheduleAnyway topology spread (weight 2): fewer is better.
        add_normalized(&mut total, &soft_raw, true, 2);
        // TaintToleration (weight 3): fewer untolerated PreferNoSchedule.
        add_normalized(&mut total, &taint_raw, true, 3);
        total
    }
}

fn fraction(used: i64, total: i64) -> f64 {
    if total <= 0 {
        1.0
    } else {
        used as f64 / total as f64
    }
}

fn add_normalized(total: &mut [i64], raw: &[i64], reverse: bool, weight: i64) {
    let max = raw.iter().copied().max().unwrap_or(0);
    for (t, r) in total.iter_mut().zip(raw) {
        let s = if max == 0 {
            if reverse {
                100
            } else {
                0
            }
        } else if reverse {
            100 * (max - r) / max
        } else {
            100 * r / max
        };
        *t += s * weight;
    }
}

/// How many feasible nodes to find before scoring, as kube-scheduler's
/// adaptive percentageOfNodesToScore: all of a small cluster, a shrinking
/// share of a big one, never fewer than 100.
pub fn feasible_nodes_to_find(nodes: usize, percentage: u32) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let pct = if percentage == 0 {
        (50 - (nodes / 125) as i64).max(5) as usize
    } else {
        percentage.min(100) as usize
    };
    (nodes * pct / 100).max(MIN)
}

/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match ...`
pub fn unschedulable_message(total: usize, reasons: &HashMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}
