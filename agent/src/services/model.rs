//! What the load balancer should hold for one Service: its frontends
//! (ClusterIP, port, protocol) and, for each, the backends its
//! EndpointSlices name. Pure functions of API objects, so every rule here
//! (named ports, readiness, terminating endpoints, traffic policy) is tested
//! without a kernel.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The transport protocols the socket hooks see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number, as the kernel reports a socket's.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    /// The protocol of IP protocol number `n`, if the balancer handles it.
    pub fn from_number(n: u8) -> Option<Self> {
        match i32::from(n) {
            libc::IPPROTO_TCP => Some(Proto::Tcp),
            libc::IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The protocol named in a Service or EndpointSlice (TCP when unset);
    /// None for SCTP, which socket hooks do not cover.
    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// A service port as clients address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.vip, self.port, self.proto)
    }
}

/// One backend address of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// What one frontend should balance over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Backends for new connections, sorted.
    pub active: Vec<Target>,
    /// Terminating backends that still serve: no new clients, but UDP
    /// sockets already sending to one keep it until it is gone.
    pub draining: Vec<Target>,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// Default of `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// The node the load balancer runs on, as Services see it.
#[derive(Clone, Copy, Debug)]
pub struct Here<'a> {
    /// For `internalTrafficPolicy` and `externalTrafficPolicy: Local`.
    pub name: &'a str,
    /// The address node ports are served on.
    pub ip: Ipv4Addr,
}

/// The frontends of `svc` and what each balances over, given the
/// EndpointSlices that name it: one per ClusterIP and port, and one per
/// node port on this node's address.
pub fn frontends<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
    here: Here<'_>,
) -> Vec<(Frontend, Desired)> {
    let node = here.name;
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let mut vips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        // "None" (headless) and IPv6 addresses fail to parse: no frontend.
        .filter_map(|ip| ip.parse().ok())
        .collect();
    vips.sort();
    vips.dedup();
    let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local_only = spec.external_traffic_policy.as_deref() == Some("Local");
    // Node ports are only allocated for these types; one left behind on a
    // Service turned ClusterIP is not served.
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let (Some(proto), Ok(port)) = (Proto::parse(p.protocol.as_deref()), u16::try_from(p.port))
        else {
            continue;
        };
        let name = p.name.as_deref().unwrap_or("");
        let mut desired = backends(slices.clone(), name, proto, local_only.then_some(node));
        desired.affinity_timeout = affinity_timeout;
        for vip in &vips {
            out.push((
                Frontend {
                    vip: *vip,
                    port,
                    proto,
                },
                desired.clone(),
            ));
        }
        let node_port = p.node_port.and_then(|n| u16::try_from(n).ok());
        if let (true, Some(node_port)) = (node_ports, node_port) {
            let mut desired = if external_local_only == local_only {
                desired
            } else {
                backends(
                    slices.clone(),
                    name,
                    proto,
                    external_local_only.then_some(node),
                )
            };
            desired.affinity_timeout = affinity_timeout;
            out.push((
                Frontend {
                    vip: here.ip,
                    port: node_port,
                    proto,
                },
                desired,
            ));
        }
    }
    out
}

/// The backends of the service port named `name`: each slice carries the
/// target port it resolved for its endpoints (a named targetPort can be a
/// different number on different pods, which then sit in different slices).
fn backends<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    name: &str,
    proto: Proto,
    only_node: Option<&str>,
) -> Desired {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let port = slice.ports.iter().flatten().find_map(|sp| {
            (sp.name.as_deref().unwrap_or("") == name
                && Proto::parse(sp.protocol.as_deref()) == Some(proto))
            .then_some(sp.port)
            .flatten()
        });
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            if only_node.is_some() && ep.node_name.as_deref() != only_node {
                continue;
            }
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            // Unset conditions mean ready, serving and not terminating
            // (the API's documented defaults).
            let c = ep.conditions.clone().unwrap_or_default();
            let is_ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(is_ready);
            let is_terminating = c.terminating.unwrap_or(false);
            let t = Target { ip, port };
            if is_ready {
                ready.push(t);
            } else if serving && is_terminating {
                terminating.push(t);
            }
        }
    }
    for v in [&mut ready, &mut terminating] {
        v.sort();
        v.dedup();
    }
    if ready.is_empty() {
        // Only terminating endpoints left: they take new connections rather
        // than none at all, so a rolling restart of a one-pod service does
        // not refuse clients while the replacement starts.
        return Desired {
            active: terminating,
            ..Default::default()
        };
    }
    terminating.retain(|t| !ready.contains(t));
    Desired {
        active: ready,
        draining: terminating,
        affinity_timeout: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn slice(ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": "n1",
               "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    const N1: Here = Here {
        name: "n1",
        ip: Ipv4Addr::new(192, 168, 0, 1),
    };

    fn t(ip: &str, port: u16) -> Target {
        Target {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn named_target_ports_resolve_per_slice() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP"}]}));
        // Two pods name their port differently: two slices.
        let a = slice(
            json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                   {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([ep("10.244.1.2", true, true, false)]),
        );
        let b = slice(
            json!([{"name": "http", "port": 9090, "protocol": "TCP"}]),
            json!([ep("10.244.1.3", true, true, false)]),
        );
        let got = frontends(&s, [&a, &b], N1);
        assert_eq!(got.len(), 2);
        let (fe, d) = &got[0];
        assert_eq!(fe.to_string(), "10.96.0.10:80/TCP");
        assert_eq!(d.active, vec![t("10.244.1.2", 8080), t("10.244.1.3", 9090)]);
        let (fe, d) = &got[1];
        assert_eq!(fe.to_string(), "10.96.0.10:53/UDP");
        assert_eq!(d.active, vec![t("10.244.1.2", 5353)]);
    }

    #[test]
    fn only_ready_endpoints_take_new_connections_and_terminating_ones_drain() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        let sl = slice(
            json!([{"name": "", "port": 8080, "protocol": "TCP"}]),
            json!([
                ep("10.244.1.2", true, true, false),
                ep("10.244.1.3", false, false, false),
                ep("10.244.1.4", false, true, true),
                ep("10.244.1.5", false, false, true),
            ]),
        );
        let got = frontends(&s, [&sl], N1);
        assert_eq!(got[0].1.active, vec![t("10.244.1.2", 8080)]);
        assert_eq!(got[0].1.draining, vec![t("10.244.1.4", 8080)]);
    }

    #[test]
    fn terminating_serving_endpoints_stand_in_when_none_is_ready() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        let sl = slice(
            json!([{"port": 8080}]),
            json!([
                ep("10.244.1.4", false, true, true),
                ep("10.244.1.5", false, false, false)
            ]),
        );
        let got = frontends(&s, [&sl], N1);
        assert_eq!(got[0].1.active, vec![t("10.244.1.4", 8080)]);
        assert!(got[0].1.draining.is_empty());
    }

    #[test]
    fn unset_conditions_mean_ready() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        let sl = slice(
            json!([{"port": 8080}]),
            json!([{"addresses": ["10.244.1.9"]}]),
        );
        assert_eq!(
            frontends(&s, [&sl], N1)[0].1.active,
            vec![t("10.244.1.9", 8080)]
        );
    }

    #[test]
    fn headless_external_name_and_sctp_have_no_frontend() {
        let headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(frontends(&headless, [], N1).is_empty());
        let ext = svc(json!({"type": "ExternalName", "externalName": "example.com"}));
        assert!(frontends(&ext, [], N1).is_empty());
        let sctp =
            svc(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "protocol": "SCTP"}]}));
        assert!(frontends(&sctp, [], N1).is_empty());
    }

    #[test]
    fn a_service_without_endpoints_has_an_empty_frontend() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        let got = frontends(&s, [], N1);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.active.is_empty());
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let s = svc(
            json!({"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                           "ports": [{"port": 80}]}),
        );
        let mut other = ep("10.244.2.2", true, true, false);
        other["nodeName"] = json!("n2");
        let sl = slice(
            json!([{"port": 8080}]),
            json!([ep("10.244.1.2", true, true, false), other]),
        );
        assert_eq!(
            frontends(&s, [&sl], N1)[0].1.active,
            vec![t("10.244.1.2", 8080)]
        );
    }

    #[test]
    fn client_ip_affinity_carries_its_timeout() {
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                           "sessionAffinity": "ClientIP",
                           "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}));
        assert_eq!(frontends(&s, [], N1)[0].1.affinity_timeout, Some(30));
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                           "sessionAffinity": "ClientIP"}));
        assert_eq!(frontends(&s, [], N1)[0].1.affinity_timeout, Some(10800));
        let s = svc(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        assert_eq!(frontends(&s, [], N1)[0].1.affinity_timeout, None);
    }
}

#[cfg(test)]
mod node_port_tests {
    use super::*;
    use serde_json::json;

    const N1: Here = Here {
        name: "n1",
        ip: Ipv4Addr::new(192, 168, 0, 1),
    };

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn two_nodes() -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "nodeName": "n1"},
                {"addresses": ["10.244.2.2"], "nodeName": "n2"},
            ],
        }))
        .unwrap()
    }

    fn ips(d: &Desired) -> Vec<String> {
        d.active.iter().map(|t| t.ip.to_string()).collect()
    }

    #[test]
    fn a_node_port_is_a_frontend_on_the_node_address() {
        let s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                           "ports": [{"port": 80, "nodePort": 30080}]}));
        let sl = two_nodes();
        let got = frontends(&s, [&sl], N1);
        let names: Vec<String> = got.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(names, ["10.96.0.10:80/TCP", "192.168.0.1:30080/TCP"]);
        assert_eq!(ips(&got[1].1), ["10.244.1.2", "10.244.2.2"]);
    }

    #[test]
    fn external_traffic_policy_local_keeps_this_nodes_endpoints_for_node_ports_only() {
        let s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                           "externalTrafficPolicy": "Local",
                           "ports": [{"port": 80, "nodePort": 30080}]}));
        let sl = two_nodes();
        let got = frontends(&s, [&sl], N1);
        assert_eq!(ips(&got[0].1), ["10.244.1.2", "10.244.2.2"], "ClusterIP");
        assert_eq!(ips(&got[1].1), ["10.244.1.2"], "node port");
    }

    #[test]
    fn internal_traffic_policy_leaves_node_ports_alone() {
        let s = svc(json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                           "internalTrafficPolicy": "Local",
                           "ports": [{"port": 80, "nodePort": 30080}]}));
        let sl = two_nodes();
        let got = frontends(&s, [&sl], N1);
        assert_eq!(ips(&got[0].1), ["10.244.1.2"], "ClusterIP");
        assert_eq!(ips(&got[1].1), ["10.244.1.2", "10.244.2.2"], "node port");
    }

    #[test]
    fn a_cluster_ip_service_serves_no_node_port() {
        let s = svc(json!({"type": "ClusterIP", "clusterIP": "10.96.0.10",
                           "ports": [{"port": 80, "nodePort": 30080}]}));
        assert_eq!(frontends(&s, [], N1).len(), 1);
    }
}
