//! The kestrel-cni binary, driven exactly as a CNI runtime drives it: the
//! command and attachment in CNI_* variables, the network configuration on
//! stdin, the result or an error object on stdout.
//!
//! Every plugin run happens inside a namespace the test made to act as the
//! node, and every pod is a namespace of its own, so nothing is ever created
//! in the machine's own network namespace. The node has an "uplink" veth to a
//! further namespace, which gives it an address of its own as a real node
//! has, for the pods to ping and for the node to source its pings from.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use harness::cluster::binary;
use harness::net::{veth_between, Netns};
use serde_json::{json, Value};

const NODE_ADDR: &str = "10.99.0.1";
const SUBNET: &str = "10.244.1.0/24";

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The error object, checked for the fields the spec requires.
    fn error(&self, code: u64) -> Value {
        assert!(
            !self.success,
            "expected error {code}, the plugin succeeded: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(v["code"], code, "wrong error code: {v:#}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v:#}");
        assert!(v["cniVersion"].is_string(), "{v:#}");
        assert!(v.get("details").is_some(), "{v:#}");
        v
    }

    fn msg(&self, code: u64) -> String {
        self.error(code)["msg"].as_str().unwrap().to_string()
    }

    fn ok(&self) -> &Self {
        assert!(
            self.success,
            "the plugin failed: {} {}",
            self.stdout, self.stderr
        );
        self
    }
}

struct Node {
    ns: Netns,
    _outside: Netns,
    data: tempfile::TempDir,
    plugin: PathBuf,
}

impl Node {
    fn new() -> Self {
        harness::require_root("network namespaces");
        let plugin = binary("kestrel-cni");
        let ns = Netns::new("n").unwrap();
        let outside = Netns::new("o").unwrap();
        let (up, down) = veth_between(&ns, &outside, "u").unwrap();
        ns.addr_up(&up, &format!("{NODE_ADDR}/24")).unwrap();
        outside.addr_up(&down, "10.99.0.2/24").unwrap();
        // Strict reverse-path filtering, as many distributions ship it: the
        // pod routes must pass it without any exception.
        for scope in ["all", "default"] {
            ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{scope}.rp_filter=1"),
            ])
            .unwrap();
        }
        Self {
            ns,
            _outside: outside,
            data: tempfile::tempdir().unwrap(),
            plugin,
        }
    }

    fn config(&self, version: &str, subnet: &str) -> String {
        json!({
            "cniVersion": version,
            "name": "kestrel",
            "type": "kestrel-cni",
            "subnet": subnet,
            "mtu": 1500,
            "dataDir": self.data.path(),
        })
        .to_string()
    }

    /// Runs the plugin inside the node namespace.
    fn run(&self, command: &str, env: &[(&str, &str)], stdin: &str) -> Run {
        self.run_wrapped(&[], command, env, stdin)
    }

    /// Runs the plugin inside the node namespace, through `wrapper` (a
    /// command that ends by running its last argument).
    fn run_wrapped(
        &self,
        wrapper: &[&str],
        command: &str,
        env: &[(&str, &str)],
        stdin: &str,
    ) -> Run {
        let plugin = self.plugin.to_str().unwrap();
        let mut argv = wrapper.to_vec();
        argv.push(plugin);
        let mut cmd = self.ns.command(&argv);
        for (k, _) in std::env::vars() {
            if k.starts_with("CNI_") {
                cmd.env_remove(k);
            }
        }
        if !command.is_empty() {
            cmd.env("CNI_COMMAND", command);
        }
        cmd.env("CNI_PATH", "/opt/cni/bin");
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn cmd(&self, command: &str, id: &str, netns: Option<&Path>, stdin: &str) -> Run {
        let netns = netns.map(|p| p.to_str().unwrap().to_string());
        let mut env = vec![("CNI_CONTAINERID", id), ("CNI_IFNAME", "eth0")];
        if let Some(n) = &netns {
            env.push(("CNI_NETNS", n));
        }
        self.run(command, &env, stdin)
    }

    fn add(&self, id: &str, pod: &Netns) -> Value {
        self.add_in(SUBNET, id, pod).ok().json()
    }

    fn add_in(&self, subnet: &str, id: &str, pod: &Netns) -> Run {
        self.cmd("ADD", id, Some(&pod.path()), &self.config("1.0.0", subnet))
    }

    fn del(&self, id: &str, pod: Option<&Netns>) {
        let path = pod.map(|p| p.path());
        let r = self.cmd("DEL", id, path.as_deref(), &self.config("1.0.0", SUBNET));
        r.ok();
        assert!(r.stdout.trim().is_empty(), "DEL printed {}", r.stdout);
    }

    /// (address, container id) of every lease file.
    fn leases(&self) -> Vec<(String, String)> {
        let dir = self.data.path().join("kestrel");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.parse::<std::net::Ipv4Addr>().ok()?;
                Some((name, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        out.sort();
        out
    }

    /// Names of the host ends of pod veths.
    fn host_links(&self) -> Vec<String> {
        links(&self.ns)
            .into_iter()
            .filter(|l| l.starts_with("kst"))
            .collect()
    }

    fn routes(&self) -> String {
        self.ns.exec(&["ip", "-4", "route", "show"]).unwrap()
    }

    fn ping(&self, from: &Netns, to: &str) -> bool {
        let _ = self;
        from.command(&["ping", "-c1", "-W2", to])
            .output()
            .unwrap()
            .status
            .success()
    }
}

fn links(ns: &Netns) -> Vec<String> {
    ns.exec(&["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

/// The pod's address from an ADD result, without its /32.
fn pod_ip(result: &Value) -> String {
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.strip_suffix("/32")
        .unwrap_or_else(|| panic!("{addr} is not a /32"))
        .to_string()
}

fn is_mac(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 17 && s.split(':').all(|b| u8::from_str_radix(b, 16).is_ok())
}

/// ADD wires the pod (address, default route, reachability both ways), CHECK
/// sees the wiring and sees it break, a repeated ADD repairs it, and DEL,
/// twice and with the namespace gone, leaves nothing behind.
#[test]
fn add_check_del_wire_and_unwire_a_pod() {
    let node = Node::new();
    let pod = Netns::new("p").unwrap();
    let result = node.add("pod-1", &pod);

    assert_eq!(result["cniVersion"], "1.0.0");
    let host = &result["interfaces"][0];
    let eth = &result["interfaces"][1];
    let host_name = host["name"].as_str().unwrap().to_string();
    assert!(
        host_name.starts_with("kst") && host_name.len() <= 15,
        "{result:#}"
    );
    assert!(host.get("sandbox").is_none(), "{result:#}");
    assert!(is_mac(&host["mac"]) && is_mac(&eth["mac"]), "{result:#}");
    assert_eq!(eth["name"], "eth0");
    assert_eq!(eth["sandbox"], pod.path().to_str().unwrap());
    let ip = pod_ip(&result);
    assert!(ip.starts_with("10.244.1.") && ip != "10.244.1.1", "{ip}");
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][0]["interface"], 1, "ips point at eth0");
    assert_eq!(
        result["routes"],
        json!([{ "dst": "0.0.0.0/0", "gw": "169.254.1.1" }])
    );
    assert_eq!(result["dns"], json!({}));

    let addrs = pod
        .exec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(addrs.contains(&format!("inet {ip}/32")), "{addrs}");
    let eth_mac = pod.exec(&["cat", "/sys/class/net/eth0/address"]).unwrap();
    assert_eq!(eth_mac.trim(), eth["mac"].as_str().unwrap());
    let default = pod.exec(&["ip", "-4", "route", "show", "default"]).unwrap();
    assert!(
        default.contains("default via 169.254.1.1 dev eth0"),
        "{default}"
    );
    assert!(
        node.routes().contains(&format!("{ip} dev {host_name}")),
        "{}",
        node.routes()
    );
    let fwd = node
        .ns
        .exec(&[
            "sysctl",
            "-n",
            &format!("net.ipv4.conf.{host_name}.forwarding"),
        ])
        .unwrap();
    assert_eq!(fwd.trim(), "1");
    assert_eq!(node.leases(), vec![(ip.clone(), "pod-1".to_string())]);

    assert!(node.ping(&node.ns, &ip), "node -> pod {ip}");
    assert!(node.ping(&pod, NODE_ADDR), "pod -> node {NODE_ADDR}");

    // CHECK, with the previous result as the runtime passes it.
    let mut conf: Value = serde_json::from_str(&node.config("1.0.0", SUBNET)).unwrap();
    conf["prevResult"] = result.clone();
    let check = |node: &Node| node.cmd("CHECK", "pod-1", Some(&pod.path()), &conf.to_string());
    let r = check(&node);
    r.ok();
    assert!(r.stdout.trim().is_empty(), "CHECK printed {}", r.stdout);

    pod.exec(&["ip", "route", "del", "default"]).unwrap();
    let msg = check(&node).msg(101);
    assert!(msg.contains("default route"), "{msg}");

    // A repeated ADD for the same container is a repair, not a new lease.
    let again = node.add("pod-1", &pod);
    assert_eq!(pod_ip(&again), ip);
    check(&node).ok();

    pod.exec(&["ip", "link", "del", "eth0"]).unwrap();
    let msg = check(&node).msg(101);
    assert!(msg.contains("eth0"), "{msg}");

    node.del("pod-1", Some(&pod));
    node.del("pod-1", Some(&pod));
    assert!(node.host_links().is_empty(), "{:?}", node.host_links());
    assert!(!node.routes().contains(&ip), "{}", node.routes());
    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert_eq!(links(&pod), vec!["lo"]);

    // DEL after the namespace is gone, or without one at all.
    let gone = PathBuf::from("/run/netns/kestrel-cni-test-gone");
    node.cmd("DEL", "pod-1", Some(&gone), &node.config("1.0.0", SUBNET))
        .ok();
    node.del("pod-1", None);
}

/// Two pods of one node reach each other through the node's routing table;
/// only the host ends forward, not the node's other interfaces.
#[test]
fn two_pods_on_one_node_reach_each_other() {
    let node = Node::new();
    let a = Netns::new("p").unwrap();
    let b = Netns::new("p").unwrap();
    // Strict reverse-path filtering in the pods too.
    for pod in [&a, &b] {
        for scope in ["all", "default"] {
            let key = format!("net.ipv4.conf.{scope}.rp_filter=1");
            pod.exec(&["sysctl", "-qw", &key]).unwrap();
        }
    }
    let ip_a = pod_ip(&node.add("pod-a", &a));
    let ip_b = pod_ip(&node.add("pod-b", &b));
    assert_ne!(ip_a, ip_b);

    assert!(node.ping(&a, &ip_b), "pod a -> pod b {ip_b}");
    assert!(node.ping(&b, &ip_a), "pod b -> pod a {ip_a}");
    for scope in ["all", "default"] {
        let v = node
            .ns
            .exec(&["sysctl", "-n", &format!("net.ipv4.conf.{scope}.forwarding")])
            .unwrap();
        assert_eq!(
            v.trim(),
            "0",
            "the plugin must not switch on {scope}.forwarding"
        );
    }

    node.del("pod-a", Some(&a));
    node.del("pod-b", Some(&b));
    assert!(node.host_links().is_empty());
    assert!(node.leases().is_empty());
}

/// Leases live on disk: each plugin run is a new process, yet a second
/// container never gets the first one's address, and a freed address is not
/// handed out again straight away.
#[test]
fn leases_outlive_the_plugin_process() {
    let node = Node::new();
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("p").unwrap()).collect();
    let ip1 = pod_ip(&node.add("c1", &pods[0]));
    let ip2 = pod_ip(&node.add("c2", &pods[1]));
    assert_ne!(ip1, ip2);
    let lease = std::fs::read_to_string(node.data.path().join("kestrel").join(&ip1)).unwrap();
    assert_eq!(lease, "c1");

    node.del("c1", Some(&pods[0]));
    let ip3 = pod_ip(&node.add("c3", &pods[2]));
    assert_ne!(ip3, ip1, "a just-freed address came back at once");
    assert_ne!(ip3, ip2);

    // The older result formats the plugin offers.
    let r = node
        .cmd(
            "ADD",
            "c4",
            Some(&pods[0].path()),
            &node.config("0.4.0", SUBNET),
        )
        .ok()
        .json();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    let ip4 = pod_ip(&r);
    assert!(![&ip1, &ip2, &ip3].contains(&&ip4));

    for (id, pod) in [("c2", &pods[1]), ("c3", &pods[2]), ("c4", &pods[0])] {
        node.del(id, Some(pod));
    }
    assert!(node.leases().is_empty());
    assert!(node.host_links().is_empty());
}

/// A /29 has five pod addresses. The sixth ADD fails with a clear error and
/// leaves neither a veth nor a lease; STATUS reports the pool as full.
#[test]
fn exhausting_a_small_subnet_fails_cleanly() {
    let node = Node::new();
    let subnet = "10.244.9.0/29";
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new("p").unwrap()).collect();
    let mut ips = Vec::new();
    for (i, pod) in pods.iter().take(5).enumerate() {
        let r = node.add_in(subnet, &format!("c{i}"), pod).ok().json();
        ips.push(pod_ip(&r));
    }
    ips.sort();
    assert_eq!(
        ips,
        [
            "10.244.9.2",
            "10.244.9.3",
            "10.244.9.4",
            "10.244.9.5",
            "10.244.9.6"
        ]
    );

    let msg = node.add_in(subnet, "c5", &pods[5]).msg(100);
    assert!(msg.contains(subnet), "{msg}");
    assert_eq!(
        links(&pods[5]),
        vec!["lo"],
        "the failed pod got an interface"
    );
    assert_eq!(node.host_links().len(), 5, "{:?}", node.host_links());
    assert_eq!(node.leases().len(), 5);

    let status = |node: &Node| node.run("STATUS", &[], &node.config("1.1.0", subnet));
    let msg = status(&node).msg(50);
    assert!(msg.contains("leased"), "{msg}");

    for i in 0..5 {
        let r = node.cmd("DEL", &format!("c{i}"), None, &node.config("1.0.0", subnet));
        r.ok();
    }
    assert!(node.host_links().is_empty());
    assert!(node.leases().is_empty());
    status(&node).ok();
}

/// GC releases what belongs to containers the runtime no longer lists.
#[test]
fn gc_releases_unlisted_attachments() {
    let node = Node::new();
    let keep = Netns::new("p").unwrap();
    let drop = Netns::new("p").unwrap();
    node.add("keep", &keep);
    node.add("drop", &drop);
    let mut conf: Value = serde_json::from_str(&node.config("1.1.0", SUBNET)).unwrap();
    conf["cni.dev/valid-attachments"] = json!([{ "containerID": "keep", "ifname": "eth0" }]);
    node.run("GC", &[], &conf.to_string()).ok();
    let leases = node.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].1, "keep");
    assert_eq!(node.host_links().len(), 1);
    assert_eq!(links(&drop), vec!["lo"]);
    node.del("keep", Some(&keep));
}

/// Bad input of every kind gets the CNI error code the spec assigns, a
/// message naming what is wrong, and changes nothing.
#[test]
fn bad_input_gets_cni_error_objects() {
    let node = Node::new();
    let pod = Netns::new("p").unwrap();
    let pod_path = pod.path();
    let add = |stdin: &str| node.cmd("ADD", "c1", Some(&pod_path), stdin);

    let msg = add(r#"{"cniVersion": "1.0.0", "name": }"#).msg(6);
    assert!(msg.contains("line 1 column"), "{msg}");

    let r = node.cmd("ADD", "c1", None, &node.config("1.0.0", SUBNET));
    let v = r.error(4);
    assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"), "{v:#}");
    assert_eq!(v["cniVersion"], "1.0.0");

    let msg = add(&node.config("9.9.9", SUBNET)).msg(1);
    assert!(msg.contains("9.9.9"), "{msg}");

    let msg = add(&node.config("1.0.0", "10.244.1.0/33")).msg(7);
    assert!(msg.contains("subnet"), "{msg}");
    let msg = add(&node.config("1.0.0", "10.244.1.7/24")).msg(7);
    assert!(msg.contains("subnet"), "{msg}");

    let msg = node.run("", &[], &node.config("1.0.0", SUBNET)).msg(4);
    assert!(msg.contains("CNI_COMMAND"), "{msg}");

    let gone = PathBuf::from("/run/netns/kestrel-cni-test-gone");
    let msg = node
        .cmd("ADD", "c1", Some(&gone), &node.config("1.0.0", SUBNET))
        .msg(3);
    assert!(msg.contains("kestrel-cni-test-gone"), "{msg}");

    // The node's own namespace is never a pod's.
    let msg = node
        .cmd(
            "ADD",
            "c1",
            Some(Path::new("/proc/self/ns/net")),
            &node.config("1.0.0", SUBNET),
        )
        .msg(4);
    assert!(msg.contains("node's own"), "{msg}");

    let v = node
        .run("VERSION", &[], r#"{"cniVersion":"1.0.0"}"#)
        .ok()
        .json();
    assert_eq!(
        v,
        json!({ "cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"] })
    );

    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert!(node.host_links().is_empty());
    assert_eq!(links(&pod), vec!["lo"]);
}

/// An ADD that fails after the veth pair, addresses and routes exist (here:
/// /proc/sys is read-only, so the host end's forwarding switch cannot be
/// set) removes all of it and gives the address back.
#[test]
fn an_add_failing_halfway_rolls_back() {
    let node = Node::new();
    let pod = Netns::new("p").unwrap();
    // `ip netns exec` gives the plugin a mount namespace of its own that
    // does not propagate back, so this read-only /proc/sys is the plugin's
    // alone.
    let read_only_sys = [
        "sh",
        "-c",
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$0\"",
    ];
    let pod_path = pod.path();
    let env = [
        ("CNI_CONTAINERID", "half"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", pod_path.to_str().unwrap()),
    ];
    let r = node.run_wrapped(&read_only_sys, "ADD", &env, &node.config("1.0.0", SUBNET));
    let msg = r.msg(5);
    assert!(msg.contains("forwarding"), "{msg}");
    assert!(node.host_links().is_empty(), "{:?}", node.host_links());
    assert_eq!(links(&pod), vec!["lo"]);
    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert!(!node.routes().contains("10.244.1."), "{}", node.routes());

    // The same ADD without the obstacle works.
    let ip = pod_ip(&node.add("half", &pod));
    assert!(node.ping(&node.ns, &ip));
    node.del("half", Some(&pod));
}
