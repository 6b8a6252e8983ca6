//! Map key and value layouts shared by the eBPF programs and the agent.
//!
//! This file is compiled into both sides (the agent includes it by path), so
//! a layout change can never reach only one of them. Everything here is
//! `#[repr(C)]`, plain old data and `no_std`.

/// Packet and byte totals kept per CPU by the counting classifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Name of the per-CPU array that holds one [`PacketCount`] at index 0.
pub const PACKET_COUNT_MAP: &str = "PACKET_COUNT";
/// Name of the TC classifier that counts every packet it sees.
pub const COUNT_PROGRAM: &str = "count_packets";
