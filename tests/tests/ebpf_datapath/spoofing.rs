//! Frames a pod sends from an address that is not its own are dropped.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use harness::net::Netns;
use kestrel_agent::ebpf::abi::{self, Stat};
use kestrel_agent::ebpf::{self};
use kestrel_agent::netns::NetNs;

use crate::common::{frame, Bench, OTHER_POD, POD, TC_ACT_REDIRECT, TC_ACT_SHOT, UDP};

#[test]
fn from_pod_drops_frames_whose_source_is_not_the_pods_own() {
    let mut b = Bench::new();
    // An address no pod of this node holds.
    let stray = Ipv4Addr::new(10, 244, 1, 99);
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (stray, 40000), (OTHER_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_SHOT);
    // A neighbour's address, sent from a veth that is not the neighbour's.
    let neighbour = Ipv4Addr::new(10, 244, 1, 7);
    b.endpoint(neighbour, 4242, [0x0a, 0x58, 10, 244, 1, 7]);
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (neighbour, 40000), (OTHER_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(b.stat(Stat::PodSpoofed), 2);
    assert_eq!(b.stat(Stat::PodToLocal), 0, "nothing spoofed got through");

    // The pod's own traffic still flows.
    let (ret, _) = b.run(
        abi::FROM_POD_PROGRAM,
        &frame(UDP, (POD, 40000), (OTHER_POD, 53)),
    );
    assert_eq!(ret, TC_ACT_REDIRECT);
}

/// Sends three UDP datagrams from `src` to `dst`:9000 inside `ns`.
fn send_udp(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr) {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{src}', 0))\nfor _ in range(3): s.sendto(b'hello', ('{dst}', 9000))\n"
    );
    ns.exec(&["python3", "-c", &script]).unwrap();
}

/// A pod that gives itself a second address and sends from it is not
/// heard by the other pod; what it sends from its own address is.
#[test]
fn a_pod_cannot_send_from_an_address_that_is_not_its_own() {
    use kestrel_agent::network::datapath::{self, Datapath};
    let node = Netns::new("nd").unwrap();
    let a = Netns::new("pa").unwrap();
    let b = Netns::new("pb").unwrap();
    let a_ip = Ipv4Addr::new(10, 244, 1, 5);
    let b_ip = Ipv4Addr::new(10, 244, 1, 6);
    let a_ep = harness::net::wire_pod(&node, &a, a_ip).unwrap();
    let b_ep = harness::net::wire_pod(&node, &b, b_ip).unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/{}", node.name()));
    struct RemovePins(PathBuf);
    impl Drop for RemovePins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemovePins(pins.clone());
    let object = ebpf::object(None).unwrap();
    let in_node = NetNs::open(node.path()).unwrap();
    let dp = in_node
        .run(|| -> Result<Datapath, kestrel_agent::ebpf::Error> {
            let mut dp = Datapath::load(&object, &pins)?;
            dp.add_endpoint(a_ip, &a_ep)?;
            dp.add_endpoint(b_ip, &b_ep)?;
            Ok(dp)
        })
        .unwrap()
        .unwrap();

    // Pod a takes a second address in its own namespace.
    let spoofed = Ipv4Addr::new(10, 244, 1, 99);
    a.exec(&["ip", "addr", "add", "10.244.1.99/32", "dev", "eth0"])
        .unwrap();

    let listener = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                    s.bind(('0.0.0.0', 9000))\ns.settimeout(3)\nwhile True:\n    \
                    try:\n        data, peer = s.recvfrom(100)\n    \
                    except socket.timeout:\n        break\n    \
                    print(peer[0], flush=True)\n";
    let heard = b
        .command(&["python3", "-c", listener])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    send_udp(&a, a_ip, b_ip);
    send_udp(&a, spoofed, b_ip);
    let out = heard.wait_with_output().unwrap();
    let heard = String::from_utf8_lossy(&out.stdout);
    let from: Vec<&str> = heard.lines().collect();
    assert!(
        from.contains(&a_ip.to_string().as_str()),
        "b did not hear a's own address: {from:?}"
    );
    assert!(
        !from.contains(&spoofed.to_string().as_str()),
        "b heard the spoofed address: {from:?}"
    );
    let stats = datapath::read_stats(&pins).unwrap();
    let dropped = stats
        .iter()
        .find(|(name, _)| *name == Stat::PodSpoofed.name())
        .map(|(_, n)| *n);
    assert_eq!(dropped, Some(3), "{stats:?}");
    drop(dp);
}
