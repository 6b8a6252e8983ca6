//! NetworkPolicies written the way kube-router's network policy
//! controller writes them, as the baseline of `bench-policy`: an ipset of
//! the selected sources and one of the selected pods per policy rule, a
//! KUBE-NWPLCY-* chain per policy that marks the packets its rules allow,
//! and a KUBE-POD-FW-* chain per isolated pod that accepts established
//! traffic, jumps into the chain of every policy selecting the pod, and
//! rejects what no policy marked. A new connection to the pod walks every
//! one of those chains; only the shape that decides that cost is kept
//! (no logging, no egress side, no node-port rules).

use std::fmt::Write;
use std::net::Ipv4Addr;

/// The mark a policy chain sets on what it allows.
const ALLOWED: &str = "0x10000/0x10000";

/// One policy selecting the pod: its allowed sources and TCP port.
#[derive(Clone, Debug)]
pub struct Policy {
    pub sources: Vec<Ipv4Addr>,
    pub port: u16,
}

/// `n` policies selecting one pod: `measured` at position `n / 2` (the
/// controller orders them by name, so it sits in the middle on average),
/// the others allowing `sources` on ports 10000 and up, as the agent's
/// filler policies do.
pub fn policies(n: usize, sources: &[Ipv4Addr], measured: &Policy) -> Vec<Policy> {
    let mut out: Vec<Policy> = (0..n.saturating_sub(1))
        .map(|i| Policy {
            sources: sources.to_vec(),
            port: 10000 + i as u16,
        })
        .collect();
    if n > 0 {
        out.insert(out.len().min(n / 2), measured.clone());
    }
    out
}

/// A chain or set name suffix the way kube-router makes them: 16
/// characters of a hash.
fn tag(i: usize) -> String {
    format!("{:016X}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// An `ipset restore` input with each policy's source and destination sets.
pub fn ipsets(pod: Ipv4Addr, policies: &[Policy]) -> String {
    let mut out = String::new();
    for (i, p) in policies.iter().enumerate() {
        let t = tag(i);
        let _ = writeln!(out, "create KUBE-SRC-{t} hash:ip timeout 0");
        for s in &p.sources {
            let _ = writeln!(out, "add KUBE-SRC-{t} {s} timeout 0");
        }
        let _ = writeln!(out, "create KUBE-DST-{t} hash:ip timeout 0");
        let _ = writeln!(out, "add KUBE-DST-{t} {pod} timeout 0");
    }
    out
}

/// An `iptables-restore` input for the filter table of the pod's side: the
/// pod's firewall chain on INPUT (the baseline's pod is the namespace's
/// own address, so its traffic is input, not forwarded).
pub fn iptables(pod: Ipv4Addr, policies: &[Policy]) -> String {
    if policies.is_empty() {
        // No policy selects the pod: it is not isolated, no chain at all.
        return "*filter\nCOMMIT\n".into();
    }
    let fw = format!("KUBE-POD-FW-{}", tag(usize::MAX));
    let mut chains = format!(":KUBE-ROUTER-INPUT - [0:0]\n:{fw} - [0:0]\n");
    let mut rules = String::from("-A INPUT -j KUBE-ROUTER-INPUT\n");
    let _ = writeln!(rules, "-A KUBE-ROUTER-INPUT -d {pod}/32 -j {fw}");
    let _ = writeln!(
        rules,
        "-A {fw} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A {fw} -m conntrack --ctstate INVALID -j DROP"
    );
    let mut policy_rules = String::new();
    for (i, p) in policies.iter().enumerate() {
        let t = tag(i);
        let chain = format!("KUBE-NWPLCY-{t}");
        let _ = writeln!(chains, ":{chain} - [0:0]");
        let _ = writeln!(rules, "-A {fw} -j {chain}");
        let _ = writeln!(
            policy_rules,
            "-A {chain} -p tcp -m set --match-set KUBE-SRC-{t} src -m set --match-set KUBE-DST-{t} dst -m tcp --dport {} -j MARK --set-xmark {ALLOWED}\n-A {chain} -m mark --mark {ALLOWED} -j RETURN",
            p.port
        );
    }
    let _ = writeln!(
        rules,
        "-A {fw} -m mark ! --mark {ALLOWED} -j REJECT --reject-with icmp-port-unreachable\n-A {fw} -j MARK --set-xmark 0x0/0x10000"
    );
    format!("*filter\n{chains}{rules}{policy_rules}COMMIT\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_policy_sits_in_the_middle_and_every_chain_is_jumped_to() {
        let src = [Ipv4Addr::new(10, 0, 0, 1)];
        let measured = Policy {
            sources: src.to_vec(),
            port: 7001,
        };
        let set = policies(5, &src, &measured);
        assert_eq!(set.len(), 5);
        assert_eq!(set[2].port, 7001);
        let pod = Ipv4Addr::new(10, 0, 0, 2);
        let rules = iptables(pod, &set);
        assert_eq!(rules.matches(" -j KUBE-NWPLCY-").count(), 5);
        assert!(rules.contains("--dport 7001 -j MARK"));
        assert_eq!(ipsets(pod, &set).matches("create ").count(), 10);
        assert!(policies(0, &src, &measured).is_empty());
    }
}
