//! The packet counter that proves the toolchain and both TC attach modes.

use agent_ebpf_common::PacketCount;
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TcContext};

#[map]
static PACKET_COUNT: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(1, 0);

pub fn count(ctx: &TcContext) {
    if let Some(count) = PACKET_COUNT.get_ptr_mut(0) {
        // Per-CPU slot: no other CPU writes it, so plain adds are race-free.
        unsafe {
            (*count).packets += 1;
            (*count).bytes += u64::from(ctx.len());
        }
    }
}
