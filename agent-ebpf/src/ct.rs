//! Conntrack of the translated flows: each packet refreshes its flow's
//! state (last seen, TCP flags by direction), and new masqueraded flows
//! are counted against their pod's limit. Removing flows is the agent's
//! sweep's job; the programs only record what they see.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use agent_ebpf_common::{self as abi, CtConfig, CtState};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap},
};

#[map(name = "CT_CONFIG")]
static CT_CONFIG: Array<CtConfig> = Array::pinned(1, 0);

#[map(name = "CT_POD_OPENED")]
static CT_POD_OPENED: HashMap<u32, u64> = HashMap::pinned(abi::MAX_ENDPOINTS, 0);

#[map(name = "CT_POD_CLOSED")]
static CT_POD_CLOSED: HashMap<u32, u64> = HashMap::pinned(abi::MAX_ENDPOINTS, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// BPF_NOEXIST.
const NOEXIST: u64 = 1;

/// The state of a flow that starts with this packet.
pub fn new_state(owner: u32, tcp_flags: u8) -> CtState {
    let mut st = CtState {
        last_seen: 0,
        flags: 0,
        owner,
    };
    touch(&mut st, true, tcp_flags);
    st
}

/// Whether a packet from the side that started the flow opens a new
/// connection on the ports of one that is closing (a SYN without ACK after
/// a FIN or RST), as a client reusing its port does.
pub fn reopens(st: &CtState, tcp_flags: u8) -> bool {
    let closing = abi::CT_TCP_RST | abi::CT_TCP_FIN_FORWARD | abi::CT_TCP_FIN_REPLY;
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && st.flags & closing != 0
}

/// Records a packet of the flow: `forward` when it comes from the side that
/// started it; `tcp_flags` is 0 for anything but TCP.
pub fn touch(st: &mut CtState, forward: bool, tcp_flags: u8) {
    let mut flags = st.flags;
    let closing = abi::CT_TCP_RST | abi::CT_TCP_FIN_FORWARD | abi::CT_TCP_FIN_REPLY;
    if forward && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && flags & closing != 0 {
        // A new connection on the ports of one that closed: track it
        // afresh, or the sweep would take it for the old one, closing.
        flags = 0;
    }
    flags |= if forward {
        abi::CT_SEEN_FORWARD
    } else {
        abi::CT_SEEN_REPLY
    };
    if tcp_flags & TCP_SYN == 0 && tcp_flags != 0 {
        flags |= abi::CT_TCP_NON_SYN;
    }
    if tcp_flags & TCP_FIN != 0 {
        flags |= if forward {
            abi::CT_TCP_FIN_FORWARD
        } else {
            abi::CT_TCP_FIN_REPLY
        };
    }
    if tcp_flags & TCP_RST != 0 {
        flags |= abi::CT_TCP_RST;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // Another CPU may write the same entry; either write is a recent time
    // and a flag lost to the race comes back with the flow's next packet.
    if flags != st.flags || now.wrapping_sub(st.last_seen) >= abi::CT_REFRESH_NS {
        st.flags = flags;
        st.last_seen = now;
    }
}

/// Refreshes the flow whose forward entry `st` points at (from a map's
/// `get_ptr_mut`).
pub fn touch_ptr(st: *mut CtState, forward: bool, tcp_flags: u8) {
    // SAFETY: `st` points into a map value the caller just looked up; map
    // values stay valid for the whole program run.
    unsafe { touch(&mut *st, forward, tcp_flags) }
}

/// Why a new flow was not admitted.
pub struct OverLimit;

/// Counts a new flow of `pod` against its limit; the caller undoes it with
/// [`release`] when the flow is not recorded after all.
pub fn admit(pod: u32) -> Result<(), OverLimit> {
    let limit = CT_CONFIG
        .get(0)
        .map(|c| u64::from(c.pod_limit))
        .unwrap_or(0);
    let opened = match CT_POD_OPENED.get_ptr_mut(pod) {
        Some(p) => p,
        None => {
            let _ = CT_POD_OPENED.insert(pod, 0, NOEXIST);
            CT_POD_OPENED.get_ptr_mut(pod).ok_or(OverLimit)?
        }
    };
    if limit != 0 {
        let closed = unsafe { CT_POD_CLOSED.get(pod) }.copied().unwrap_or(0);
        // SAFETY: a map value pointer, valid for the run.
        let held = unsafe { *opened }.wrapping_sub(closed);
        // CPUs admitting at once may each pass the check: the limit can be
        // exceeded by at most the number of CPUs, never without bound.
        if held >= limit {
            return Err(OverLimit);
        }
    }
    // SAFETY: as above. The BPF target's core has no atomic types with
    // read-modify-write; the intrinsic becomes the kernel's atomic add
    // (result unused, so every BPF CPU version has it).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(opened, 1) };
    Ok(())
}

/// Undoes an [`admit`] whose flow could not be recorded.
pub fn release(pod: u32) {
    if let Some(opened) = CT_POD_OPENED.get_ptr_mut(pod) {
        // SAFETY: as in `admit`; adding u64::MAX subtracts one.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(opened, u64::MAX) };
    }
}
