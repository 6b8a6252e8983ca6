//! Defaults and validation of networking.k8s.io/v1 NetworkPolicies, with
//! the field paths and messages Kubernetes reports.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::errors::Cause;

/// NetworkPolicy defaults: ports speak TCP, and a policy without
/// `policyTypes` is an ingress policy, plus an egress one when it has egress
/// rules (as upstream decides it at creation).
pub fn default(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for dir in ["ingress", "egress"] {
        let rules = spec.get_mut(dir).and_then(Value::as_array_mut);
        for rule in rules.into_iter().flatten() {
            let ports = rule.get_mut("ports").and_then(Value::as_array_mut);
            for port in ports.into_iter().flatten() {
                if let Some(p) = port.as_object_mut() {
                    if p.get("protocol").is_none_or(Value::is_null) {
                        p.insert("protocol".into(), json!("TCP"));
                    }
                }
            }
        }
    }
    let unset = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if unset {
        let has_egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let types = match has_egress {
            true => json!(["Ingress", "Egress"]),
            false => json!(["Ingress"]),
        };
        spec.insert("policyTypes".into(), types);
    }
}

/// What the API server refuses in a NetworkPolicy.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match spec.get("podSelector") {
        None | Some(Value::Null) => causes.push(Cause::required("spec.podSelector")),
        Some(sel) => selector(sel, "spec.podSelector", causes),
    }
    let types = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, t) in types.iter().enumerate() {
        if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
            causes.push(Cause::not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                &["Egress", "Ingress"],
            ));
        }
    }
    if types.len() > 2 {
        causes.push(Cause::invalid(
            "spec.policyTypes",
            &Value::from(types.to_vec()),
            "may not specify more than two policyTypes",
        ));
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        let rules = spec.get(dir).and_then(Value::as_array);
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            let path = format!("spec.{dir}[{i}]");
            let ports = rule.get("ports").and_then(Value::as_array);
            for (j, port) in ports.into_iter().flatten().enumerate() {
                policy_port(port, &format!("{path}.ports[{j}]"), causes);
            }
            let list = rule.get(peers).and_then(Value::as_array);
            for (j, p) in list.into_iter().flatten().enumerate() {
                peer(p, &format!("{path}.{peers}[{j}]"), causes);
            }
        }
    }
}

/// A label selector Kubernetes could evaluate.
fn selector(sel: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Err(e) = apimachinery::selectors::LabelSelector::from_json(sel) {
        causes.push(Cause::invalid(path, sel, e.to_string()));
    }
}

fn policy_port(port: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(proto) = port.get("protocol").filter(|p| !p.is_null()) {
        if !matches!(proto.as_str(), Some("TCP" | "UDP" | "SCTP")) {
            causes.push(Cause::not_supported(
                format!("{path}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
    }
    let (number, numeric) = match port.get("port") {
        None | Some(Value::Null) => (None, true),
        Some(Value::String(name)) => {
            if let Some(msg) = port_name_problem(name) {
                causes.push(Cause::invalid(format!("{path}.port"), &json!(name), msg));
            }
            (None, false)
        }
        Some(n) => {
            let number = n.as_i64().filter(|n| (1..=65535).contains(n));
            if number.is_none() {
                causes.push(Cause::invalid(
                    format!("{path}.port"),
                    n,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            (number, true)
        }
    };
    end_port(port, number, path, numeric, causes);
}

/// `endPort` needs a numeric `port` at or below it.
fn end_port(port: &Value, number: Option<i64>, path: &str, numeric: bool, causes: &mut Vec<Cause>) {
    let Some(end) = port.get("endPort").filter(|e| !e.is_null()) else {
        return;
    };
    let field = format!("{path}.endPort");
    let has_port = port.get("port").is_some_and(|p| !p.is_null());
    if !has_port {
        causes.push(Cause::required_msg(
            field,
            "may not be specified when `port` is not specified",
        ));
        return;
    }
    if !numeric {
        causes.push(Cause::forbidden(
            field,
            "may not be specified when `port` is non-numeric",
        ));
        return;
    }
    match (end.as_i64(), number) {
        (Some(e), _) if !(1..=65535).contains(&e) => causes.push(Cause::invalid(
            field,
            end,
            "must be between 1 and 65535, inclusive",
        )),
        (Some(e), Some(p)) if e < p => causes.push(Cause::invalid(
            field,
            end,
            "must be greater than or equal to `port`",
        )),
        (None, _) => causes.push(Cause::invalid(field, end, "must be an integer")),
        _ => {}
    }
}

/// Why `name` is not an IANA service name (a named container port), if it is not.
fn port_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        return Some("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        return Some("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must not begin or end with a hyphen");
    }
    None
}

/// A peer sets an ipBlock, or selectors, never both and never nothing.
fn peer(peer: &Value, path: &str, causes: &mut Vec<Cause>) {
    let set = |k: &str| peer.get(k).is_some_and(|v| !v.is_null());
    let mut count = 0;
    for key in ["podSelector", "namespaceSelector"] {
        if set(key) {
            count += 1;
            selector(&peer[key], &format!("{path}.{key}"), causes);
        }
    }
    if set("ipBlock") {
        if count > 0 {
            causes.push(Cause::forbidden(
                path,
                "may not specify both ipBlock and another peer",
            ));
        }
        count += 1;
        ip_block(&peer["ipBlock"], &format!("{path}.ipBlock"), causes);
    }
    if count == 0 {
        causes.push(Cause::required_msg(path, "must specify a peer"));
    }
}

fn ip_block(block: &Value, path: &str, causes: &mut Vec<Cause>) {
    let cidr = match block.get("cidr").and_then(Value::as_str) {
        None | Some("") => {
            causes.push(Cause::required(format!("{path}.cidr")));
            None
        }
        Some(text) => match parse_cidr(text) {
            Some(c) => Some(c),
            None => {
                causes.push(Cause::invalid(
                    format!("{path}.cidr"),
                    &json!(text),
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                ));
                None
            }
        },
    };
    let except = block.get("except").and_then(Value::as_array);
    for (i, e) in except.into_iter().flatten().enumerate() {
        let field = format!("{path}.except[{i}]");
        let Some(inner) = e.as_str().and_then(parse_cidr) else {
            causes.push(Cause::invalid(
                field,
                e,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
            continue;
        };
        if let Some(outer) = cidr {
            if !strict_subset(inner, outer) {
                causes.push(Cause::invalid(
                    field,
                    e,
                    "must be a strict subset of `cidr`",
                ));
            }
        }
    }
}

/// `addr/len` with a prefix length that fits the address family.
pub(crate) fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max && !text.contains('+')).then_some((addr, len))
}

/// The address masked to its first `len` bits, as a 128-bit number and family.
fn network(addr: IpAddr, len: u8) -> (bool, u128) {
    let (v4, bits, width) = match addr {
        IpAddr::V4(a) => (true, u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (false, u128::from(a), 128),
    };
    let host = width - u32::from(len).min(width);
    let masked = if host >= 128 {
        0
    } else {
        (bits >> host) << host
    };
    (v4, masked)
}

fn strict_subset(inner: (IpAddr, u8), outer: (IpAddr, u8)) -> bool {
    let (v4_in, _) = network(inner.0, inner.1);
    let (v4_out, net_out) = network(outer.0, outer.1);
    v4_in == v4_out && inner.1 > outer.1 && network(inner.0, outer.1).1 == net_out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(spec: Value) -> Vec<(String, String)> {
        let mut obj = json!({"metadata": {"name": "p"}, "spec": spec});
        default(&mut obj);
        let mut out = Vec::new();
        validate(&obj, &mut out);
        out.into_iter().map(|c| (c.field, c.message)).collect()
    }

    fn fields(spec: Value) -> Vec<String> {
        causes(spec).into_iter().map(|c| c.0).collect()
    }

    #[test]
    fn policy_types_and_protocols_get_upstream_defaults() {
        let mut obj = json!({"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}});
        default(&mut obj);
        assert_eq!(obj["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(obj["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        let mut obj = json!({"spec": {"podSelector": {}, "egress": [{}]}});
        default(&mut obj);
        assert_eq!(obj["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let mut obj = json!({"spec": {"podSelector": {}, "policyTypes": ["Egress"]}});
        default(&mut obj);
        assert_eq!(obj["spec"]["policyTypes"], json!(["Egress"]));
    }

    #[test]
    fn a_full_policy_passes() {
        let spec = json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                {"namespaceSelector": {"matchLabels": {"team": "a"}},
                 "podSelector": {"matchExpressions": [{"key": "role", "operator": "Exists"}]}}],
                "ports": [{"protocol": "TCP", "port": 6379}, {"port": "http"},
                          {"protocol": "UDP", "port": 32000, "endPort": 32768},
                          {"protocol": "SCTP"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}}]}]
        });
        assert_eq!(causes(spec), vec![]);
    }

    #[test]
    fn missing_selector_and_bad_types_name_the_field() {
        assert_eq!(fields(json!({})), ["spec.podSelector"]);
        assert_eq!(
            fields(json!({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]})),
            ["spec.policyTypes[1]"]
        );
        assert_eq!(
            fields(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]})),
            ["spec.policyTypes"]
        );
        assert_eq!(
            fields(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}})),
            ["spec.podSelector"]
        );
    }

    #[test]
    fn ports_follow_upstream_rules() {
        let one = |port: Value| fields(json!({"podSelector": {}, "ingress": [{"ports": [port]}]}));
        let f = |s: &str| vec![format!("spec.ingress[0].ports[0].{s}")];
        assert_eq!(one(json!({"protocol": "ICMP", "port": 1})), f("protocol"));
        assert_eq!(one(json!({"port": 0})), f("port"));
        assert_eq!(one(json!({"port": 70000})), f("port"));
        assert_eq!(one(json!({"port": "Not_A_Name"})), f("port"));
        assert_eq!(one(json!({"port": "12"})), f("port"));
        assert_eq!(one(json!({"port": "web", "endPort": 90})), f("endPort"));
        assert_eq!(one(json!({"endPort": 90})), f("endPort"));
        assert_eq!(one(json!({"port": 100, "endPort": 90})), f("endPort"));
        assert_eq!(
            one(json!({"port": 100, "endPort": 100})),
            Vec::<String>::new()
        );
        let msg =
            causes(json!({"podSelector": {}, "egress": [{"ports": [{"port": 9, "endPort": 8}]}]}));
        assert_eq!(msg[0].0, "spec.egress[0].ports[0].endPort");
        assert!(
            msg[0].1.contains("greater than or equal to `port`"),
            "{msg:?}"
        );
    }

    #[test]
    fn peers_set_exactly_an_ip_block_or_selectors() {
        let one = |p: Value| fields(json!({"podSelector": {}, "ingress": [{"from": [p]}]}));
        assert_eq!(one(json!({})), ["spec.ingress[0].from[0]"]);
        assert_eq!(
            one(json!({"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}})),
            ["spec.ingress[0].from[0]"]
        );
        assert_eq!(
            one(json!({"ipBlock": {"cidr": "10.0.0.0/33"}})),
            ["spec.ingress[0].from[0].ipBlock.cidr"]
        );
        assert_eq!(
            one(json!({"ipBlock": {}})),
            ["spec.ingress[0].from[0].ipBlock.cidr"]
        );
        let except = |e: &str| {
            fields(json!({"podSelector": {}, "egress": [{"to": [
                {"ipBlock": {"cidr": "10.1.0.0/16", "except": [e]}}]}]}))
        };
        let bad = ["spec.egress[0].to[0].ipBlock.except[0]"];
        assert_eq!(except("10.2.0.0/24"), bad);
        assert_eq!(except("10.1.0.0/16"), bad);
        assert_eq!(except("10.0.0.0/8"), bad);
        assert_eq!(except("fd00::/64"), bad);
        assert_eq!(except("nonsense"), bad);
        assert_eq!(except("10.1.200.0/24"), Vec::<String>::new());
        assert_eq!(except("10.1.200.7/32"), Vec::<String>::new());
    }
}
