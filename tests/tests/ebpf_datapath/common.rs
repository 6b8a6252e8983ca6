//! The bench every case runs on lives in the harness, which `bench-ebpf`
//! shares.

pub(crate) use harness::datapath::*;
