//! Control plane: API server, scheduler, controller-manager.
