//! Pods on this node: sandboxes, containers, status.

pub mod spec;
