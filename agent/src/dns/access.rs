//! Who the cluster DNS answers, and how much at once. It listens on the
//! node's address, which other machines may reach: answering them would
//! make every node an open resolver (and a reflector) for the node's own
//! upstream resolvers. Pods and nodes are the only clients; a flood from
//! them is met with SERVFAIL instead of a task per query.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Queries in flight (over UDP) and TCP connections open, each.
pub const MAX_IN_FLIGHT: usize = 512;

/// The clients the server answers and its bound on concurrent work.
#[derive(Clone, Debug)]
pub struct Access {
    allowed: Vec<Ipv4Net>,
    udp: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
}

impl Access {
    /// Answers sources in `allowed` (the cluster CIDR and node addresses),
    /// with at most `limit` UDP queries in flight and `limit` TCP
    /// connections open.
    pub fn new(allowed: Vec<Ipv4Net>, limit: usize) -> Self {
        Self {
            allowed,
            udp: Arc::new(Semaphore::new(limit)),
            tcp: Arc::new(Semaphore::new(limit)),
        }
    }

    /// Whether a query from `ip` is answered.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return false,
            },
        };
        self.allowed.iter().any(|n| n.contains(&v4))
    }

    /// A slot for one UDP query, if one is free.
    pub fn udp_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.udp.clone().try_acquire_owned().ok()
    }

    /// A slot for one TCP connection, if one is free.
    pub fn tcp_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.tcp.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cluster_and_nodes_are_allowed() {
        let a = Access::new(
            vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.99.0.10/32".parse().unwrap(),
            ],
            2,
        );
        assert!(a.allows("10.244.3.7".parse().unwrap()));
        assert!(a.allows("10.99.0.10".parse().unwrap()));
        assert!(a.allows("::ffff:10.244.0.1".parse().unwrap()));
        assert!(!a.allows("10.99.0.11".parse().unwrap()));
        assert!(!a.allows("192.0.2.1".parse().unwrap()));
        assert!(!a.allows("2001:db8::1".parse().unwrap()));
        let (s1, s2) = (a.udp_slot(), a.udp_slot());
        assert!(s1.is_some() && s2.is_some());
        assert!(a.udp_slot().is_none(), "a third query in flight");
        drop(s1);
        assert!(a.udp_slot().is_some(), "a slot is given back");
    }
}
