//! User stories of the scheduler and the controller-manager, on hollow
//! nodes (Node objects, Leases and a stand-in kubelet; no containers), with
//! the real API server, etcd and kubectl 1.32.

mod common;
mod deployments;
mod endpoints;
mod node_failure;
mod replication;
mod scheduling;
