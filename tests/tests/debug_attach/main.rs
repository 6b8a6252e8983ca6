//! `kubectl debug` and `kubectl attach` against a real node: ephemeral
//! containers join a running pod's sandbox, are reported in its status and
//! may only be added; attach reaches a container's stdin and output.

mod attach;
mod authorization;
mod common;
mod debug;
mod terminals;
