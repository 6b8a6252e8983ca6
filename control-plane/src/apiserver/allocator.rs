//! ClusterIPs and NodePorts: chosen by the API server, each held by a
//! claim key written in the same etcd transaction as its Service, so two
//! Services (even through two API servers) never get the same one.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult, Cause};
use super::resources::Resource;
use super::State;

const IP_CLAIMS: &str = "/claims/serviceips/";
const PORT_CLAIMS: &str = "/claims/nodeports/";
/// The NodePort range Kubernetes uses by default.
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

pub use apimachinery::cidr::Cidr;

/// The service range from `--service-cluster-ip-range`: a network with room
/// for the `kubernetes` and DNS Services' addresses.
pub fn service_range(flag: &str) -> Result<Cidr, String> {
    let range: Cidr = flag.parse()?;
    if !(1..=30).contains(&range.len) {
        return Err(format!("{flag}: prefix length must be 1 to 30"));
    }
    Ok(range)
}

fn port_claim(proto: &str, port: i64) -> String {
    format!("{PORT_CLAIMS}{}-{port}", proto.to_ascii_lowercase())
}

/// The claim keys a stored Service holds.
pub fn claims_of(res: &Resource, obj: &Value) -> Vec<String> {
    if res.kind != "Service" {
        return vec![];
    }
    let mut out = Vec::new();
    if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if ip.parse::<Ipv4Addr>().is_ok() {
            out.push(format!("{IP_CLAIMS}{ip}"));
        }
    }
    for p in obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            out.push(port_claim(proto, np));
        }
    }
    out
}

fn invalid(obj: &Value, field: &str, value: Value, msg: &str) -> ApiError {
    ApiError::invalid(
        "Service",
        "",
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(""),
        vec![Cause::invalid(field, &value, msg)],
    )
}

async fn taken(state: &State, prefix: &str) -> ApiResult<HashSet<String>> {
    Ok(state
        .storage
        .keys(prefix)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .into_iter()
        .map(|k| k.trim_start_matches(prefix).to_string())
        .collect())
}

/// Whether another object holds `claim` already.
async fn held(state: &State, claim: &str) -> ApiResult<bool> {
    Ok(state
        .storage
        .keys(claim)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .iter()
        .any(|k| k == claim))
}

/// Fills in a new Service's ClusterIP and NodePorts; returns the claims to write.
pub async fn allocate(
    state: &State,
    res: &Resource,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<Vec<String>> {
    if res.kind != "Service" {
        return Ok(vec![]);
    }
    let mut claims = Vec::new();
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let range = state.config.service_cidr;
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let requested = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ty != "ExternalName" {
        let ip = match (requested.as_str(), &old_ip) {
            ("", Some(o)) => o.clone(),
            ("None", _) => "None".to_string(),
            ("", None) => {
                let used = taken(state, IP_CLAIMS).await?;
                // Start at a random offset so concurrent creates rarely race.
                // At most 2^31: `service_range` keeps the prefix at 1 or more.
                let size = range.size() as u32;
                let start = (uuid::Uuid::new_v4().as_u128() % u128::from(size - 2)) as u32 + 1;
                let free = (0..size - 2)
                    .map(|i| range.nth((start - 1 + i) % (size - 2) + 1))
                    .find(|ip| {
                        !used.contains(&ip.to_string())
                            && *ip != range.nth(1)
                            && *ip != range.nth(10)
                    })
                    .ok_or_else(|| ApiError::internal("the service IP range is full"))?;
                free.to_string()
            }
            (r, _) => {
                let ip: Ipv4Addr = r.parse().map_err(|_| {
                    invalid(
                        obj,
                        "spec.clusterIPs[0]",
                        json!(r),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )
                })?;
                if !range.contains_ip(ip) {
                    return Err(invalid(obj, "spec.clusterIPs[0]", json!(r), &format!("failed to allocate IP {r}: the provided IP ({r}) is not in the valid range. The range of valid IPs is {range}")));
                }
                r.to_string()
            }
        };
        if let (Some(o), false) = (&old_ip, requested.is_empty()) {
            if *o != requested {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    obj.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    vec![Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(requested),
                        "may not change once set",
                    )],
                ));
            }
        }
        if ip != "None" && old_ip.as_deref() != Some(ip.as_str()) {
            let claim = format!("{IP_CLAIMS}{ip}");
            if !requested.is_empty() && held(state, &claim).await? {
                return Err(invalid(
                    obj,
                    "spec.clusterIPs",
                    json!([ip]),
                    &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                ));
            }
            claims.push(claim);
        }
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
        obj["spec"]["ipFamilies"] = json!(["IPv4"]);
        obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    let wants_ports = ty == "NodePort" || ty == "LoadBalancer";
    let old_ports: Vec<(String, i64, i64)> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_string(),
                p.get("port").and_then(Value::as_i64)?,
                p.get("nodePort").and_then(Value::as_i64)?,
            ))
        })
        .collect();
    let mut used: Option<HashSet<String>> = None;
    let mut asked_taken = None;
    if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let proto = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            if !wants_ports {
                if let Some(o) = p.as_object_mut() {
                    o.remove("nodePort");
                }
                continue;
            }
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let asked = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            let kept = old_ports
                .iter()
                .find(|(pr, po, _)| *pr == proto && *po == port)
                .map(|o| o.2);
            let np = match (asked, kept) {
                (0, Some(k)) => k,
                (0, None) => {
                    if used.is_none() {
                        used = Some(taken(state, PORT_CLAIMS).await?);
                    }
                    let used = used.as_mut().expect("filled above");
                    let span = (NODE_PORTS.end() - NODE_PORTS.start() + 1) as u128;
                    let start = (uuid::Uuid::new_v4().as_u128() % span) as i64;
                    let np = (0..span as i64)
                        .map(|i| NODE_PORTS.start() + (start + i) % span as i64)
                        .find(|n| !used.contains(&format!("{}-{n}", proto.to_ascii_lowercase())))
                        .ok_or_else(|| ApiError::internal("no free NodePort"))?;
                    used.insert(format!("{}-{np}", proto.to_ascii_lowercase()));
                    np
                }
                (a, _) => a,
            };
            if !old_ports.iter().any(|(pr, _, n)| *pr == proto && *n == np) {
                let claim = port_claim(&proto, np);
                if asked != 0 && asked_taken.is_none() && held(state, &claim).await? {
                    asked_taken = Some((i, np));
                }
                claims.push(claim);
            }
            p["nodePort"] = json!(np);
        }
    }
    if let Some((i, np)) = asked_taken {
        return Err(invalid(
            obj,
            &format!("spec.ports[{i}].nodePort"),
            json!(np),
            "provided port is already allocated",
        ));
    }
    Ok(claims)
}

/// For an update: claims to add, and claims the old object held that the
/// new one no longer does.
pub async fn allocate_update(
    state: &State,
    res: &Resource,
    old: &Value,
    new: &mut Value,
) -> ApiResult<(Vec<String>, Vec<String>)> {
    if res.kind != "Service" {
        return Ok((vec![], vec![]));
    }
    let add = allocate(state, res, new, Some(old)).await?;
    let now: HashSet<String> = claims_of(res, new).into_iter().collect();
    let release = claims_of(res, old)
        .into_iter()
        .filter(|c| !now.contains(c))
        .collect();
    Ok((add, release))
}
