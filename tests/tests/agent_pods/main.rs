//! The agent runs real pods with libcontainer, driven by the real kubectl:
//! completion, CrashLoopBackOff, OOMKilled, grace periods, and containers
//! that survive a `kill -9` of the agent.

mod common;
mod exec;
mod images;
mod init_and_volumes;
mod lifecycle;
mod probes;
