//! The packet-counting classifier that proves the toolchain and attach
//! modes work.

/// Packet and byte totals kept per CPU by the counting classifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

crate::pod!(PacketCount);

/// Name of the per-CPU array that holds one [`PacketCount`] at index 0.
pub const PACKET_COUNT_MAP: &str = "PACKET_COUNT";
/// Name of the TC classifier that counts every packet it sees.
pub const COUNT_PROGRAM: &str = "count_packets";
