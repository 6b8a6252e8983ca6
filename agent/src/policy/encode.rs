//! The compiled policy as the datapath's map entries: pure, so the layout
//! is tested without a kernel. See `agent_ebpf_common::policy` for how the
//! programs read them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use agent_ebpf_common::{self as abi, PolicyCidrKey, PolicyEndpoint, PolicyRuleKey};

use super::model::{Cidr, Compiled, Direction, Peer, Ports};

/// Every entry of the policy maps, keyed as the programs look them up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    /// Pod address (as in the IP header) → identity.
    pub identities: HashMap<u32, u32>,
    /// Local pod address → its slot and isolation.
    pub endpoints: HashMap<u32, PolicyEndpoint>,
    /// (prefix length, key) of each rule.
    pub rules: HashSet<(u32, PolicyRuleKey)>,
    /// (prefix length, key) → CIDR slots containing the prefix.
    pub cidrs: HashMap<(u32, PolicyCidrKey), u32>,
    /// ipBlocks dropped because an endpoint had more than the slots allow.
    pub dropped_blocks: usize,
}

/// The address as the programs compare it: read from the IP header.
pub fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Encodes `compiled`; `slot` gives each local pod's endpoint slot.
pub fn encode(compiled: &Compiled, slot: &BTreeMap<(String, String), u32>) -> Entries {
    let mut out = Entries::default();
    for (ip, id) in &compiled.identities {
        out.identities.insert(ip_key(*ip), *id);
    }
    for (key, ep) in &compiled.endpoints {
        let (Some(ip), Some(&id)) = (ep.ip, slot.get(key)) else {
            continue;
        };
        let mut flags = 0;
        if ep.ingress.isolated {
            flags |= abi::POLICY_ISOLATED_INGRESS;
        }
        if ep.egress.isolated {
            flags |= abi::POLICY_ISOLATED_EGRESS;
        }
        out.endpoints
            .insert(ip_key(ip), PolicyEndpoint { id, flags });
        direction(&mut out, id, abi::POLICY_INGRESS, &ep.ingress);
        direction(&mut out, id, abi::POLICY_EGRESS, &ep.egress);
    }
    out
}

fn direction(out: &mut Entries, ep: u32, dir: u8, rules: &Direction) {
    if !rules.isolated {
        return;
    }
    let mut blocks: Vec<(&Cidr, &[Cidr])> = Vec::new();
    for rule in &rules.rules {
        let peer = match &rule.peer {
            Peer::Any => abi::POLICY_PEER_ANY,
            Peer::Identity(id) => *id,
            Peer::Cidr { cidr, except } => {
                let found = blocks
                    .iter()
                    .position(|(c, e)| *c == cidr && *e == except.as_slice());
                let slot = match found {
                    Some(s) => s,
                    None if blocks.len() < abi::MAX_CIDR_SLOTS as usize => {
                        blocks.push((cidr, except));
                        blocks.len() - 1
                    }
                    None => {
                        out.dropped_blocks += 1;
                        continue;
                    }
                };
                abi::CIDR_PEER_BASE + slot as u32
            }
        };
        let mut key = PolicyRuleKey {
            endpoint: ep,
            peer,
            direction: dir,
            proto: 0,
            port: [0; 2],
        };
        match rule.ports {
            Ports::All => {
                out.rules.insert((abi::POLICY_RULE_FIXED_BITS, key));
            }
            Ports::Range {
                protocol,
                first,
                last,
            } => {
                key.proto = protocol.number();
                for (start, bits) in port_prefixes(first, last) {
                    key.port = start.to_be_bytes();
                    out.rules.insert((abi::POLICY_RULE_FIXED_BITS + bits, key));
                }
            }
        }
    }
    // Every network and exception is a prefix in the trie, each holding the
    // slots that contain it and do not except it: the longest prefix that
    // holds an address then answers for the address.
    let prefixes = blocks
        .iter()
        .flat_map(|(c, e)| std::iter::once(**c).chain(e.iter().copied()));
    for p in prefixes {
        let mut slots = 0u32;
        for (i, (cidr, except)) in blocks.iter().enumerate() {
            if cidr.contains(&p) && !except.iter().any(|e| e.contains(&p)) {
                slots |= 1 << i;
            }
        }
        let key = PolicyCidrKey {
            endpoint: ep,
            direction: u32::from(dir),
            addr: ip_key(p.addr),
        };
        out.cidrs
            .insert((abi::POLICY_CIDR_FIXED_BITS + u32::from(p.len), key), slots);
    }
}

/// `first..=last` as aligned blocks: (first port, prefix bits of 16).
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(first.max(1)), u32::from(last));
    if first <= 1 && last == u16::MAX {
        // Every port (port 0 is never a destination) in one prefix.
        return vec![(0, 0)];
    }
    while start <= end {
        let mut size = if start == 0 {
            1 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        out.push((start as u16, 16 - size.trailing_zeros()));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::*;
    use super::*;

    #[test]
    fn port_ranges_become_aligned_blocks() {
        assert_eq!(port_prefixes(80, 80), [(80, 16)]);
        assert_eq!(port_prefixes(80, 81), [(80, 15)]);
        assert_eq!(port_prefixes(79, 81), [(79, 16), (80, 15)]);
        assert_eq!(port_prefixes(1, u16::MAX), [(0, 0)]);
        let blocks = port_prefixes(32000, 32768);
        let covered: u32 = blocks.iter().map(|(_, b)| 1u32 << (16 - b)).sum();
        assert_eq!(covered, 769);
        for (start, bits) in blocks {
            let size = 1u32 << (16 - bits);
            assert_eq!(u32::from(start) % size, 0, "aligned");
            assert!(u32::from(start) >= 32000 && u32::from(start) + size - 1 <= 32768);
        }
    }

    fn endpoint(ingress: Direction) -> Compiled {
        let mut c = Compiled::default();
        c.identities.insert(Ipv4Addr::new(10, 0, 0, 1), 300);
        c.endpoints.insert(
            ("x".into(), "a".into()),
            Endpoint {
                namespace: "x".into(),
                name: "a".into(),
                ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
                identity: 300,
                ingress,
                egress: Direction::default(),
            },
        );
        c
    }

    fn slots() -> BTreeMap<(String, String), u32> {
        BTreeMap::from([(("x".to_string(), "a".to_string()), 7)])
    }

    /// What the programs' longest-prefix lookup answers for `ip`.
    fn lookup(e: &Entries, ip: Ipv4Addr) -> Option<u32> {
        e.cidrs
            .iter()
            .filter(|((bits, k), _)| {
                let len = (bits - abi::POLICY_CIDR_FIXED_BITS) as u8;
                Cidr::new(Ipv4Addr::from(k.addr.to_ne_bytes()), len).contains_ip(ip)
            })
            .max_by_key(|((bits, _), _)| *bits)
            .map(|(_, slots)| *slots)
    }

    #[test]
    fn blocks_with_exceptions_resolve_by_longest_prefix() {
        let block = |c: &str, e: &[&str]| Rule {
            peer: Peer::Cidr {
                cidr: Cidr::parse(c).unwrap(),
                except: e.iter().map(|e| Cidr::parse(e).unwrap()).collect(),
            },
            ports: Ports::All,
        };
        let c = endpoint(Direction {
            isolated: true,
            rules: vec![
                block("10.0.0.0/8", &["10.1.0.0/16"]),
                block("10.1.2.0/24", &[]),
            ],
        });
        let e = encode(&c, &slots());
        assert_eq!(e.endpoints.values().next().unwrap().id, 7);
        assert_eq!(
            e.endpoints.values().next().unwrap().flags,
            abi::POLICY_ISOLATED_INGRESS
        );
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(lookup(&e, ip("10.9.9.9")), Some(0b01));
        assert_eq!(lookup(&e, ip("10.1.9.9")), Some(0b00));
        assert_eq!(lookup(&e, ip("10.1.2.3")), Some(0b10));
        assert_eq!(lookup(&e, ip("11.0.0.1")), None);
        let peers: HashSet<u32> = e.rules.iter().map(|(_, k)| k.peer).collect();
        assert_eq!(
            peers,
            HashSet::from([abi::CIDR_PEER_BASE, abi::CIDR_PEER_BASE + 1])
        );
    }

    #[test]
    fn rules_name_identities_protocols_and_port_prefixes() {
        let c = endpoint(Direction {
            isolated: true,
            rules: vec![
                Rule {
                    peer: Peer::Identity(300),
                    ports: Ports::Range {
                        protocol: Protocol::Udp,
                        first: 80,
                        last: 81,
                    },
                },
                Rule {
                    peer: Peer::Any,
                    ports: Ports::All,
                },
            ],
        });
        let e = encode(&c, &slots());
        let mut rules: Vec<(u32, u32, u8, [u8; 2])> = e
            .rules
            .iter()
            .map(|(bits, k)| (*bits, k.peer, k.proto, k.port))
            .collect();
        rules.sort();
        assert_eq!(
            rules,
            [
                (80, abi::POLICY_PEER_ANY, 0, [0, 0]),
                (95, 300, 17, [0, 80])
            ]
        );
        // Not isolated: no rules at all.
        let open = encode(&endpoint(Direction::default()), &slots());
        assert!(open.rules.is_empty());
        assert_eq!(open.endpoints.values().next().unwrap().flags, 0);
    }
}
