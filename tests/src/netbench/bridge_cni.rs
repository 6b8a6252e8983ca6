//! The reference datapath: Debian's containernetworking-plugins `bridge`
//! plugin with `host-local` IPAM, driven as a runtime drives it (CNI_*
//! variables and the network configuration on stdin), on nodes that are
//! namespaces of the bench's own.
//!
//! The plugins run inside the node's namespace, so the bridge, the host
//! ends of the veths and the forwarding switch they turn on all live
//! there; their leases go to a temporary directory, not /var/lib/cni.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{in_ns, run_bounded};
use crate::net::{Netns, Segment};

/// Where Debian (and the upstream tarball) put the plugins.
const PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// The directory holding the `bridge` and `host-local` plugins.
pub fn plugin_dir() -> Result<PathBuf> {
    PLUGIN_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").exists() && d.join("host-local").exists())
        .with_context(|| {
            format!(
                "the CNI bridge and host-local plugins are in none of {PLUGIN_DIRS:?}: \
                 install containernetworking-plugins (`cargo xtask setup`)"
            )
        })
}

/// A pod made by the bridge plugin: its namespace and address.
pub struct CniPod {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    id: String,
}

/// A node namespace on a segment with a bridge made by the plugin; its
/// pods are deleted through the plugin (CNI DEL) on drop.
pub struct CniNode {
    pub pods: Vec<CniPod>,
    /// The node's address on the segment.
    pub ip: String,
    /// The subnet its pods get addresses from.
    pub subnet: String,
    plugins: PathBuf,
    conf: String,
    pub netns: Netns,
    // Last: the leases go after the pods that held them.
    _leases: tempfile::TempDir,
}

impl CniNode {
    /// Node number `n` (1 to 254): address 10.98.1.n on `segment`, pods
    /// from 10.245.n.0/24.
    pub fn new(segment: &Segment, n: u8) -> Result<Self> {
        let plugins = plugin_dir()?;
        let netns = Netns::new("cn")?;
        let link = segment.attach(&netns)?;
        let ip = format!("10.98.1.{n}");
        netns.addr_up(&link, &format!("{ip}/24"))?;
        // The node routes between its bridge and the segment; this switch
        // is the node namespace's own.
        netns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let leases = tempfile::Builder::new()
            .prefix("kestrel-bench-cni-")
            .tempdir()?;
        let subnet = format!("10.245.{n}.0/24");
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "kestrel-bench-bridge",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            // No masquerade: it would write iptables rules, and pod to pod
            // traffic is never masqueraded anyway.
            "ipMasq": false,
            "hairpinMode": false,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": leases.path(),
            },
        })
        .to_string();
        Ok(Self {
            pods: Vec::new(),
            ip,
            subnet,
            plugins,
            conf,
            netns,
            _leases: leases,
        })
    }

    /// Runs the bridge plugin with `command` for `pod`; returns its stdout.
    fn plugin(&self, command: &str, id: &str, pod: &Path) -> Result<String> {
        let mut cmd = Command::new(self.plugins.join("bridge"));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", pod)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.plugins);
        in_ns(&mut cmd, &self.netns.path())?;
        run_bounded(&mut cmd, Some(&self.conf), Duration::from_secs(30))
    }

    /// Adds a pod: a new namespace wired by the plugin (CNI ADD).
    pub fn add_pod(&mut self) -> Result<&CniPod> {
        let netns = Netns::new("cp")?;
        let id = netns.name().to_string();
        let out = self.plugin("ADD", &id, &netns.path())?;
        let result: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("the plugin's result: {out}"))?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in the plugin's result: {result}"))?;
        self.pods.push(CniPod { netns, ip, id });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Routes `other`'s pod subnet through `other` (what a routing daemon
    /// or a cloud's route table does for bridge-based clusters).
    pub fn route_to(&self, other: &CniNode) -> Result<()> {
        self.netns
            .exec(&["ip", "route", "add", &other.subnet, "via", &other.ip])?;
        Ok(())
    }

    /// A VXLAN device `kvx` to `other` (static remote, the ports and outer
    /// checksum the agent uses), addressed `overlay`/24: the tunnel's own
    /// cost between two nodes, without pods.
    pub fn tunnel_to(&self, other: &CniNode, overlay: &str) -> Result<()> {
        self.netns.exec(&[
            "ip",
            "link",
            "add",
            "kvx",
            "type",
            "vxlan",
            "id",
            "2",
            "dstport",
            "8472",
            "local",
            &self.ip,
            "remote",
            &other.ip,
            "noudpcsum",
        ])?;
        self.netns.addr_up("kvx", &format!("{overlay}/24"))?;
        Ok(())
    }
}

impl Drop for CniNode {
    fn drop(&mut self) {
        for pod in &self.pods {
            if let Err(e) = self.plugin("DEL", &pod.id, &pod.netns.path()) {
                eprintln!("CNI DEL of {}: {e:#}", pod.id);
            }
        }
    }
}
