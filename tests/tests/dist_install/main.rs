//! `install.sh` installs a control plane (one, or three sharing a CA and an
//! etcd cluster over TLS) and joins a node whose identity it checks.
//!
//! `install.sh` runs against root prefixes (`--root DIR`) in temporary
//! directories, so it installs no package and starts no service; the test
//! plays systemd's part and starts etcd and the API server itself from the
//! installed configuration, on loopback ports. Nothing outside the temporary
//! directories changes.

mod one_control_plane;
mod three_control_planes;
