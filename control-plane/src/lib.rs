//! Control plane: the API server, scheduler and controller-manager.
pub mod apiserver;
pub mod component;
pub mod controllers;
pub mod hollow;
pub mod scheduler;
