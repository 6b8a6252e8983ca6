//! `agent bpf lb`: the load balancer's pinned maps in human form.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;

use crate::ebpf::abi::{self, Backend, ServiceValue};

use super::model::{Frontend, Proto};
use super::table::{frontend, target};
use super::{bpf, cgroup, query};

/// Lines listed per section before the rest is only counted.
const MAX_LINES: usize = 200;

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn port(raw: u16) -> u16 {
    u16::from_be(raw)
}

fn backend_text(backends: &BTreeMap<u32, Backend>, id: u32) -> String {
    match backends.get(&id) {
        Some(b) => target(b).to_string(),
        None => "(gone)".into(),
    }
}

/// Now on the clock the programs stamp affinity with (CLOCK_MONOTONIC).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Describes the load balancer pinned in `pin_dir`: frontends with their
/// slots and backends, counters, and the per-socket state (translations
/// to undo, UDP flows, client affinity).
pub fn describe(pin_dir: &Path) -> anyhow::Result<String> {
    let snap = bpf::snapshot(pin_dir)
        .with_context(|| format!("{}: no load balancer pinned here", pin_dir.display()))?;
    let mut out = String::new();
    writeln!(out, "load balancer pinned in {}", pin_dir.display())?;
    writeln!(
        out,
        "programs (cgroup sock_addr links): {}",
        if snap.links.is_empty() {
            "none".to_string()
        } else {
            snap.links.join(" ")
        }
    )?;

    if let Some(first) = snap.links.first() {
        writeln!(out, "{}", attachment(&bpf::links_dir(pin_dir).join(first)))?;
    }

    let backends: BTreeMap<u32, Backend> = snap.backends.iter().copied().collect();
    let mut heads: BTreeMap<Frontend, ServiceValue> = BTreeMap::new();
    let mut slots: BTreeMap<Frontend, Vec<(u16, u32)>> = BTreeMap::new();
    for (k, v) in &snap.rows {
        let Some(fe) = frontend(k) else { continue };
        if k.slot == 0 {
            heads.insert(fe, *v);
        } else {
            slots.entry(fe).or_default().push((k.slot, v.backend_id));
        }
    }
    writeln!(out, "\nfrontends ({}):", heads.len())?;
    for (fe, head) in &heads {
        let affinity = if head.flags & abi::SERVICE_F_AFFINITY != 0 {
            format!("  affinity ClientIP {}s", head.affinity_timeout)
        } else {
            String::new()
        };
        let count = if head.count == 0 {
            "no backend (refused)".to_string()
        } else {
            format!("{} backends", head.count)
        };
        writeln!(out, "  {fe}  id {}  {count}{affinity}", head.service_id)?;
        let mut rows = slots.remove(fe).unwrap_or_default();
        rows.sort();
        for (slot, id) in &rows {
            let note = if *slot > head.count {
                "  (beyond the count)"
            } else {
                ""
            };
            writeln!(
                out,
                "    slot {slot:<3} backend {}  id {id}{note}",
                backend_text(&backends, *id)
            )?;
        }
        for (id, b) in backends.iter().filter(|(_, b)| {
            b.service_id == head.service_id && b.flags & abi::BACKEND_F_ACTIVE == 0
        }) {
            writeln!(out, "    draining  backend {}  id {id}", target(b))?;
        }
    }
    for (fe, rows) in &slots {
        writeln!(out, "  {fe}  slots without a frontend: {}", rows.len())?;
    }

    writeln!(out, "\ncounters:")?;
    for (name, n) in &snap.stats {
        writeln!(out, "  {name:<16} {n}")?;
    }

    writeln!(
        out,
        "\nsocket translations ({}): what getpeername/recvfrom report",
        snap.reverse.len()
    )?;
    for (k, v) in snap.reverse.iter().take(MAX_LINES) {
        writeln!(
            out,
            "  socket {:<10} {}:{} shown as {}:{}",
            k.cookie,
            ip(k.ip),
            port(k.port),
            ip(v.vip),
            port(v.port)
        )?;
    }
    more(&mut out, snap.reverse.len())?;

    writeln!(out, "\nudp flows ({}):", snap.flows.len())?;
    for (k, id) in snap.flows.iter().take(MAX_LINES) {
        let proto = Proto::from_number(k.proto).map_or("?".to_string(), |p| p.to_string());
        writeln!(
            out,
            "  socket {:<10} {}:{}/{proto} -> {}",
            k.cookie,
            ip(k.vip),
            port(k.port),
            backend_text(&backends, *id)
        )?;
    }
    more(&mut out, snap.flows.len())?;

    writeln!(out, "\nclient affinity ({}):", snap.affinity.len())?;
    let now = monotonic_ns();
    for (k, v) in snap.affinity.iter().take(MAX_LINES) {
        let age = now.saturating_sub(v.last_used_ns) / 1_000_000_000;
        writeln!(
            out,
            "  netns {:<12} service {:<5} -> {}  last used {age}s ago",
            k.netns_cookie,
            k.service_id,
            backend_text(&backends, v.backend_id)
        )?;
    }
    more(&mut out, snap.affinity.len())?;

    writeln!(
        out,
        "\nnode port flows ({}): client -> node port -> backend",
        snap.node_port_flows.len()
    )?;
    for (k, v) in snap.node_port_flows.iter().take(MAX_LINES) {
        let proto = Proto::from_number(k.proto).map_or("?".to_string(), |p| p.to_string());
        let via = if v.nat_port == 0 {
            String::new()
        } else {
            format!("  (from node port {})", v.nat_port)
        };
        writeln!(
            out,
            "  {}:{} -> {}:{}/{proto} -> {}:{}{via}",
            ip(k.src),
            k.sport,
            ip(k.dst),
            k.dport,
            ip(v.backend_ip),
            v.backend_port
        )?;
    }
    more(&mut out, snap.node_port_flows.len())?;
    Ok(out)
}

/// Where the link pinned at `pin` attaches, and how many programs run on
/// each load balancer hook there (more than one means a stale agent's
/// programs are still attached beside ours).
fn attachment(pin: &Path) -> String {
    let found = query::link_cgroup_id(pin)
        .ok()
        .and_then(|id| query::find_cgroup(&cgroup::v2_mount()?, id));
    let Some(dir) = found else {
        return "attached at: (cgroup not found)".into();
    };
    let hooks: Vec<String> = query::HOOKS
        .iter()
        .map(|(name, hook)| match query::attached(&dir, *hook) {
            Ok(n) => format!("{name}={n}"),
            Err(e) => format!("{name}=({e})"),
        })
        .collect();
    format!(
        "attached at {} (programs per hook: {})",
        dir.display(),
        hooks.join(" ")
    )
}

fn more(out: &mut String, total: usize) -> std::fmt::Result {
    if total > MAX_LINES {
        writeln!(out, "  ... and {} more", total - MAX_LINES)?;
    }
    Ok(())
}
