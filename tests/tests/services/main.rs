//! Services without kube-proxy: ClusterIPs balanced by the agents' cgroup
//! socket programs over maps synced from Services and EndpointSlices, on
//! nodes built as network namespaces, driven with the real kubectl.

mod affinity;
mod agent_restart;
mod cluster_ip;
mod common;
mod dns;
mod node_ports;
mod scale;
