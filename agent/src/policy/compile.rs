//! The policy compiler: from pods, namespaces and NetworkPolicies to each
//! local pod's allow rules over identities and CIDRs, following upstream
//! semantics.
//!
//! - A pod is isolated for a direction only if some policy selecting it
//!   lists that policy type; then what any such policy allows passes (the
//!   union), and nothing else.
//! - A rule without peers allows every peer; without ports, every port and
//!   protocol. A peer with a namespaceSelector and a podSelector selects
//!   pods matching both; a podSelector alone means the policy's namespace.
//! - ipBlock matches addresses, pods' included, as the upstream e2e model
//!   expects.
//! - A named port resolves against the pod receiving the traffic: the
//!   selected pod for ingress, each peer pod for egress.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use apimachinery::selectors::LabelSelector;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::*;

/// Hands out identities to (namespace, labels) and keeps them while the
/// label set exists, so a recompile changes only what changed.
#[derive(Debug, Default)]
pub struct Identities {
    by_key: HashMap<(String, Labels), Identity>,
    next: Identity,
}

impl Identities {
    /// The identity of pods in `namespace` labelled `labels`.
    pub fn get(&mut self, namespace: &str, labels: &Labels) -> Identity {
        let key = (namespace.to_string(), labels.clone());
        if let Some(id) = self.by_key.get(&key) {
            return *id;
        }
        let id = self.next.max(FIRST_POD_IDENTITY);
        self.next = id + 1;
        self.by_key.insert(key, id);
        id
    }

    /// Forgets identities no pod holds any more.
    fn retain(&mut self, live: &BTreeSet<Identity>) {
        self.by_key.retain(|_, id| live.contains(id));
    }
}

/// The inputs of one compile.
pub struct Inputs<'a> {
    pub pods: &'a [PodInfo],
    pub namespaces: &'a BTreeMap<String, Labels>,
    pub policies: &'a [NetworkPolicy],
}

/// A policy with its selectors parsed once.
struct Parsed<'a> {
    policy: &'a NetworkPolicy,
    namespace: &'a str,
    selects: LabelSelector,
    ingress: bool,
    egress: bool,
}

/// Compiles the rules of every local pod.
pub fn compile(ids: &mut Identities, input: &Inputs) -> Compiled {
    let pod_ids: Vec<Identity> = input
        .pods
        .iter()
        .map(|p| ids.get(&p.namespace, &p.labels))
        .collect();
    ids.retain(&pod_ids.iter().copied().collect());
    let mut out = Compiled::default();
    for (pod, id) in input.pods.iter().zip(&pod_ids) {
        if let Some(ip) = pod.ip {
            out.identities.insert(ip, *id);
        }
    }
    let parsed: Vec<Parsed> = input.policies.iter().filter_map(parse).collect();
    let ctx = Context {
        input,
        pod_ids: &pod_ids,
    };
    for (pod, id) in input.pods.iter().zip(&pod_ids) {
        if !pod.local {
            continue;
        }
        let mut ep = Endpoint {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ip: pod.ip,
            identity: *id,
            ..Default::default()
        };
        for p in parsed.iter().filter(|p| selects(p, pod)) {
            let spec = p.policy.spec.as_ref();
            if p.ingress {
                ep.ingress.isolated = true;
                for rule in spec.and_then(|s| s.ingress.as_ref()).into_iter().flatten() {
                    let peers = ctx.peers(p.namespace, rule.from.as_deref());
                    ctx.rules(&mut ep.ingress, &peers, rule.ports.as_deref(), Some(pod));
                }
            }
            if p.egress {
                ep.egress.isolated = true;
                for rule in spec.and_then(|s| s.egress.as_ref()).into_iter().flatten() {
                    let peers = ctx.peers(p.namespace, rule.to.as_deref());
                    ctx.rules(&mut ep.egress, &peers, rule.ports.as_deref(), None);
                }
            }
        }
        for dir in [&mut ep.ingress, &mut ep.egress] {
            dir.rules.sort();
            dir.rules.dedup();
        }
        out.endpoints
            .insert((pod.namespace.clone(), pod.name.clone()), ep);
    }
    out
}

fn parse(policy: &NetworkPolicy) -> Option<Parsed<'_>> {
    let spec = policy.spec.as_ref()?;
    // An absent podSelector is the empty one: every pod of the namespace.
    let selects = match &spec.pod_selector {
        Some(sel) => LabelSelector::from_typed(sel).ok()?,
        None => LabelSelector::everything(),
    };
    let types = spec.policy_types.as_deref().unwrap_or_default();
    // An object stored without policyTypes (the API server defaults them)
    // reads as upstream's defaulting would have made it.
    let (ingress, egress) = if types.is_empty() {
        (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()))
    } else {
        (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        )
    };
    Some(Parsed {
        policy,
        namespace: policy.metadata.namespace.as_deref().unwrap_or("default"),
        selects,
        ingress,
        egress,
    })
}

fn selects(p: &Parsed, pod: &PodInfo) -> bool {
    p.namespace == pod.namespace && p.selects.matches_labels(&pod.labels)
}

/// What the peers of one rule resolve to.
enum Peers<'a> {
    /// No peers listed: everyone.
    Any,
    /// The listed peers: matching pods (by index into the inputs) and blocks.
    Listed {
        pods: Vec<&'a PodInfo>,
        pod_ids: Vec<Identity>,
        blocks: Vec<Peer>,
    },
}

struct Context<'a> {
    input: &'a Inputs<'a>,
    pod_ids: &'a [Identity],
}

impl<'a> Context<'a> {
    /// The peers `list` selects, for a policy in `namespace`.
    fn peers(&self, namespace: &str, list: Option<&[NetworkPolicyPeer]>) -> Peers<'a> {
        let Some(list) = list.filter(|l| !l.is_empty()) else {
            return Peers::Any;
        };
        let mut pods = Vec::new();
        let mut pod_ids = Vec::new();
        let mut blocks = Vec::new();
        for peer in list {
            if let Some(block) = &peer.ip_block {
                if let Some(cidr) = Cidr::parse(&block.cidr) {
                    let except = block.except.iter().flatten();
                    let except = except.filter_map(|e| Cidr::parse(e)).collect();
                    blocks.push(Peer::Cidr { cidr, except });
                }
                continue;
            }
            let parse = |s: &Option<_>| s.as_ref().map(LabelSelector::from_typed);
            // An unusable selector selects nothing rather than everything.
            let pod_sel = match parse(&peer.pod_selector) {
                Some(Err(_)) => continue,
                Some(Ok(s)) => Some(s),
                None => None,
            };
            let ns_sel = match parse(&peer.namespace_selector) {
                Some(Err(_)) => continue,
                Some(Ok(s)) => Some(s),
                None => None,
            };
            if pod_sel.is_none() && ns_sel.is_none() {
                continue;
            }
            for (pod, id) in self.input.pods.iter().zip(self.pod_ids) {
                let ns_ok = match &ns_sel {
                    None => pod.namespace == namespace,
                    Some(sel) => self
                        .input
                        .namespaces
                        .get(&pod.namespace)
                        .is_some_and(|l| sel.matches_labels(l)),
                };
                let pod_ok = pod_sel
                    .as_ref()
                    .is_none_or(|s| s.matches_labels(&pod.labels));
                if ns_ok && pod_ok && pod.ip.is_some() {
                    pods.push(pod);
                    pod_ids.push(*id);
                }
            }
        }
        Peers::Listed {
            pods,
            pod_ids,
            blocks,
        }
    }

    /// Adds the rules `peers` × `ports` to `dir`. `target` is the pod named
    /// ports resolve on for ingress; for egress they resolve on each peer.
    fn rules(
        &self,
        dir: &mut Direction,
        peers: &Peers,
        ports: Option<&[NetworkPolicyPort]>,
        target: Option<&PodInfo>,
    ) {
        let ports = ports.filter(|p| !p.is_empty());
        let mut add = |peer: Peer, on: &[&PodInfo]| match ports {
            None => dir.rules.push(Rule {
                peer,
                ports: Ports::All,
            }),
            Some(list) => {
                for p in list {
                    for range in resolve(p, on) {
                        dir.rules.push(Rule {
                            peer: peer.clone(),
                            ports: range,
                        });
                    }
                }
            }
        };
        match peers {
            Peers::Any => add(Peer::Any, target.as_slice()),
            Peers::Listed {
                pods,
                pod_ids,
                blocks,
            } => {
                for block in blocks {
                    add(block.clone(), target.as_slice());
                }
                for (pod, id) in pods.iter().zip(pod_ids) {
                    let on: &[&PodInfo] = match target {
                        Some(t) => &[t],
                        None => std::slice::from_ref(pod),
                    };
                    add(Peer::Identity(*id), on);
                }
            }
        }
    }
}

/// The port ranges one policy port stands for; a named port gives one per
/// pod in `on` that has it.
fn resolve(port: &NetworkPolicyPort, on: &[&PodInfo]) -> Vec<Ports> {
    let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
        return vec![];
    };
    let all = |protocol| Ports::Range {
        protocol,
        first: 1,
        last: u16::MAX,
    };
    match &port.port {
        None => vec![all(protocol)],
        Some(IntOrString::Int(n)) => {
            let Ok(first) = u16::try_from(*n) else {
                return vec![];
            };
            let last = port
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .filter(|e| *e >= first)
                .unwrap_or(first);
            vec![Ports::Range {
                protocol,
                first,
                last,
            }]
        }
        Some(IntOrString::String(name)) => on
            .iter()
            .filter_map(|pod| pod.named_port(name, protocol))
            .map(|n| Ports::Range {
                protocol,
                first: n,
                last: n,
            })
            .collect(),
    }
}
