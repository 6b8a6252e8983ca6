//! What every conntrack entry shares: the clock its age is read on.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;

/// CLOCK_MONOTONIC in nanoseconds, the clock the agent's collector reads
/// entries' ages on too.
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}
