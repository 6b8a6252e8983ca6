//! Service networking: Services, Endpoints and EndpointSlices. Address
//! lists are capped at three entries plus a "+ N more..." tail, as kubectl
//! shows them, so wide backends do not blow up the table.

use std::collections::BTreeSet;

use serde_json::Value;

use super::fields::{age, at, format_labels, int, list, map, name, or_none, text};
use super::{Column, Row, AGE, NAME};

/// How many addresses or ports a cell lists before summarising the rest.
const MAX_LISTED: usize = 3;

/// Service table columns.
pub(super) const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Type",
        "string",
        "How the service is exposed: ClusterIP, NodePort, LoadBalancer or ExternalName.",
    ),
    Column::new(
        "Cluster-IP",
        "string",
        "Virtual IP inside the cluster that spreads traffic over the service's endpoints.",
    ),
    Column::new(
        "External-IP",
        "string",
        "Addresses reachable from outside the cluster: load-balancer ingress and spec.externalIPs.",
    ),
    Column::new(
        "Port(s)",
        "string",
        "Service ports as port[:nodePort]/protocol.",
    ),
    AGE,
    Column::new(
        "Selector",
        "string",
        "Pod labels the service sends traffic to.",
    )
    .wide(),
];

/// Endpoints table columns.
pub(super) const ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "Endpoints",
        "string",
        "Backend addresses with their ports; the first few are listed.",
    ),
    AGE,
];

/// EndpointSlice table columns.
pub(super) const SLICE_COLUMNS: &[Column] = &[
    NAME,
    Column::new(
        "AddressType",
        "string",
        "Kind of address the slice holds: IPv4, IPv6 or FQDN.",
    ),
    Column::new(
        "Ports",
        "string",
        "Port numbers (or names) served by the slice; the first few are listed.",
    ),
    Column::new(
        "Endpoints",
        "string",
        "Endpoint addresses in the slice; the first few are listed.",
    ),
    AGE,
];

/// One service row.
pub(super) fn service_row(svc: &Value, now: i64) -> Row {
    // Objects stored before defaulting may lack a type; the API default applies.
    let svc_type = match text(svc, &["spec", "type"]) {
        "" => "ClusterIP",
        t => t,
    };
    // Older objects may only carry the singular clusterIP.
    let cluster_ip = match list(svc, &["spec", "clusterIPs"]).first() {
        Some(ip) => ip.as_str().unwrap_or(""),
        None => text(svc, &["spec", "clusterIP"]),
    };
    Row::new(vec![
        name(svc),
        svc_type.into(),
        or_none(cluster_ip).into(),
        external_ip(svc, svc_type).into(),
        or_none(&port_string(list(svc, &["spec", "ports"]))).into(),
        age(svc, now),
        format_labels(map(svc, &["spec", "selector"])).into(),
    ])
}

fn strings(values: &[Value]) -> Vec<&str> {
    values.iter().filter_map(Value::as_str).collect()
}

/// The EXTERNAL-IP cell. The server always renders the wide form, so
/// long load-balancer lists are never clipped.
fn external_ip(svc: &Value, svc_type: &str) -> String {
    let external = strings(list(svc, &["spec", "externalIPs"]));
    match svc_type {
        "ClusterIP" | "NodePort" => or_none(&external.join(",")),
        "LoadBalancer" => {
            // Ingress points are de-duplicated and sorted, then the
            // spec.externalIPs follow in their own order.
            let ingress: BTreeSet<&str> = list(svc, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| match (text(i, &["ip"]), text(i, &["hostname"])) {
                    ("", "") => None,
                    ("", host) => Some(host),
                    (ip, _) => Some(ip),
                })
                .collect();
            let mut all: Vec<&str> = ingress.into_iter().collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `80/TCP`, or `80:30080/TCP` when a node port is allocated, comma-joined.
fn port_string(ports: &[Value]) -> String {
    ports
        .iter()
        .map(|p| {
            let port = int(p, &["port"]).unwrap_or(0);
            let protocol = match text(p, &["protocol"]) {
                "" => "TCP",
                proto => proto,
            };
            match int(p, &["nodePort"]).unwrap_or(0) {
                n if n > 0 => format!("{port}:{n}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One Endpoints row.
pub(super) fn endpoints_row(ep: &Value, now: i64) -> Row {
    Row::new(vec![name(ep), format_endpoints(ep).into(), age(ep, now)])
}

/// `ip:port` for every ready address and port of every subset; only the
/// first three are listed but all are counted for the "more" tail.
fn format_endpoints(ep: &Value) -> String {
    let subsets = list(ep, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut shown = Vec::new();
    let mut count = 0usize;
    for subset in subsets {
        let addresses = list(subset, &["addresses"]);
        let ports = list(subset, &["ports"]);
        if ports.is_empty() {
            // Headless services may publish bare addresses.
            count += addresses.len();
            for a in addresses
                .iter()
                .take(MAX_LISTED.saturating_sub(shown.len()))
            {
                shown.push(text(a, &["ip"]).to_string());
            }
            continue;
        }
        for port in ports {
            let port = int(port, &["port"]).unwrap_or(0);
            count += addresses.len();
            for a in addresses
                .iter()
                .take(MAX_LISTED.saturating_sub(shown.len()))
            {
                shown.push(join_host_port(text(a, &["ip"]), port));
            }
        }
    }
    with_more(shown, count)
}

/// `host:port`, bracketing IPv6 literals.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Joins `shown`, appending ` + N more...` when `count` exceeds it.
fn with_more(shown: Vec<String>, count: usize) -> String {
    let joined = shown.join(",");
    if count > shown.len() {
        format!("{joined} + {} more...", count - shown.len())
    } else {
        joined
    }
}

/// One EndpointSlice row.
pub(super) fn slice_row(slice: &Value, now: i64) -> Row {
    let ports = list(slice, &["ports"]);
    let port_names: Vec<String> = ports
        .iter()
        .take(MAX_LISTED)
        .map(|p| match (int(p, &["port"]), text(p, &["name"])) {
            (Some(n), _) => n.to_string(),
            (None, "") if at(p, &["name"]).is_none() => "*".to_string(),
            (None, name) => name.to_string(),
        })
        .collect();
    let addresses: Vec<&str> = list(slice, &["endpoints"])
        .iter()
        .flat_map(|e| list(e, &["addresses"]))
        .map(|a| a.as_str().unwrap_or(""))
        .collect();
    let shown: Vec<String> = addresses
        .iter()
        .take(MAX_LISTED)
        .map(|a| a.to_string())
        .collect();
    Row::new(vec![
        name(slice),
        text(slice, &["addressType"]).into(),
        unset_if_empty(with_more(port_names, ports.len())).into(),
        unset_if_empty(with_more(shown, addresses.len())).into(),
        age(slice, now),
    ])
}

/// Slices mark an empty list as unset rather than none.
fn unset_if_empty(s: String) -> String {
    if s.is_empty() {
        "<unset>".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{render, IncludeObject};
    use serde_json::json;

    const NOW: i64 = 1_795_855_897;

    fn column_names(resource: &str) -> Vec<String> {
        let t = render(resource, &[], NOW, IncludeObject::None, None);
        t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn service_columns() {
        assert_eq!(
            column_names("services"),
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
    }

    #[test]
    fn node_port_service() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-11-28T08:50:37Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                               {"port": 53, "protocol": "UDP"}]}
        });
        assert_eq!(
            service_row(&svc, NOW).cells,
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.96.0.10"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("60s"),
                json!("app=web"),
            ]
        );
    }

    #[test]
    fn headless_and_bare_services() {
        let headless =
            json!({"spec": {"type": "ClusterIP", "clusterIP": "None", "ports": [{"port": 80}]}});
        let c = service_row(&headless, NOW).cells;
        assert_eq!(
            c[1..5],
            [
                json!("ClusterIP"),
                json!("None"),
                json!("<none>"),
                json!("80/TCP")
            ]
        );
        let bare = service_row(&json!({}), NOW).cells;
        assert_eq!(
            bare[1..5],
            [
                json!("ClusterIP"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        assert_eq!(bare[6], json!("<none>"));
    }

    #[test]
    fn load_balancer_and_external_name() {
        let pending = json!({"spec": {"type": "LoadBalancer"}});
        assert_eq!(service_row(&pending, NOW).cells[3], json!("<pending>"));
        let lb = json!({"spec": {"type": "LoadBalancer", "externalIPs": ["1.2.3.4"]},
                        "status": {"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}, {"hostname": "lb.example"},
                                                                {"ip": "9.9.9.9"}]}}});
        assert_eq!(
            service_row(&lb, NOW).cells[3],
            json!("9.9.9.9,lb.example,1.2.3.4")
        );
        let ext = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(service_row(&ext, NOW).cells[3], json!("db.example.com"));
        let weird = json!({"spec": {"type": "Bogus"}});
        assert_eq!(service_row(&weird, NOW).cells[3], json!("<unknown>"));
        let cluster_ext = json!({"spec": {"externalIPs": ["5.5.5.5", "6.6.6.6"]}});
        assert_eq!(
            service_row(&cluster_ext, NOW).cells[3],
            json!("5.5.5.5,6.6.6.6")
        );
    }

    #[test]
    fn endpoints_columns_and_rows() {
        assert_eq!(column_names("endpoints"), ["Name", "Endpoints", "Age"]);
        let ep = json!({
            "metadata": {"name": "web"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                         "ports": [{"port": 80}]}]
        });
        assert_eq!(
            endpoints_row(&ep, NOW).cells[1],
            json!("10.0.0.1:80,10.0.0.2:80")
        );
        assert_eq!(endpoints_row(&json!({}), NOW).cells[1], json!("<none>"));
    }

    #[test]
    fn endpoints_truncate_after_three() {
        let ep = json!({"subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]},
            {"addresses": [{"ip": "fd00::1"}]}
        ]});
        assert_eq!(
            endpoints_row(&ep, NOW).cells[1],
            json!("10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more...")
        );
        let v6 = json!({"subsets": [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 53}]}]});
        assert_eq!(endpoints_row(&v6, NOW).cells[1], json!("[fd00::1]:53"));
        let headless = json!({"subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]});
        assert_eq!(endpoints_row(&headless, NOW).cells[1], json!("10.0.0.9"));
    }

    #[test]
    fn endpointslice_columns_and_rows() {
        assert_eq!(
            column_names("endpointslices"),
            ["Name", "AddressType", "Ports", "Endpoints", "Age"]
        );
        let slice = json!({
            "metadata": {"name": "web-abc12"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}, {"name": "metrics"}, {}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]},
                          {"addresses": ["10.0.0.4"]}]
        });
        assert_eq!(
            slice_row(&slice, NOW).cells[..4],
            [
                json!("web-abc12"),
                json!("IPv4"),
                json!("80,metrics,*"),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more..."),
            ]
        );
        let empty = slice_row(&json!({}), NOW).cells;
        assert_eq!(empty[1..4], [json!(""), json!("<unset>"), json!("<unset>")]);
    }
}
