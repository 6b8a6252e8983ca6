//! What the compiler reads (pods, namespaces, policies, reduced to the
//! fields NetworkPolicy looks at) and what it produces (allow rules per
//! local pod).

pub use apimachinery::cidr::Cidr;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

/// Labels as Kubernetes keeps them.
pub type Labels = BTreeMap<String, String>;

/// A transport protocol a policy port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From a policy's or container port's `protocol` (TCP when absent).
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// The name Kubernetes uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

/// A named container port: what a policy's `port: http` resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod as NetworkPolicy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// Its address, once it has one; pods without one are nobody's peer.
    pub ip: Option<Ipv4Addr>,
    pub ports: Vec<NamedPort>,
    /// Whether it runs on this node: only those get rules.
    pub local: bool,
}

impl PodInfo {
    /// The node at `ip` as NetworkPolicy peers see it. The node answers
    /// the cluster DNS (Service kube-system/kube-dns), so it takes the
    /// place of the DNS pods elsewhere: in kube-system, labelled
    /// `k8s-app: kube-dns`, with their named ports. The usual rules
    /// allowing DNS then allow it here, and nothing else of the node is
    /// open to a pod whose egress is isolated.
    pub fn node_dns(ip: Ipv4Addr) -> Self {
        let port = |name: &str, protocol| NamedPort {
            name: name.to_string(),
            protocol,
            port: 53,
        };
        Self {
            namespace: "kube-system".into(),
            name: "node-dns".into(),
            labels: Labels::from([("k8s-app".into(), "kube-dns".into())]),
            ip: Some(ip),
            ports: vec![port("dns", Protocol::Udp), port("dns-tcp", Protocol::Tcp)],
            local: false,
        }
    }

    /// Reads a pod object; `node` is this node's name. Pods on the host's
    /// network share the node's address and are not endpoints of their own.
    pub fn from_pod(pod: &Pod, node: &str) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        Some(Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone()?,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            ports,
            local: spec.node_name.as_deref() == Some(node),
        })
    }

    /// The port `name` resolves to on this pod for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Namespace labels by namespace name.
pub fn namespace_labels(ns: &Namespace) -> Option<(String, Labels)> {
    let name = ns.metadata.name.clone()?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    // Set by Kubernetes on every namespace; policies select by it.
    labels
        .entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| name.clone());
    Some((name, labels))
}

/// A numeric security identity: pods of one namespace with one label set
/// share it, so rules name identities rather than pods.
pub type Identity = u32;

/// Traffic from or to the node itself.
pub const HOST_IDENTITY: Identity = 1;
/// An address no pod of the cluster has.
pub const WORLD_IDENTITY: Identity = 2;
/// The first identity given to a label set.
pub const FIRST_POD_IDENTITY: Identity = 256;

/// Whom a rule lets through.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Every address, pod or not (a rule without `from`/`to`).
    Any,
    /// Pods of one identity.
    Identity(Identity),
    /// Addresses in `cidr` but in none of `except` (an ipBlock).
    Cidr { cidr: Cidr, except: Vec<Cidr> },
}

/// Which packets of a peer a rule lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ports {
    /// Every protocol and port (a rule without `ports`).
    All,
    /// Ports `first..=last` of one protocol.
    Range {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
}

/// One allow rule of one direction of one pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub peer: Peer,
    pub ports: Ports,
}

/// One direction of a pod's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Direction {
    /// Some policy selecting the pod has this policy type: only what
    /// `rules` allow passes. Otherwise everything passes.
    pub isolated: bool,
    pub rules: Vec<Rule>,
}

/// The compiled policy of one local pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub identity: Identity,
    pub ingress: Direction,
    pub egress: Direction,
}

/// Everything the datapath needs: who is who, and each local pod's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Every pod address in the cluster with its identity.
    pub identities: BTreeMap<Ipv4Addr, Identity>,
    /// Local pods by (namespace, name).
    pub endpoints: BTreeMap<(String, String), Endpoint>,
}
