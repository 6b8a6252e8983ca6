//! Services built the way kube-proxy builds them, as the baselines of
//! `bench-services`: its iptables mode (a KUBE-SERVICES chain with one rule
//! per service port, each jumping to a KUBE-SVC-* chain that picks a
//! KUBE-SEP-* endpoint chain with statistic-mode random rules, which DNATs)
//! and its nftables mode (one verdict map from address, protocol and port
//! to a service chain that picks an endpoint chain with `numgen random`).
//! Only the shape that decides the cost of a new connection is kept; the
//! rules for traffic from outside the node (node ports, external IPs) are
//! left out, as the benchmark's clients are on the node.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// One service port and its endpoints.
#[derive(Clone, Debug)]
pub struct Service {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// `n` services: `measured` (one or more ports of one service) at position
/// `n / 2` (kube-proxy orders KUBE-SERVICES by a hash, so a service sits
/// in the middle on average), the others with 3 endpoints each at
/// addresses that need not exist.
pub fn services(n: usize, measured: &[Service]) -> Vec<Service> {
    let mut out = Vec::with_capacity(n + measured.len());
    for i in 0..n.saturating_sub(1) {
        if i == n / 2 {
            out.extend_from_slice(measured);
        }
        let i = i as u32;
        out.push(Service {
            vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i),
            port: 80,
            endpoints: (0..3)
                .map(|j| {
                    (
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 160, 0, 0)) + i * 3 + j),
                        8080,
                    )
                })
                .collect(),
        });
    }
    if n <= 1 || n / 2 >= n - 1 {
        out.extend_from_slice(measured);
    }
    out
}

/// A chain-name suffix the way kube-proxy makes them: 16 characters.
fn tag(kind: &str, i: usize, j: usize) -> String {
    format!("{kind}-{i:010X}{j:06X}")
}

/// An `iptables-restore` input for the nat table.
pub fn iptables(services: &[Service]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    chains.push_str("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    rules.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
    );
    for (i, s) in services.iter().enumerate() {
        let svc = tag("KUBE-SVC", i, 0);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/s{i}:p cluster IP\" -m tcp --dport {} -j {svc}",
            s.vip, s.port
        );
        let n = s.endpoints.len();
        for (j, (ip, port)) in s.endpoints.iter().enumerate() {
            let sep = tag("KUBE-SEP", i, j);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            // Endpoint j of the n left takes 1/(n-j) of what reaches it:
            // an even choice overall.
            if j + 1 < n {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/s{i}:p -> {ip}:{port}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / (n - j) as f64
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/s{i}:p -> {ip}:{port}\" -j {sep}"
                );
            }
            let _ = writeln!(rules, "-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:{port}"
            );
        }
    }
    chains + &rules + "COMMIT\n"
}

/// An `nft -f` input: the table `kube-proxy` (replacing an earlier one).
pub fn nftables(services: &[Service]) -> String {
    let mut out = String::from(
        "table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {\n\
         \tchain mark-for-masquerade {\n\t\tmeta mark set meta mark or 0x4000\n\t}\n",
    );
    let mut elements = Vec::with_capacity(services.len());
    for (i, s) in services.iter().enumerate() {
        let svc = tag("service", i, 0);
        elements.push(format!("{} . tcp . {} : goto {svc}", s.vip, s.port));
        let picks: Vec<String> = (0..s.endpoints.len())
            .map(|j| format!("{j} : goto {}", tag("endpoint", i, j)))
            .collect();
        let _ = writeln!(
            out,
            "\tchain {svc} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            s.endpoints.len(),
            picks.join(", ")
        );
        for (j, (ip, port)) in s.endpoints.iter().enumerate() {
            let _ = writeln!(
                out,
                "\tchain {} {{\n\t\tip saddr {ip} jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to {ip}:{port}\n\t}}",
                tag("endpoint", i, j)
            );
        }
    }
    let _ = writeln!(
        out,
        "\tmap service-ips {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = {{ {} }}\n\t}}",
        elements.join(", ")
    );
    out.push_str(
        "\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n\
         \tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n}\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> Vec<Service> {
        vec![Service {
            vip: "10.96.250.1".parse().unwrap(),
            port: 7001,
            endpoints: vec![("10.98.1.2".parse().unwrap(), 7001)],
        }]
    }

    #[test]
    fn the_measured_service_sits_in_the_middle_of_n() {
        for n in [1, 2, 3, 1000] {
            let s = services(n, &measured());
            assert_eq!(s.len(), n, "{n}");
            let at = s.iter().position(|s| s.port == 7001).unwrap();
            assert_eq!(at, if n == 1 { 0 } else { n / 2 }, "{n}");
        }
    }

    #[test]
    fn iptables_rules_follow_kube_proxys_shape() {
        let text = iptables(&services(3, &measured()));
        let svc_rules = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .count();
        assert_eq!(svc_rules, 3);
        // Three endpoints: 1/3, then 1/2, then the rest.
        assert!(text.contains("--probability 0.33333333333"), "{text}");
        assert!(text.contains("--probability 0.50000000000"), "{text}");
        assert!(text.contains("DNAT --to-destination 10.98.1.2:7001"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn nftables_maps_every_service_port_once() {
        let text = nftables(&services(3, &measured()));
        assert_eq!(text.matches(" . tcp . ").count(), 3);
        assert!(text.contains("10.96.250.1 . tcp . 7001 : goto service-"));
        assert!(text.contains("numgen random mod 3 vmap"));
    }
}
