//! Service load balancing: cgroup sock_addr programs that send a connect
//! or sendmsg to a ClusterIP straight to a backend, and translate the
//! backend's address back to the ClusterIP where a process reads it.
//!
//! Addresses and ports are kept exactly as they appear in a `sockaddr_in`:
//! network byte order, read as a native integer.

/// One row of the service table: slot 0 of a frontend is the service
/// itself, slots 1..=count hold its backends for new connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The ClusterIP.
    pub vip: u32,
    /// The service port.
    pub port: u16,
    /// 0 for the service, 1..=count for a backend slot.
    pub slot: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub pad: [u8; 3],
}

/// A service table row; which fields mean something depends on the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Slot > 0: the backend in this slot.
    pub backend_id: u32,
    /// The frontend's id (all slots): backends and affinity carry it.
    pub service_id: u32,
    /// Slot 0: how many slots follow. 0 means no backend: connects fail
    /// with ECONNREFUSED, as kube-proxy's reject rule makes them.
    pub count: u16,
    /// Slot 0: `SERVICE_F_*`.
    pub flags: u16,
    /// Slot 0: client affinity timeout in seconds (with
    /// [`SERVICE_F_AFFINITY`]).
    pub affinity_timeout: u32,
}

/// sessionAffinity: ClientIP. A client (a pod, or the node, told apart by
/// network namespace) keeps its backend for `affinity_timeout` seconds.
pub const SERVICE_F_AFFINITY: u16 = 1;

/// Where a backend is reached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub ip: u32,
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
    /// The frontend this backend serves: ids are never shared between
    /// frontends, so a stale reference is easy to spot.
    pub service_id: u32,
}

/// The backend takes new clients (it is ready). Without it the backend only
/// keeps the UDP sockets already bound to it while it terminates.
pub const BACKEND_F_ACTIVE: u8 = 1;

/// What a socket was translated to, to translate its peer back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseKey {
    /// The socket's cookie.
    pub cookie: u64,
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}

/// The frontend a socket really asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseValue {
    pub vip: u32,
    pub port: u16,
    pub pad: u16,
}

/// A socket sending datagrams to a frontend without connecting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub cookie: u64,
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// A client of a frontend with session affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityKey {
    /// The client's network namespace cookie: every socket of a pod shares
    /// it, as every packet of a pod shares its IP.
    pub netns_cookie: u64,
    pub service_id: u32,
    pub pad: u32,
}

/// The backend an affine client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub pad: u32,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub last_used_ns: u64,
}

crate::pod!(
    ServiceKey,
    ServiceValue,
    Backend,
    ReverseKey,
    ReverseValue,
    FlowKey,
    AffinityKey,
    AffinityValue,
);

/// Frontends and backend slots, keyed by [`ServiceKey`].
pub const LB_SERVICES_MAP: &str = "LB_SERVICES";
/// Capacity of [`LB_SERVICES_MAP`]: slot 0 plus one row per ready backend.
pub const LB_MAX_SERVICE_ROWS: u32 = 131072;
/// Backends by id ([`Backend`]).
pub const LB_BACKENDS_MAP: &str = "LB_BACKENDS";
/// Capacity of [`LB_BACKENDS_MAP`].
pub const LB_MAX_BACKENDS: u32 = 65536;
/// Socket cookie and backend to frontend ([`ReverseKey`] to
/// [`ReverseValue`]), an LRU.
pub const LB_REVERSE_MAP: &str = "LB_REVERSE";
/// Capacity of [`LB_REVERSE_MAP`].
pub const LB_MAX_REVERSE: u32 = 65536;
/// The backend each unconnected UDP socket uses per frontend, an LRU.
pub const LB_FLOWS_MAP: &str = "LB_FLOWS";
/// Capacity of [`LB_FLOWS_MAP`].
pub const LB_MAX_FLOWS: u32 = 16384;
/// Client affinity ([`AffinityKey`] to [`AffinityValue`]), an LRU.
pub const LB_AFFINITY_MAP: &str = "LB_AFFINITY";
/// Capacity of [`LB_AFFINITY_MAP`].
pub const LB_MAX_AFFINITY: u32 = 16384;

/// Per-CPU counters of the load balancer, indexed by [`LbStat`].
pub const LB_STATS_MAP: &str = "LB_STATS";
/// Capacity of [`LB_STATS_MAP`], with room for counters to come.
pub const LB_STATS_CAPACITY: u32 = 4;

crate::stats! {
    /// What the socket programs did with a call.
    pub enum LbStat {
        /// A connect or sendmsg sent to a backend.
        Translated = "translated",
        /// A connect or sendmsg to a frontend with no backend, refused.
        NoBackend = "no_backend",
        /// A backend address shown to a process as the frontend's.
        Reversed = "reversed",
        /// A client sent to its affine backend again.
        AffinityHit = "affinity_hits",
    }
}

const _: () = assert!(LbStat::ALL.len() as u32 <= LB_STATS_CAPACITY);

/// The cgroup sock_addr programs and where each attaches.
pub const LB_PROGRAMS: [&str; 4] = [
    "lb_connect4",
    "lb_sendmsg4",
    "lb_recvmsg4",
    "lb_getpeername4",
];
