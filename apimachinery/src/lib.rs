//! Kubernetes API machinery that works on objects as JSON values: label and
//! field selectors, the patch formats kubectl sends, server-side tables and
//! validation, and the label-selector and toleration matching controllers
//! and the scheduler apply to typed objects. Pure functions, no I/O, so the
//! API server, controllers and tests share them; the one exception is `failover` (behind the feature of that name),
//! the relay API clients use to move between the API servers of a highly
//! available control plane.

pub mod cidr;
pub mod cron;
#[cfg(feature = "failover")]
pub mod failover;
pub mod fields;
pub mod nodeaffinity;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod selectors;
pub mod table;
pub mod taints;
