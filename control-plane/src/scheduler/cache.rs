//! The scheduler's own view of nodes and the pods assigned to them, with
//! the requested resources summed per node so a fit check is arithmetic.
//! Pods the scheduler has decided on but whose binding is not yet visible
//! are "assumed": they count on their node until the watch confirms them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use apimachinery::quantity;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};

/// Requests Kubernetes assumes for a container that states none, so empty
/// pods still spread.
const DEFAULT_CPU_MILLIS: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

/// Resource amounts: cpu in millicores, the rest in units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    fn from_map(
        map: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    ) -> Self {
        let mut r = Resources::default();
        for (name, q) in map {
            let parse = if name == "cpu" {
                quantity::cpu_millis(&q.0)
            } else {
                quantity::value(&q.0)
            };
            let Ok(v) = parse else { continue };
            match name.as_str() {
                "cpu" => r.cpu = v,
                "memory" => r.memory = v,
                "ephemeral-storage" => r.ephemeral_storage = v,
                "pods" => r.pods = v,
                n if n.starts_with("hugepages-") || n.contains('/') => {
                    r.scalar.insert(n.to_string(), v);
                }
                _ => {}
            }
        }
        r
    }

    fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    fn max(&mut self, o: &Resources) {
        self.cpu = self.cpu.max(o.cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// What the scheduler needs of a pod, parsed once.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Pod,
    pub key: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// Effective requests: max(sum of containers, largest init container) plus overhead.
    pub requests: Resources,
    /// Requests with Kubernetes' non-zero defaults, for scoring.
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    /// (protocol, hostIP, hostPort) the pod claims.
    pub host_ports: Vec<(String, String, i32)>,
    /// The uid of the controller that owns the pod, for spreading.
    pub owner: Option<String>,
    /// Deleted and terminating: out of spreading, still holding resources.
    pub terminating: bool,
}

impl PodInfo {
    pub fn new(pod: Pod) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let key = format!("{namespace}/{}", pod.metadata.name.as_deref().unwrap_or(""));
        let mut requests = Resources::default();
        let mut nonzero_cpu = 0;
        let mut nonzero_memory = 0;
        let mut host_ports = Vec::new();
        let mut init_max = Resources::default();
        if let Some(spec) = &pod.spec {
            for c in &spec.containers {
                let r = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref().or(r.limits.as_ref()))
                    .map(Resources::from_map)
                    .unwrap_or_default();
                nonzero_cpu += if r.cpu == 0 {
                    DEFAULT_CPU_MILLIS
                } else {
                    r.cpu
                };
                nonzero_memory += if r.memory == 0 {
                    DEFAULT_MEMORY
                } else {
                    r.memory
                };
                requests.add(&r);
                for p in c.ports.iter().flatten() {
                    if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                        host_ports.push((
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                            hp,
                        ));
                    }
                }
            }
            for c in spec.init_containers.iter().flatten() {
                if let Some(r) = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref().or(r.limits.as_ref()))
                {
                    init_max.max(&Resources::from_map(r));
                }
            }
            if let Some(o) = &spec.overhead {
                requests.add(&Resources::from_map(o));
            }
        }
        requests.max(&init_max);
        requests.pods = 1;
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        Self {
            key,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            namespace,
            requests,
            nonzero_cpu,
            nonzero_memory,
            host_ports,
            owner,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            pod,
        }
    }

    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }
}

/// One node and what is placed on it.
#[derive(Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    pub pods: HashMap<String, Arc<PodInfo>>,
    pub used_ports: HashSet<(String, String, i32)>,
    /// Pods per owning controller uid, for spreading replicas.
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    fn set_node(&mut self, node: &Node) {
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.clone().unwrap_or_default();
        self.taints = spec.taints.unwrap_or_default();
        self.unschedulable = spec.unschedulable.unwrap_or(false);
        let status = node.status.as_ref();
        self.ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        self.allocatable = status
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .map(Resources::from_map)
            .unwrap_or_default();
    }

    fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.nonzero_cpu += p.nonzero_cpu;
        self.nonzero_memory += p.nonzero_memory;
        for hp in &p.host_ports {
            self.used_ports.insert(hp.clone());
        }
        if let (Some(o), false) = (&p.owner, p.terminating) {
            *self.owners.entry(o.clone()).or_default() += 1;
        }
        if let Some(old) = self.pods.insert(p.key.clone(), p) {
            self.forget(&old);
        }
    }

    fn remove_pod(&mut self, key: &str) -> bool {
        match self.pods.remove(key) {
            Some(old) => {
                self.forget(&old);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, p: &PodInfo) {
        self.requested.sub(&p.requests);
        self.nonzero_cpu -= p.nonzero_cpu;
        self.nonzero_memory -= p.nonzero_memory;
        for hp in &p.host_ports {
            self.used_ports.remove(hp);
        }
        if let (Some(o), false) = (&p.owner, p.terminating) {
            if let Some(n) = self.owners.get_mut(o) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.owners.remove(o);
                }
            }
        }
    }
}

/// All nodes, in a stable order for round-robin search.
#[derive(Default)]
pub struct Cache {
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pod key -> node name, for every pod counted on a node.
    placed: HashMap<String, String>,
    /// Pods placed by this scheduler whose binding is not yet confirmed.
    pub assumed: HashSet<String>,
    /// Pods, anywhere, that carry required anti-affinity: checked against
    /// every incoming pod.
    pub with_anti_affinity: HashMap<String, Arc<PodInfo>>,
    /// Pods bound to a node the cache has not seen (yet): the node and pod
    /// watches are separate streams.
    waiting: HashMap<String, HashMap<String, Arc<PodInfo>>>,
}

impl Cache {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    pub fn upsert_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        match self.index.get(&name) {
            Some(i) => self.nodes[*i].set_node(node),
            None => {
                let mut info = NodeInfo::default();
                info.set_node(node);
                for (_, p) in self.waiting.remove(&name).unwrap_or_default() {
                    info.add_pod(p);
                }
                self.index.insert(name, self.nodes.len());
                self.nodes.push(info);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let removed = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
        }
        // Its pods stay bound to the name; they count again if it returns.
        self.waiting.insert(removed.name.clone(), removed.pods);
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// Counts `pod` on `node` (a confirmed binding or an assumption).
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.unplace(&pod.key);
        if has_required_anti_affinity(&pod.pod) {
            self.with_anti_affinity.insert(pod.key.clone(), pod.clone());
        }
        self.placed.insert(pod.key.clone(), node.to_string());
        match self.index.get(node) {
            Some(i) => self.nodes[*i].add_pod(pod),
            None => {
                self.waiting
                    .entry(node.to_string())
                    .or_default()
                    .insert(pod.key.clone(), pod);
            }
        }
    }

    /// Stops counting the pod wherever it was.
    pub fn unplace(&mut self, key: &str) -> bool {
        self.with_anti_affinity.remove(key);
        let Some(node) = self.placed.remove(key) else {
            return false;
        };
        match self.index.get(&node) {
            Some(i) => self.nodes[*i].remove_pod(key),
            None => {
                if let Some(w) = self.waiting.get_mut(&node) {
                    w.remove(key);
                    if w.is_empty() {
                        self.waiting.remove(&node);
                    }
                }
                true
            }
        }
    }

    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.placed.get(key).map(String::as_str)
    }
}

fn has_required_anti_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|t| !t.is_empty())
}
