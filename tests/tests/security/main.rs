//! Trust boundaries of the API server, each test named after the crossing
//! it refuses: a node's client certificate reaches only what the node's
//! pods need, a node cannot steer workloads through its own Node, and no
//! client can make the server build or hold more than a request's worth.
//! The real API server over etcd with TLS, driven by curl and kubectl.

mod common;
mod node_identity;
mod node_reads;
mod node_writes;
mod request_limits;
