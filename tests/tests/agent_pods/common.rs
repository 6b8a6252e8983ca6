//! The node every test here runs its pods on.

/// Each test's node: a namespace on the control plane's segment with a
/// real agent in it.
pub(crate) type Agent = harness::node::Node;
