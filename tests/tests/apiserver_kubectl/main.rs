//! User stories of the API server driven by the real kubectl 1.32.

mod common;
mod https;
mod kubernetes_service;
mod metrics;
mod outages;
mod request_bodies;
mod workflows;
