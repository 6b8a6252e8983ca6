//! Network namespaces, veth pairs and bridges that tests build as their
//! own nodes. Nothing here touches the machine's real interfaces: every
//! link is created inside, or moved into, a namespace made by the test.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::names;

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A network namespace removed (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `kt<pid>-<tag><n>` with its loopback up.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        crate::require_root("network namespaces");
        let name = names::unique(tag);
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, for setns(2).
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace, failing with its stderr.
    pub fn exec(&self, cmd: &[&str]) -> anyhow::Result<String> {
        let out = self.command(cmd).output()?;
        anyhow::ensure!(
            out.status.success(),
            "in {}: {}: {}",
            self.name,
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        c
    }

    /// Adds an address (CIDR form) to a link in this namespace and sets it up.
    pub fn addr_up(&self, link: &str, cidr: &str) -> anyhow::Result<()> {
        self.exec(&["ip", "addr", "add", cidr, "dev", link])?;
        self.exec(&["ip", "link", "set", link, "up"])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys every link inside it, and a veth
        // dies with its peer.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Creates a veth pair with one end in `a` and the other in `b`, both
/// named after `tag`. Returns (name in a, name in b).
pub fn veth_between(a: &Netns, b: &Netns, tag: &str) -> anyhow::Result<(String, String)> {
    let left = names::unique(tag);
    let right = names::unique(tag);
    // Created directly inside `a`, so it never exists in the host namespace.
    a.exec(&[
        "ip",
        "link",
        "add",
        &left,
        "type",
        "veth",
        "peer",
        "name",
        &right,
        "netns",
        b.name(),
    ])?;
    Ok((left, right))
}

/// A layer-2 segment: a bridge inside a namespace of its own, to which
/// node namespaces attach through veths.
pub struct Segment {
    pub ns: Netns,
    bridge: String,
}

impl Segment {
    /// Creates the segment's namespace and bridge.
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::new("s")?;
        let bridge = "br0".to_string();
        ns.exec(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        ns.exec(&["ip", "link", "set", &bridge, "up"])?;
        Ok(Self { ns, bridge })
    }

    /// The bridge's name inside the segment's namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Plugs `node` into the segment; returns the node-side link name.
    pub fn attach(&self, node: &Netns) -> anyhow::Result<String> {
        let (in_seg, in_node) = veth_between(&self.ns, node, "p")?;
        self.ns
            .exec(&["ip", "link", "set", &in_seg, "master", &self.bridge])?;
        self.ns.exec(&["ip", "link", "set", &in_seg, "up"])?;
        // A wire passes what the node's NIC segments in hardware; a veth
        // port would segment in software any aggregate above its GSO size.
        take_aggregates(&self.ns, &in_seg, MAX_AGGREGATE)?;
        Ok(in_node)
    }
}

/// The kernel's largest aggregate (`GSO_MAX_SIZE`), what a veth takes.
pub const MAX_AGGREGATE: u32 = 524_280;

/// Raises the IPv4 aggregate sizes of `link` in `ns` to `size`.
pub fn take_aggregates(ns: &Netns, link: &str, size: u32) -> anyhow::Result<()> {
    use netlink_packet_route::link::LinkAttribute;
    let link = link.to_string();
    netlink_in(ns, move |handle| async move {
        let msg = rtnetlink::LinkUnspec::new_with_name(&link)
            .append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(size))
            .append_extra_attribute(LinkAttribute::GroIpv4MaxSize(size))
            .build();
        let result = handle.link().set(msg).execute().await;
        result.map_err(|e| anyhow::anyhow!("{link}: {e}"))
    })
}

/// The largest IPv4 aggregate `link` in `ns` is sent whole (what newer
/// `ip -d link` shows as `gso_ipv4_max_size`).
pub fn aggregate_size(ns: &Netns, link: &str) -> anyhow::Result<u32> {
    use futures::TryStreamExt;
    use netlink_packet_route::link::LinkAttribute;
    let link = link.to_string();
    netlink_in(ns, move |handle| async move {
        let links: Vec<_> = handle
            .link()
            .get()
            .match_name(link.clone())
            .execute()
            .try_collect()
            .await?;
        let attrs = links.first().map(|l| &l.attributes[..]).unwrap_or(&[]);
        attrs
            .iter()
            .find_map(|a| match a {
                LinkAttribute::GsoIpv4MaxSize(n) => Some(*n),
                _ => None,
            })
            .ok_or_else(|| anyhow::anyhow!("{link}: no gso_ipv4_max_size"))
    })
}

/// Runs `f` with a netlink handle opened inside `ns`, on a thread of its
/// own so the test's threads stay where they are.
fn netlink_in<T, F, Fut>(ns: &Netns, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(ns.path())?;
    std::thread::spawn(move || -> anyhow::Result<T> {
        // SAFETY: an open namespace fd; only this new thread moves.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(conn);
            let result = f(handle).await;
            task.abort();
            result
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the netlink thread panicked"))?
}

/// Makes `cmd` run inside `ns`'s network namespace (and only that: unlike
/// `ip netns exec`, the mounts stay the test's, so what the child mounts is
/// visible to the next process, as on a real node).
pub fn in_netns(cmd: &mut Command, ns: &Netns) -> anyhow::Result<()> {
    in_netns_at(cmd, &ns.path())
}

/// [`in_netns`] for the namespace mounted at `path` (a pod's, say).
pub fn in_netns_at(cmd: &mut Command, path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let fd: OwnedFd = std::fs::File::open(path)
        .with_context(|| format!("open the network namespace {}", path.display()))?
        .into();
    // SAFETY: setns is async-signal-safe; the fd lives in the closure, which
    // the Command keeps until it is dropped.
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

/// The packet filter rules that `run` sees: iptables rules (`-A` lines of
/// `iptables-save`) and nftables chains (`nft list ruleset`). `run` runs a
/// command where to look: [`Netns::exec`], a node's `exec`, or [`on_host`].
/// A tool that is missing or fails is an error, never "no rules".
pub fn packet_filter_rules(
    run: impl Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<Vec<String>> {
    let mut rules = Vec::new();
    for cmd in [&["iptables-save"][..], &["nft", "list", "ruleset"][..]] {
        let out = run(cmd).map_err(|e| anyhow::anyhow!("{}: {e:#}", cmd.join(" ")))?;
        rules.extend(
            out.lines()
                .filter(|l| l.starts_with("-A") || l.trim_start().starts_with("chain"))
                .map(|l| format!("{}: {l}", cmd[0])),
        );
    }
    Ok(rules)
}

/// Runs a command in the machine's own namespaces, failing with its stderr.
pub fn on_host(cmd: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A pod wired as the CNI plugin wires one: a veth with its host end in
/// the node namespace, a /32 address, a default route through the
/// link-local gateway whose MAC is a permanent neighbour entry.
pub fn wire_pod(
    node: &Netns,
    pod: &Netns,
    ip: Ipv4Addr,
) -> anyhow::Result<kestrel_agent::network::Endpoint> {
    let host = names::unique("h");
    node.exec(&[
        "ip",
        "link",
        "add",
        &host,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    node.exec(&["ip", "link", "set", &host, "up"])?;
    let host_mac = node.exec(&["cat", &format!("/sys/class/net/{host}/address")])?;
    let host_ifindex: u32 = node
        .exec(&["cat", &format!("/sys/class/net/{host}/ifindex")])?
        .trim()
        .parse()?;
    let cidr = format!("{ip}/32");
    for cmd in [
        vec!["ip", "addr", "add", &cidr, "dev", "eth0"],
        vec!["ip", "link", "set", "eth0", "up"],
        vec![
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
        vec![
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ],
        vec![
            "ip",
            "neigh",
            "add",
            "169.254.1.1",
            "lladdr",
            host_mac.trim(),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ] {
        pod.exec(&cmd)?;
    }
    let pod_mac = pod.exec(&["cat", "/sys/class/net/eth0/address"])?;
    Ok(kestrel_agent::network::Endpoint {
        ip,
        gateway: Ipv4Addr::new(169, 254, 1, 1),
        pod_mac: parse_mac(pod_mac.trim())?,
        host_ifname: host,
        host_ifindex,
        host_mac: parse_mac(host_mac.trim())?,
        mtu: 1500,
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    anyhow::ensure!(parts.len() == 6, "{s:?} is no MAC address");
    for (m, part) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}
