//! User story: the routing programs decide right on every kind of frame a
//! node meets. Each case loads the agent's object, puts its maps in the
//! state the case needs, hands one crafted frame to `from_pod` or
//! `from_uplink` with BPF_PROG_TEST_RUN inside a namespace of the test's
//! own, and checks the verdict, the rewritten headers and their checksums
//! (recomputed here from scratch).

mod common;
mod icmp_errors;
mod node_ports;
mod routing;
mod spoofing;
