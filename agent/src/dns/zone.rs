//! The cluster's names, as the Kubernetes DNS specification lays them
//! out, answered from Services and EndpointSlices:
//!
//! - `SVC.NS.svc.DOMAIN` A: the ClusterIP, or for a headless Service the
//!   addresses of its ready endpoints; an ExternalName Service is a CNAME.
//! - `_PORT._PROTO.SVC.NS.svc.DOMAIN` SRV: the named port, pointing at the
//!   Service (or at each endpoint of a headless one).
//! - `HOST.SVC.NS.svc.DOMAIN` A: one endpoint of a headless Service, by its
//!   hostname or its address with dashes.
//! - `A-B-C-D.NS.pod.DOMAIN` A: the address it spells.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::wire::{self, Data, Question, Record};

/// How long answers may be cached: short, since backends come and go.
pub const TTL: u32 = 5;

/// A port of a Service or endpoint: (name, protocol as lowercase, number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub proto: String,
    pub port: u16,
}

/// One ready endpoint of a headless Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    pub ports: Vec<Port>,
}

/// What DNS needs to know of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRecord {
    pub cluster_ips: Vec<Ipv4Addr>,
    pub headless: bool,
    pub external_name: Option<String>,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

fn ports_of<'a>(items: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, i32)>) -> Vec<Port> {
    items
        .filter_map(|(name, proto, port)| {
            Some(Port {
                name: name.unwrap_or("").to_string(),
                proto: proto.unwrap_or("TCP").to_ascii_lowercase(),
                port: u16::try_from(port).ok()?,
            })
        })
        .collect()
}

/// The DNS view of `svc` given its EndpointSlices.
pub fn record<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> ServiceRecord {
    let Some(spec) = svc.spec.as_ref() else {
        return ServiceRecord::default();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return ServiceRecord {
            external_name: spec.external_name.clone(),
            ..Default::default()
        };
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut cluster_ips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    let ports = ports_of(
        spec.ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.protocol.as_deref(), p.port)),
    );
    let mut endpoints = Vec::new();
    // Only headless Services answer with endpoints.
    if headless {
        for slice in slices.into_iter().filter(|s| s.address_type == "IPv4") {
            let ports = ports_of(
                slice
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| Some((p.name.as_deref(), p.protocol.as_deref(), p.port?))),
            );
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) else {
                    continue;
                };
                if ready {
                    endpoints.push(Endpoint {
                        ip,
                        hostname: ep.hostname.clone(),
                        ports: ports.clone(),
                    });
                }
            }
        }
        endpoints.sort_by_key(|e| e.ip);
        endpoints.dedup_by_key(|e| e.ip);
    }
    ServiceRecord {
        cluster_ips,
        headless,
        external_name: None,
        ports,
        endpoints,
    }
}

/// What the zone says about a question.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records for the name (answers, additional).
    Found(Vec<Record>, Vec<Record>),
    /// The name exists, without records of the asked type.
    NoData,
    /// No such name in the cluster domain.
    NxDomain,
    /// Not a name of the cluster domain: for the upstream resolver.
    Outside,
}

/// Every Service's DNS view, by namespace and name.
pub struct Zone {
    domain: String,
    services: HashMap<(String, String), ServiceRecord>,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn a(name: &str, ip: Ipv4Addr) -> Record {
    Record {
        name: name.to_string(),
        ttl: TTL,
        data: Data::A(ip),
    }
}

impl Zone {
    /// An empty zone for cluster domain `domain` (e.g. `cluster.local`).
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            services: HashMap::new(),
        }
    }

    /// Sets (or with None removes) Service `ns/name`.
    pub fn set(&mut self, ns: &str, name: &str, record: Option<ServiceRecord>) {
        let key = (ns.to_string(), name.to_string());
        match record {
            Some(r) => {
                self.services.insert(key, r);
            }
            None => {
                self.services.remove(&key);
            }
        }
    }

    /// Answers `q` from the zone.
    pub fn answer(&self, q: &Question) -> Answer {
        let name = q.name.as_str();
        let Some(rest) = name.strip_suffix(self.domain.as_str()).and_then(|r| {
            if r.is_empty() {
                Some(r)
            } else {
                r.strip_suffix('.')
            }
        }) else {
            return Answer::Outside;
        };
        let labels: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').collect()
        };
        match labels.as_slice() {
            [] | ["svc"] | [_, "svc"] | ["pod"] | [_, "pod"] => Answer::NoData,
            [svc, ns, "svc"] => self.service(q, ns, svc),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(q, ns, svc, Some((&port[1..], &proto[1..])))
            }
            [host, svc, ns, "svc"] => self.endpoint(q, ns, svc, host),
            [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
                Ok(addr) => self.only_a(q, vec![a(name, addr)]),
                Err(_) => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }

    fn get(&self, ns: &str, svc: &str) -> Option<&ServiceRecord> {
        self.services.get(&(ns.to_string(), svc.to_string()))
    }

    /// A records answer A (and ANY) questions; other types get no data.
    fn only_a(&self, q: &Question, records: Vec<Record>) -> Answer {
        match q.qtype {
            wire::TYPE_A | wire::TYPE_ANY if !records.is_empty() => Answer::Found(records, vec![]),
            _ => Answer::NoData,
        }
    }

    fn service(&self, q: &Question, ns: &str, svc: &str) -> Answer {
        let Some(r) = self.get(ns, svc) else {
            return Answer::NxDomain;
        };
        if let Some(target) = &r.external_name {
            return Answer::Found(
                vec![Record {
                    name: q.name.clone(),
                    ttl: TTL,
                    data: Data::Cname(target.trim_end_matches('.').to_ascii_lowercase()),
                }],
                vec![],
            );
        }
        if q.qtype == wire::TYPE_SRV {
            return self.srv(q, ns, svc, None);
        }
        let ips: Vec<Ipv4Addr> = if r.headless {
            r.endpoints.iter().map(|e| e.ip).collect()
        } else {
            r.cluster_ips.clone()
        };
        self.only_a(q, ips.into_iter().map(|ip| a(&q.name, ip)).collect())
    }

    /// SRV records of Service `ns/svc`: for one named port (`_name._proto`)
    /// or, asked on the Service's own name, for all of them.
    fn srv(&self, q: &Question, ns: &str, svc: &str, port: Option<(&str, &str)>) -> Answer {
        let Some(r) = self.get(ns, svc) else {
            return Answer::NxDomain;
        };
        let wanted = |p: &Port| {
            !p.name.is_empty()
                && port.is_none_or(|(name, proto)| p.name == name && p.proto == proto)
        };
        let service_name = format!("{svc}.{ns}.svc.{}", self.domain);
        let mut answers = Vec::new();
        let mut additional = Vec::new();
        if r.headless {
            let weight = (100 / r.endpoints.len().max(1)) as u16;
            for e in &r.endpoints {
                let host = e.hostname.clone().unwrap_or_else(|| dashed(e.ip));
                let target = format!("{host}.{service_name}");
                for p in e.ports.iter().filter(|p| wanted(p)) {
                    answers.push(Record {
                        name: q.name.clone(),
                        ttl: TTL,
                        data: Data::Srv {
                            priority: 0,
                            weight,
                            port: p.port,
                            target: target.clone(),
                        },
                    });
                }
                additional.push(a(&target, e.ip));
            }
        } else {
            for p in r.ports.iter().filter(|p| wanted(p)) {
                answers.push(Record {
                    name: q.name.clone(),
                    ttl: TTL,
                    data: Data::Srv {
                        priority: 0,
                        weight: 100,
                        port: p.port,
                        target: service_name.clone(),
                    },
                });
            }
            additional.extend(r.cluster_ips.iter().map(|ip| a(&service_name, *ip)));
        }
        if answers.is_empty() {
            // The port is not there; a port name that exists for another
            // protocol is still "no such name".
            return if port.is_some() {
                Answer::NxDomain
            } else {
                Answer::NoData
            };
        }
        match q.qtype {
            wire::TYPE_SRV | wire::TYPE_ANY => Answer::Found(answers, additional),
            _ => Answer::NoData,
        }
    }

    fn endpoint(&self, q: &Question, ns: &str, svc: &str, host: &str) -> Answer {
        let Some(r) = self.get(ns, svc) else {
            return Answer::NxDomain;
        };
        let found: Vec<Record> = r
            .endpoints
            .iter()
            .filter(|e| e.hostname.as_deref() == Some(host) || dashed(e.ip) == host)
            .map(|e| a(&q.name, e.ip))
            .collect();
        if found.is_empty() {
            return Answer::NxDomain;
        }
        self.only_a(q, found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(name: &str, qtype: u16) -> Question {
        Question {
            name: name.into(),
            qtype,
            qclass: wire::CLASS_IN,
        }
    }

    fn zone() -> Zone {
        let mut z = Zone::new("cluster.local.");
        let web: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [
                {"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        z.set("shop", "web", Some(record(&web, [])));
        let db: Service = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-x", "namespace": "shop"},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": false}},
            ]
        }))
        .unwrap();
        z.set("shop", "db", Some(record(&db, [&slice])));
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "Example.COM."}
        }))
        .unwrap();
        z.set("shop", "ext", Some(record(&ext, [])));
        z
    }

    fn ips(a: Answer) -> Vec<Ipv4Addr> {
        match a {
            Answer::Found(records, _) => records
                .into_iter()
                .filter_map(|r| match r.data {
                    Data::A(ip) => Some(ip),
                    _ => None,
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_service_name_is_its_cluster_ip() {
        let z = zone();
        assert_eq!(
            ips(z.answer(&q("web.shop.svc.cluster.local", wire::TYPE_A))),
            vec![Ipv4Addr::new(10, 96, 0, 20)]
        );
        assert_eq!(
            z.answer(&q("web.shop.svc.cluster.local", wire::TYPE_AAAA)),
            Answer::NoData
        );
        assert_eq!(
            z.answer(&q("nope.shop.svc.cluster.local", wire::TYPE_A)),
            Answer::NxDomain
        );
        // What a search path tries first for "web" from namespace "other".
        assert_eq!(
            z.answer(&q("web.other.svc.cluster.local", wire::TYPE_A)),
            Answer::NxDomain
        );
        assert_eq!(z.answer(&q("example.com", wire::TYPE_A)), Answer::Outside);
        assert_eq!(
            z.answer(&q("notcluster.local", wire::TYPE_A)),
            Answer::Outside
        );
    }

    #[test]
    fn a_headless_service_is_its_ready_endpoints() {
        let z = zone();
        assert_eq!(
            ips(z.answer(&q("db.shop.svc.cluster.local", wire::TYPE_A))),
            vec![Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 6)]
        );
        assert_eq!(
            ips(z.answer(&q("db-0.db.shop.svc.cluster.local", wire::TYPE_A))),
            vec![Ipv4Addr::new(10, 244, 1, 5)]
        );
        assert_eq!(
            ips(z.answer(&q("10-244-2-6.db.shop.svc.cluster.local", wire::TYPE_A))),
            vec![Ipv4Addr::new(10, 244, 2, 6)]
        );
        assert_eq!(
            z.answer(&q("10-244-2-7.db.shop.svc.cluster.local", wire::TYPE_A)),
            Answer::NxDomain,
            "not ready"
        );
    }

    #[test]
    fn srv_records_name_ports() {
        let z = zone();
        let Answer::Found(answers, additional) =
            z.answer(&q("_dns._udp.web.shop.svc.cluster.local", wire::TYPE_SRV))
        else {
            panic!()
        };
        assert_eq!(
            answers[0].data,
            Data::Srv {
                priority: 0,
                weight: 100,
                port: 53,
                target: "web.shop.svc.cluster.local".into()
            }
        );
        assert_eq!(additional[0].data, Data::A(Ipv4Addr::new(10, 96, 0, 20)));
        assert_eq!(
            z.answer(&q("_dns._tcp.web.shop.svc.cluster.local", wire::TYPE_SRV)),
            Answer::NxDomain
        );
        let Answer::Found(answers, additional) =
            z.answer(&q("_pg._tcp.db.shop.svc.cluster.local", wire::TYPE_SRV))
        else {
            panic!()
        };
        let targets: Vec<String> = answers
            .iter()
            .map(|r| match &r.data {
                Data::Srv { target, port, .. } => format!("{target}:{port}"),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            targets,
            vec![
                "db-0.db.shop.svc.cluster.local:5432",
                "10-244-2-6.db.shop.svc.cluster.local:5432"
            ]
        );
        assert_eq!(additional.len(), 2);
        // SRV on the Service name lists all its named ports.
        let Answer::Found(answers, _) = z.answer(&q("web.shop.svc.cluster.local", wire::TYPE_SRV))
        else {
            panic!()
        };
        assert_eq!(answers.len(), 2);
    }

    #[test]
    fn external_names_and_pod_names() {
        let z = zone();
        let Answer::Found(answers, _) = z.answer(&q("ext.shop.svc.cluster.local", wire::TYPE_A))
        else {
            panic!()
        };
        assert_eq!(answers[0].data, Data::Cname("example.com".into()));
        assert_eq!(
            ips(z.answer(&q("10-244-3-4.shop.pod.cluster.local", wire::TYPE_A))),
            vec![Ipv4Addr::new(10, 244, 3, 4)]
        );
        assert_eq!(
            z.answer(&q("svc.cluster.local", wire::TYPE_A)),
            Answer::NoData
        );
    }
}
