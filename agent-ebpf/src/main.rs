//! eBPF programs loaded by the agent.
#![no_std]
#![no_main]

#[allow(dead_code)] // some constants are only read by the agent
mod abi;

use abi::PacketCount;
use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};

#[map]
static PACKET_COUNT: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(1, 0);

/// Counts packets and bytes, then lets the packet continue. TC_ACT_UNSPEC is
/// "next program" under TCX and "default action" under clsact, so the counter
/// never changes what happens to traffic in either attach mode.
#[classifier]
pub fn count_packets(ctx: TcContext) -> i32 {
    if let Some(count) = PACKET_COUNT.get_ptr_mut(0) {
        // Per-CPU slot: no other CPU writes it, so plain adds are race-free.
        unsafe {
            (*count).packets += 1;
            (*count).bytes += u64::from(ctx.len());
        }
    }
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
