//! NetworkPolicy on this node: the compiler that turns pods, namespaces and
//! policies into allow rules per local pod over numeric identities
//! (`compile`), their encoding as the TC programs' map entries (`encode`),
//! the writer of those maps (`maps`), the watch loop that keeps them
//! current (`sync`) and the verdict counters on `/metrics` (`metrics`).

pub mod compile;
pub mod describe;
pub mod encode;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod sync;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

pub use compile::{compile, Identities, Inputs};
pub use model::*;
pub use sync::Engine;

impl Direction {
    /// Whether a packet with a peer at `ip` of identity `id` to `port` over
    /// `protocol` passes: what the datapath decides for a new flow.
    pub fn allows(&self, ip: Ipv4Addr, id: Identity, protocol: Protocol, port: u16) -> bool {
        if !self.isolated {
            return true;
        }
        self.rules.iter().any(|r| {
            let peer = match &r.peer {
                Peer::Any => true,
                Peer::Identity(i) => *i == id,
                Peer::Cidr { cidr, except } => {
                    cidr.contains_ip(ip) && !except.iter().any(|e| e.contains_ip(ip))
                }
            };
            let ports = match r.ports {
                Ports::All => true,
                Ports::Range {
                    protocol: p,
                    first,
                    last,
                } => p == protocol && (first..=last).contains(&port),
            };
            peer && ports
        })
    }
}
