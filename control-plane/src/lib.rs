//! Control plane: the API server, scheduler and controller-manager.
pub mod apiserver;
pub use kit as component;
pub mod controllers;
pub mod hollow;
pub mod scheduler;
