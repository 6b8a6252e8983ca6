//! Map key and value layouts shared by the eBPF programs and the agent.
//!
//! Both sides compile this crate, so a layout change can never reach only
//! one of them. Everything here is `#[repr(C)]`, plain old data and
//! `no_std`; with the `user` feature each type also implements `aya::Pod`
//! so the agent can put it in a map.
//!
//! Addresses and ports are kept as the kernel sees them unless a field
//! says otherwise: an IPv4 address in network byte order read as a native
//! `u32`, so neither side swaps bytes on the hot path.
#![no_std]

/// Marks types as plain old data for aya's map wrappers.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: every type listed is #[repr(C)], Copy, built only of
            // integers and byte arrays, with explicit `pad` fields where
            // alignment would otherwise leave holes: any bit pattern is a
            // valid value and no byte is uninitialised.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use pod;

/// Declares a counter enum whose variants are the indices of a per-CPU
/// array, together with the name each one is shown under, so the kernel's
/// indices and the names the agent prints come from one list.
macro_rules! stats {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every counter, in index order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The counter's index in its map.
            #[inline(always)]
            pub const fn index(self) -> u32 {
                self as u32
            }

            /// The name the agent shows the counter under.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}
pub(crate) use stats;

pub mod counter;
pub mod ct;
pub mod datapath;
pub mod lb;
pub mod nat;
pub mod nodeport;
pub mod policy;

pub use counter::*;
pub use ct::*;
pub use datapath::*;
pub use lb::*;
pub use nat::*;
pub use nodeport::*;
pub use policy::*;
