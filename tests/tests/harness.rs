//! User story: a test author gets a real etcd and real namespaces from the
//! harness, and nothing is left on the machine afterwards, even on failure.

use harness::etcd::Etcd;
use harness::net::{veth_between, Netns, Segment};

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn etcd_stores_survives_restart_and_is_removed_on_drop() {
    let mut etcd = Etcd::start().expect("start etcd");
    etcd.etcdctl(&["put", "/registry/test/a", "one"]).unwrap();
    etcd.kill();
    etcd.restart().unwrap();
    let got = etcd
        .etcdctl(&["get", "--print-value-only", "/registry/test/a"])
        .unwrap();
    assert_eq!(got.trim(), "one");
    let dir = etcd.data_dir().to_path_buf();
    drop(etcd);
    assert!(!dir.exists(), "data dir {} left behind", dir.display());
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    harness::require_root("network namespaces");
    let a = Netns::new("h").unwrap();
    let name = a.name().to_string();
    assert!(netns_exists(&name));
    drop(a);
    assert!(!netns_exists(&name));

    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let ns = Netns::new("h").unwrap();
        tx.send(ns.name().to_string()).unwrap();
        panic!("a failing test");
    });
    assert!(result.is_err());
    let name = rx.recv().unwrap();
    assert!(!netns_exists(&name), "{name} survived a panic");
}

#[test]
fn nodes_on_a_segment_reach_each_other() {
    harness::require_root("network namespaces");
    let seg = Segment::new().unwrap();
    let n1 = Netns::new("n").unwrap();
    let n2 = Netns::new("n").unwrap();
    let l1 = seg.attach(&n1).unwrap();
    let l2 = seg.attach(&n2).unwrap();
    n1.addr_up(&l1, "10.242.0.1/24").unwrap();
    n2.addr_up(&l2, "10.242.0.2/24").unwrap();
    n1.exec(&["ping", "-c", "1", "-W", "2", "10.242.0.2"])
        .unwrap();
    // The host namespace never sees these links.
    let host_links = harness::net::ip(&["-o", "link"]).unwrap();
    assert!(!host_links.contains(&l1) && !host_links.contains(&l2));
    let (x, _) = veth_between(&n1, &n2, "x").unwrap();
    assert!(n1.exec(&["ip", "link", "show", &x]).is_ok());
}
