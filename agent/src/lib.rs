//! The node agent: kubelet, kube-proxy and the CNI in one process.
pub mod ebpf;
pub mod netns;
