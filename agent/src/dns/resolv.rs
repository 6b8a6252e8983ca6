//! A pod's /etc/resolv.conf, by its `dnsPolicy` and `dnsConfig`, as
//! kubelet writes it: `ClusterFirst` pods ask the cluster DNS with the
//! namespace's search path, `Default` ones get the node's resolver.

use k8s_openapi::api::core::v1::Pod;

/// Most nameservers and search domains a resolv.conf keeps (glibc reads
/// three nameservers; Kubernetes caps the search path at 32).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 32;

/// The cluster DNS pods are pointed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDns {
    pub nameserver: std::net::Ipv4Addr,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Conf {
    nameservers: Vec<String>,
    search: Vec<String>,
    /// (name, value) pairs, in order.
    options: Vec<(String, Option<String>)>,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !s.is_empty() && !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

fn set_option(options: &mut Vec<(String, Option<String>)>, name: &str, value: Option<String>) {
    match options.iter_mut().find(|(n, _)| n == name) {
        Some(o) => o.1 = value,
        None => options.push((name.to_string(), value)),
    }
}

/// Reads the node's resolv.conf.
fn parse(text: &str) -> Conf {
    let mut c = Conf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => {
                if let Some(ns) = f.next() {
                    push_unique(&mut c.nameservers, ns);
                }
            }
            // The last search or domain line wins, as in the resolver.
            Some("search") | Some("domain") => {
                c.search.clear();
                for s in f {
                    push_unique(&mut c.search, s);
                }
            }
            Some("options") => {
                for o in f {
                    let (n, v) = match o.split_once(':') {
                        Some((n, v)) => (n, Some(v.to_string())),
                        None => (o, None),
                    };
                    set_option(&mut c.options, n, v);
                }
            }
            _ => {}
        }
    }
    c
}

/// The resolv.conf for `pod`: `cluster` is the cluster DNS (None when the
/// agent runs without one) and `node` the node's own resolv.conf.
pub fn resolv_conf(pod: &Pod, cluster: Option<&ClusterDns>, node: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network == Some(true);
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let node_conf = parse(node);
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut c = match (policy, cluster) {
        ("None", _) => Conf::default(),
        (_, Some(dns)) if cluster_first => {
            let mut search = vec![
                format!("{ns}.svc.{}", dns.domain),
                format!("svc.{}", dns.domain),
                dns.domain.clone(),
            ];
            for s in &node_conf.search {
                push_unique(&mut search, s);
            }
            Conf {
                nameservers: vec![dns.nameserver.to_string()],
                search,
                options: vec![("ndots".into(), Some("5".into()))],
            }
        }
        // "Default", host-network pods with ClusterFirst, or no cluster DNS.
        _ => node_conf,
    };
    if let Some(extra) = spec.dns_config {
        for n in extra.nameservers.iter().flatten() {
            push_unique(&mut c.nameservers, n);
        }
        for s in extra.searches.iter().flatten() {
            push_unique(&mut c.search, s);
        }
        for o in extra.options.iter().flatten() {
            if let Some(name) = o.name.as_deref() {
                set_option(&mut c.options, name, o.value.clone());
            }
        }
    }
    c.nameservers.truncate(MAX_NAMESERVERS);
    c.search.truncate(MAX_SEARCH);
    let mut out = String::new();
    if !c.search.is_empty() {
        out += &format!("search {}\n", c.search.join(" "));
    }
    for n in &c.nameservers {
        out += &format!("nameserver {n}\n");
    }
    if !c.options.is_empty() {
        let opts: Vec<String> = c
            .options
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}:{v}"),
                None => n.clone(),
            })
            .collect();
        out += &format!("options {}\n", opts.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE: &str =
        "# from the node\nnameserver 192.0.2.53\nsearch corp.example\noptions timeout:2\n";

    fn dns() -> ClusterDns {
        ClusterDns {
            nameserver: "10.96.0.10".parse().unwrap(),
            domain: "cluster.local".into(),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn cluster_first_pods_ask_the_cluster_dns_with_their_namespace_first() {
        let p = pod(json!({"containers": []}));
        assert_eq!(
            resolv_conf(&p, Some(&dns()), NODE),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_and_host_network_pods_get_the_nodes_resolver() {
        let node_view = "search corp.example\nnameserver 192.0.2.53\noptions timeout:2\n";
        let p = pod(json!({"dnsPolicy": "Default", "containers": []}));
        assert_eq!(resolv_conf(&p, Some(&dns()), NODE), node_view);
        let p = pod(json!({"hostNetwork": true, "containers": []}));
        assert_eq!(resolv_conf(&p, Some(&dns()), NODE), node_view);
        let p = pod(
            json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []}),
        );
        assert!(resolv_conf(&p, Some(&dns()), NODE).contains("nameserver 10.96.0.10"));
        // Without a cluster DNS, ClusterFirst falls back to the node's.
        let p = pod(json!({"containers": []}));
        assert_eq!(resolv_conf(&p, None, NODE), node_view);
    }

    #[test]
    fn dns_config_adds_to_the_policy_or_stands_alone_with_none() {
        let p = pod(json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {
            "nameservers": ["1.1.1.1"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&p, Some(&dns()), NODE),
            "search a.example\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
        );
        let p = pod(
            json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
        );
        assert!(resolv_conf(&p, Some(&dns()), NODE).ends_with("options ndots:1\n"));
    }
}
