//! The seed chapter end to end, checked the way a user checks it: with the
//! real kubectl 1.32 against a three-node cluster. Every node is a network
//! namespace on the control plane's segment with a real agent running real
//! pods; the scheduler and the controller-manager run as they would for a
//! user. Each assertion is about something a user looks at: `get cs`,
//! `get nodes`, label selectors, a ReplicationController's replicas and
//! where they run, probes, a Service's endpoints, and why a pod stays
//! Pending.

mod common;
mod dead_node;
mod ha;
mod restarts;
mod seed_chapter;
