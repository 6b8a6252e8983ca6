//! Pod networking with the eBPF datapath, on nodes built as network
//! namespaces: pods get addresses from their node's pod CIDR, reach each
//! other on one node and across nodes, reach their node and are reached by
//! it; a restarted agent keeps them connected; churn leaves nothing behind;
//! and no iptables or nftables rule is written.

mod agent_restart;
mod churn;
mod common;
mod connectivity;
mod masquerade;
