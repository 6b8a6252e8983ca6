//! The routing programs' decision counters and node-wide settings, shared
//! by every part of the datapath.

use agent_ebpf_common::{self as abi, Config, Stat};
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};

#[map(name = "DATAPATH_STATS")]
static DATAPATH_STATS: PerCpuArray<u64> = PerCpuArray::pinned(abi::STATS_CAPACITY, 0);

#[map(name = "DATAPATH_CONFIG")]
static DATAPATH_CONFIG: Array<Config> = Array::pinned(1, 0);

pub fn count(stat: Stat) {
    if let Some(c) = DATAPATH_STATS.get_ptr_mut(stat.index()) {
        // Per-CPU slot: no other CPU writes it, so plain adds are race-free.
        unsafe { *c += 1 };
    }
}

/// The node-wide settings, once the agent has written them.
pub fn config() -> Option<Config> {
    DATAPATH_CONFIG.get(0).copied()
}
