//! Role-based access control as a cluster administrator and its users see
//! it: the real API server over etcd with TLS, driven by the real kubectl
//! with the administrator's and users' client certificates.

mod access;
mod aggregation;
mod common;
mod escalation;
mod listing;
