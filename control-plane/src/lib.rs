//! Control plane: the API server, scheduler and controller-manager.
pub mod apiserver;
