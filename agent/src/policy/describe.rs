//! `agent bpf policy`: each local pod's policy as the datapath holds it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use agent_ebpf_common as abi;

use super::maps::{read, Shown};

/// A human description of the policy maps pinned in `pin_dir`.
pub fn describe(pin_dir: &Path) -> anyhow::Result<String> {
    let (pods, ids) = read(pin_dir)?;
    let mut holders: BTreeMap<u32, Vec<Ipv4Addr>> = BTreeMap::new();
    for (ip, id) in &ids {
        holders.entry(*id).or_default().push(*ip);
    }
    let mut out = String::new();
    writeln!(
        out,
        "NetworkPolicy: {} local pods, {} pod addresses in {} identities",
        pods.len(),
        ids.len(),
        holders.len()
    )?;
    for pod in &pods {
        pod_section(&mut out, pod, &ids, &holders)?;
    }
    Ok(out)
}

fn pod_section(
    out: &mut String,
    pod: &Shown,
    ids: &BTreeMap<Ipv4Addr, u32>,
    holders: &BTreeMap<u32, Vec<Ipv4Addr>>,
) -> std::fmt::Result {
    let ip = pod.ip.map(|i| i.to_string()).unwrap_or_default();
    let id = pod.ip.and_then(|i| ids.get(&i)).copied().unwrap_or(0);
    writeln!(out, "\npod {ip} (identity {id}, slot {})", pod.endpoint.id)?;
    let c = &pod.counters;
    for (dir, name, flag, allowed, denied) in [
        (
            abi::POLICY_INGRESS,
            "ingress",
            abi::POLICY_ISOLATED_INGRESS,
            c.ingress_allowed,
            c.ingress_denied,
        ),
        (
            abi::POLICY_EGRESS,
            "egress",
            abi::POLICY_ISOLATED_EGRESS,
            c.egress_allowed,
            c.egress_denied,
        ),
    ] {
        if pod.endpoint.flags & flag == 0 {
            writeln!(out, "  {name}: not isolated (everything allowed)")?;
            continue;
        }
        writeln!(
            out,
            "  {name}: isolated; new flows allowed {allowed}, denied {denied}"
        )?;
        let rules: Vec<_> = pod.rules.iter().filter(|r| r.0 == dir).collect();
        if rules.is_empty() {
            writeln!(out, "    allow nothing")?;
        }
        for (_, peer, proto, first, last) in rules {
            let ports = match (proto, first, last) {
                (0, _, _) => "all protocols and ports".to_string(),
                (p, 0, 65535) => format!("{} all ports", proto_name(*p)),
                (p, f, l) if f == l => format!("{}/{f}", proto_name(*p)),
                (p, f, l) => format!("{}/{f}-{l}", proto_name(*p)),
            };
            writeln!(out, "    allow {} {ports}", peer_name(*peer, holders))?;
        }
        for (_, net, slots) in pod.cidrs.iter().filter(|c| c.0 == dir) {
            writeln!(out, "    address {net} is in CIDR slots {slots:#b}")?;
        }
    }
    Ok(())
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        other => format!("proto {other}"),
    }
}

fn peer_name(peer: u32, holders: &BTreeMap<u32, Vec<Ipv4Addr>>) -> String {
    match peer {
        abi::POLICY_PEER_ANY => "any peer".into(),
        p if p >= abi::CIDR_PEER_BASE => format!("CIDR slot {}", p - abi::CIDR_PEER_BASE),
        id => {
            let ips: Vec<String> = holders
                .get(&id)
                .into_iter()
                .flatten()
                .map(|i| i.to_string())
                .collect();
            format!("identity {id} [{}]", ips.join(" "))
        }
    }
}
