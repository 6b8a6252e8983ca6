//! The library as the agent calls it: in-process, from a multi-threaded
//! tokio runtime whose threads all live in the node's namespace.
//!
//! The node and the pods are namespaces this test creates (named after its
//! pid, removed on drop, also when a test fails); the runtime is built on a
//! thread that has entered the node namespace, so its workers are born
//! there, and nothing runs in the machine's own namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use kestrel_cni::{add, check, del, host_ifname, leases, Attachment, NetConf, GATEWAY};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces); run it as root");
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace removed on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("kc{}-{tag}{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_string()))
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Runs `f` on a multi-threaded runtime whose threads are all in `node`.
fn in_node<T: Send + 'static>(
    node: &Ns,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let path = node.path();
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap();
        // SAFETY: an open namespace fd; only this thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let node_ino = ns.metadata().unwrap().ino();
        rt.block_on(async move {
            // Refuse to go on unless the workers really are in the node.
            let worker_ino = tokio::spawn(async {
                std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
            })
            .await
            .unwrap();
            assert_eq!(
                worker_ino, node_ino,
                "a runtime worker is outside the node namespace"
            );
            f.await
        })
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn conf(data: &tempfile::TempDir, subnet: &str) -> NetConf {
    NetConf {
        name: "kestrel".into(),
        subnet: subnet.parse().unwrap(),
        mtu: 1450,
        gso_max_size: kestrel_cni::LEGACY_GSO_MAX_SIZE,
        data_dir: data.path().to_path_buf(),
    }
}

const CYCLES: usize = 1000;

/// 1,000 ADD/DEL cycles on one pod namespace: addresses go round robin
/// (a just-freed one is not handed out again before the others), and at
/// the end there is no lease, veth, route or neighbour entry left.
#[test]
fn a_thousand_add_del_cycles_leave_nothing_behind() {
    require_root();
    let node = Ns::new("n");
    let pod = Ns::new("p");
    let data = tempfile::tempdir().unwrap();
    let conf = conf(&data, "10.244.3.0/24");
    let pod_path = pod.path();
    let c = conf.clone();
    let started = Instant::now();
    let seen = in_node(&node, async move {
        let mut seen = Vec::new();
        for i in 0..CYCLES {
            let att = Attachment {
                container_id: format!("cycle-{i}"),
                netns: pod_path.clone(),
                ifname: "eth0".into(),
            };
            let ep = add(&c, &att).await.unwrap();
            assert_eq!(ep.gateway, GATEWAY);
            assert_eq!(ep.mtu, 1450);
            assert_eq!(ep.host_ifname, host_ifname(&att.container_id));
            assert!(c.subnet.contains(&ep.ip));
            if i % 100 == 0 {
                assert_eq!(check(&c, &att).await.unwrap(), ep);
            }
            seen.push(ep.ip);
            del(&c, &att).await.unwrap();
        }
        seen
    });
    eprintln!("{CYCLES} add/del cycles took {:?}", started.elapsed());

    // 253 usable addresses in a /24: every window of 253 is all distinct.
    assert_eq!(seen.len(), CYCLES);
    for window in seen.windows(253) {
        let mut distinct = window.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 253, "an address came back too soon");
    }

    assert!(leases(&conf).unwrap().is_empty());
    assert_eq!(node.links(), vec!["lo"]);
    assert_eq!(pod.links(), vec!["lo"]);
    assert_eq!(node.ip(&["-4", "route", "show"]).trim(), "");
    assert_eq!(node.ip(&["-4", "neigh", "show"]).trim(), "");
}

/// Many pods wired at once from one runtime get distinct addresses and pass
/// CHECK; CHECK then names what was broken; all of them unwire in parallel.
#[test]
fn concurrent_pods_and_precise_checks() {
    require_root();
    let node = Ns::new("n");
    let pods: Vec<Ns> = (0..12).map(|_| Ns::new("p")).collect();
    let data = tempfile::tempdir().unwrap();
    let conf = conf(&data, "10.244.4.0/24");
    let atts: Vec<Attachment> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment {
            container_id: format!("pod-{i}"),
            netns: p.path(),
            ifname: "eth0".into(),
        })
        .collect();

    let (c, a) = (conf.clone(), atts.clone());
    let eps = in_node(&node, async move {
        let tasks: Vec<_> = a
            .iter()
            .cloned()
            .map(|att| {
                let c = c.clone();
                tokio::spawn(async move { add(&c, &att).await })
            })
            .collect();
        let mut eps = Vec::new();
        for t in tasks {
            eps.push(t.await.unwrap().unwrap());
        }
        for (att, ep) in a.iter().zip(&eps) {
            assert_eq!(&check(&c, att).await.unwrap(), ep);
        }
        eps
    });
    let mut ips: Vec<_> = eps.iter().map(|e| e.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 12);
    assert_eq!(leases(&conf).unwrap().len(), 12);

    // Break three pods in three different ways.
    pods[0].ip(&["link", "set", "eth0", "down"]);
    pods[1].ip(&["addr", "flush", "dev", "eth0"]);
    node.ip(&["route", "del", &format!("{}/32", eps[2].ip)]);
    let (c, a) = (conf.clone(), atts.clone());
    let msgs = in_node(&node, async move {
        let mut msgs = Vec::new();
        for att in &a[..3] {
            let e = check(&c, att).await.unwrap_err();
            assert_eq!(e.code(), 101, "{e}");
            msgs.push(e.to_string());
        }
        msgs
    });
    assert!(
        msgs[0].contains("eth0") && msgs[0].contains("down"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains(&format!("{}/32", eps[1].ip)),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("node has no route") && msgs[2].contains(&eps[2].ip.to_string()),
        "{}",
        msgs[2]
    );

    let (c, a) = (conf.clone(), atts.clone());
    in_node(&node, async move {
        let tasks: Vec<_> = a
            .into_iter()
            .map(|att| {
                let c = c.clone();
                tokio::spawn(async move { del(&c, &att).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    assert!(leases(&conf).unwrap().is_empty());
    assert_eq!(node.links(), vec!["lo"]);
    for p in &pods {
        assert_eq!(p.links(), vec!["lo"]);
    }
}

/// An ADD that fails after the address is leased (here: the pod already has
/// an eth0 of its own) gives the address back and leaves no veth.
#[test]
fn a_failed_add_releases_its_lease() {
    require_root();
    let node = Ns::new("n");
    let pod = Ns::new("p");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let data = tempfile::tempdir().unwrap();
    let conf = conf(&data, "10.244.5.0/24");
    let att = Attachment {
        container_id: "taken".into(),
        netns: pod.path(),
        ifname: "eth0".into(),
    };
    let c = conf.clone();
    let e = in_node(&node, async move { add(&c, &att).await.unwrap_err() });
    assert_eq!(e.code(), 4, "{e}");
    assert!(e.to_string().contains("eth0 already exists"), "{e}");
    assert!(leases(&conf).unwrap().is_empty());
    assert_eq!(node.links(), vec!["lo"]);
}

/// The IPv4 aggregate sizes the kernel holds for `name` in the namespace
/// the calling runtime's threads are in.
async fn ipv4_aggregate_sizes(name: &str) -> (u32, u32) {
    use futures::TryStreamExt;
    use netlink_packet_route::link::LinkAttribute;
    let (conn, handle, _) = rtnetlink::new_connection().unwrap();
    let task = tokio::spawn(conn);
    let links: Vec<_> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await
        .unwrap();
    task.abort();
    let (mut gso, mut gro) = (0, 0);
    for a in &links[0].attributes {
        match a {
            LinkAttribute::GsoIpv4MaxSize(n) => gso = *n,
            LinkAttribute::GroIpv4MaxSize(n) => gro = *n,
            _ => {}
        }
    }
    (gso, gro)
}

/// BIG TCP: both ends of the pair take the asked aggregate size, and the
/// legacy size leaves the kernel's default in place.
#[test]
fn both_ends_of_a_pod_veth_take_the_aggregate_size() {
    require_root();
    let node = Ns::new("n");
    let big = Ns::new("p");
    let legacy = Ns::new("p");
    let data = tempfile::tempdir().unwrap();
    let mut conf = conf(&data, "10.244.6.0/24");
    conf.gso_max_size = 196_608;
    let att = |id: &str, ns: &Ns| Attachment {
        container_id: id.into(),
        netns: ns.path(),
        ifname: "eth0".into(),
    };
    let (c, a) = (conf.clone(), att("big", &big));
    let host = in_node(&node, async move {
        let ep = add(&c, &a).await.unwrap();
        ipv4_aggregate_sizes(&ep.host_ifname).await
    });
    assert_eq!(host, (196_608, 196_608), "host end");
    let pod = in_node(&big, ipv4_aggregate_sizes("eth0"));
    assert_eq!(pod, (196_608, 196_608), "pod end");

    let mut c = conf.clone();
    c.gso_max_size = kestrel_cni::LEGACY_GSO_MAX_SIZE;
    let a = att("legacy", &legacy);
    in_node(&node, async move { add(&c, &a).await.unwrap() });
    let pod = in_node(&legacy, ipv4_aggregate_sizes("eth0"));
    assert_eq!(pod, (65_536, 65_536), "legacy pod end");

    let (c, a, b) = (conf.clone(), att("big", &big), att("legacy", &legacy));
    in_node(&node, async move {
        del(&c, &a).await.unwrap();
        del(&c, &b).await.unwrap();
    });
    assert_eq!(node.links(), vec!["lo"]);
}
