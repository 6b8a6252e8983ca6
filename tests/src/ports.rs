//! Free loopback ports.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Ports handed out by this process: tests run in parallel threads, and
/// two of them must never be given the same port.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Below this the range is left to well-known services.
const LOWEST: u16 = 10_000;

/// The first port the kernel picks for outgoing connections. A port it
/// can give a client (kubectl's, or any test's, source port) may be taken
/// between our check and the server's bind, so ports come from below it.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this
/// process has not handed out before. It lies below the kernel's ephemeral
/// range when there is room, so no client connection takes it meanwhile.
pub fn free_port() -> u16 {
    let top = ephemeral_start();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if top > LOWEST + 1_000 {
        let span = u64::from(top - LOWEST);
        let mut seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        for _ in 0..1_000 {
            // xorshift: a different start per process and per call.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let port = LOWEST + (seed % span) as u16;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port on loopback");
        if given.insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        if ephemeral_start() > LOWEST + 1_000 {
            assert!(ports.iter().all(|p| *p >= LOWEST && *p < ephemeral_start()));
        }
    }
}
