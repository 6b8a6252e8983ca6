//! IPv4 networks as the cluster's flags and objects write them
//! (`10.244.0.0/16`): the service range, the pod network split per node,
//! and NetworkPolicy ipBlocks all use this one type.

use std::net::Ipv4Addr;

/// An IPv4 network, held as its network address (host bits cleared, so
/// `10.1.2.3/16` is `10.1.0.0/16`) and prefix length (0 to 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

/// The netmask of a prefix length, as a number.
fn mask(len: u8) -> u32 {
    match len {
        0 => 0,
        len => u32::MAX << (32 - u32::from(len.min(32))),
    }
}

impl Cidr {
    /// The network of `addr` with `len` bits of prefix (at most 32).
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        }
    }

    /// `a.b.c.d/n`, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// Whether `other` lies inside this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && Cidr::new(other.addr, self.len) == *self
    }

    /// Whether `ip` lies inside this network.
    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        self.contains(&Cidr::new(ip, 32))
    }

    /// How many addresses the network spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// The address `n` places after the network address (1 is the first
    /// usable one); wraps within the network when `n` is past its end.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        let offset = (u64::from(n) % self.size()) as u32;
        Ipv4Addr::from(u32::from(self.addr) | offset)
    }

    /// The `index`th subnet of prefix length `len`, if it fits.
    pub fn subnet(&self, len: u8, index: u32) -> Option<Cidr> {
        if len < self.len || len > 32 {
            return None;
        }
        if u64::from(index) >= 1u64 << (len - self.len) {
            return None;
        }
        let step = 1u64 << (32 - u32::from(len));
        let base = u64::from(u32::from(self.addr)) + u64::from(index) * step;
        Some(Cidr::new(Ipv4Addr::from(base as u32), len))
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (want a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        Ok(Cidr::new(ip, len))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parsing_clears_host_bits_and_refuses_what_is_not_a_network() {
        assert_eq!(c("10.1.2.3/16"), Cidr::new(Ipv4Addr::new(10, 1, 0, 0), 16));
        assert_eq!(c("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn containment_of_networks_and_addresses() {
        let net = c("10.96.0.0/12");
        assert!(net.contains(&c("10.100.0.0/16")));
        assert!(!net.contains(&c("10.0.0.0/8")));
        assert!(net.contains_ip(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!net.contains_ip(Ipv4Addr::new(10, 112, 0, 0)));
        assert!(c("0.0.0.0/0").contains_ip(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(c("192.0.2.1/32").contains_ip(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn addresses_and_subnets_by_index() {
        let net = c("10.96.0.0/12");
        assert_eq!(net.nth(1), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(net.nth(10), Ipv4Addr::new(10, 96, 0, 10));
        let pods = c("10.244.0.0/16");
        assert_eq!(pods.subnet(24, 0), Some(c("10.244.0.0/24")));
        assert_eq!(pods.subnet(24, 255), Some(c("10.244.255.0/24")));
        assert_eq!(pods.subnet(24, 256), None);
        assert_eq!(pods.subnet(8, 0), None);
        assert_eq!(pods.subnet(33, 0), None);
        assert_eq!(c("0.0.0.0/0").subnet(1, 1), Some(c("128.0.0.0/1")));
    }
}
