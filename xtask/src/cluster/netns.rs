//! The network namespaces of a cluster with nodes (`--nodes`,
//! `--control-planes`): the control plane's, holding the bridge every node
//! is on, and one per node. Nothing touches the machine's own interfaces.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::util;

/// Namespace of the control plane and the node segment (`--nodes`).
pub const CP_NETNS: &str = "kestrel-cp";
/// The segment's bridge address: the API server as nodes reach it.
pub const CP_ADDRESS: &str = "10.99.0.1";

/// Control plane `i`'s address (1-based; the first is CP_ADDRESS).
pub fn cp_address(i: u32) -> String {
    format!("10.99.0.{i}")
}

pub fn node_netns(i: u32) -> String {
    format!("kestrel-node-{i}")
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    util::run(Command::new("ip").args(args))
}

/// Makes `cmd` run in the network namespace `ns` (only that one: the
/// agent's mounts must stay visible to the processes that follow it).
pub fn in_netns(cmd: &mut Command, ns: &str) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let fd: OwnedFd = std::fs::File::open(Path::new("/run/netns").join(ns))?.into();
    // SAFETY: setns is async-signal-safe; the closure owns the fd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// A command run with `ip netns exec NS` (for short checks).
pub fn netns_command(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Builds the namespaces of a `--nodes N` cluster unless they exist: the
/// control plane's, holding a bridge at CP_ADDRESS, and one per node with
/// an `eth0` on that bridge at 10.99.0.(10+i). Nothing touches the
/// machine's own interfaces.
pub fn build_namespaces(nodes: u32, control_planes: u32) -> anyhow::Result<()> {
    let exists = |ns: &str| Path::new("/run/netns").join(ns).exists();
    if !exists(CP_NETNS) {
        ip(&["netns", "add", CP_NETNS])?;
        ip(&["-n", CP_NETNS, "link", "set", "lo", "up"])?;
        ip(&["-n", CP_NETNS, "link", "add", "kbr0", "type", "bridge"])?;
        ip(&[
            "-n",
            CP_NETNS,
            "addr",
            "add",
            &format!("{CP_ADDRESS}/24"),
            "dev",
            "kbr0",
        ])?;
        ip(&["-n", CP_NETNS, "link", "set", "kbr0", "up"])?;
    }
    // Control planes 2..N: more addresses on the same bridge (nodes start
    // at .10); a namespace from an earlier, smaller cluster gets them too.
    let out = Command::new("ip")
        .args(["-n", CP_NETNS, "-4", "-o", "addr", "show", "dev", "kbr0"])
        .output()?;
    let have = String::from_utf8_lossy(&out.stdout).into_owned();
    for i in 2..=control_planes {
        let addr = format!("{}/24", cp_address(i));
        if !have.contains(&format!(" {addr} ")) {
            ip(&["-n", CP_NETNS, "addr", "add", &addr, "dev", "kbr0"])?;
        }
    }
    for i in 1..=nodes {
        let ns = node_netns(i);
        if exists(&ns) {
            continue;
        }
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let port = format!("kn{i}");
        ip(&[
            "-n", CP_NETNS, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", CP_NETNS, "link", "set", &port, "master", "kbr0"])?;
        ip(&["-n", CP_NETNS, "link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.99.0.{}/24", 9 + i),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// The node namespaces that exist, by index.
pub fn existing_nodes() -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("kestrel-node-")?
                .parse()
                .ok()
        })
        .collect();
    out.sort();
    out
}
