//! User story: the agent loads its eBPF object into the kernel and a TC
//! program attached to a pod-facing veth sees the pod's traffic.

use harness::net::{veth_between, Netns};
use kestrel_agent::ebpf::{self, AttachMode, Direction, PacketCounter};
use kestrel_agent::netns::NetNs;

/// Two namespaces joined by a veth, with 10.241.0.1 and .2 on its ends.
fn pair() -> (Netns, Netns, String) {
    let a = Netns::new("a").unwrap();
    let b = Netns::new("b").unwrap();
    let (in_a, in_b) = veth_between(&a, &b, "v").unwrap();
    a.addr_up(&in_a, "10.241.0.1/30").unwrap();
    b.addr_up(&in_b, "10.241.0.2/30").unwrap();
    (a, b, in_b)
}

fn counts_pings(only: Option<AttachMode>) -> AttachMode {
    let (a, b, in_b) = pair();
    let object = ebpf::object(None).unwrap();
    let counter = PacketCounter::attach(
        &object,
        Some(NetNs::open(b.path()).unwrap()),
        &in_b,
        Direction::Ingress,
        only,
    )
    .expect("load and attach the counting classifier");
    let before = counter.total().unwrap();
    a.exec(&["ping", "-c", "5", "-i", "0.05", "-W", "2", "10.241.0.2"])
        .expect("ping across the veth");
    let after = counter.total().unwrap();
    // Five echo requests at least (ARP may add more).
    assert!(
        after.packets >= before.packets + 5,
        "counter moved from {before:?} to {after:?}"
    );
    assert!(after.bytes >= before.bytes + 5 * 84, "bytes: {after:?}");
    counter.mode()
}

#[test]
fn counter_attaches_with_tcx_by_default_and_counts() {
    harness::require_root("eBPF and network namespaces");
    // This kernel (6.6+) has TCX, so the preferred mode is the one used.
    assert_eq!(counts_pings(None), AttachMode::Tcx);
}

#[test]
fn counter_attaches_under_clsact_and_counts() {
    harness::require_root("eBPF and network namespaces");
    assert_eq!(counts_pings(Some(AttachMode::Clsact)), AttachMode::Clsact);
}

#[test]
fn clsact_filter_is_removed_when_the_counter_is_dropped() {
    harness::require_root("eBPF and network namespaces");
    let (_a, b, in_b) = pair();
    let object = ebpf::object(None).unwrap();
    let counter = PacketCounter::attach(
        &object,
        Some(NetNs::open(b.path()).unwrap()),
        &in_b,
        Direction::Ingress,
        Some(AttachMode::Clsact),
    )
    .unwrap();
    let filters = b
        .exec(&["tc", "filter", "show", "dev", &in_b, "ingress"])
        .unwrap();
    assert!(
        filters.contains("count_packets"),
        "filter present: {filters}"
    );
    drop(counter);
    let filters = b
        .exec(&["tc", "filter", "show", "dev", &in_b, "ingress"])
        .unwrap();
    assert!(!filters.contains("count_packets"), "filter left: {filters}");
}

#[test]
fn agent_binary_checks_its_object_and_one_given_by_path() {
    harness::require_root("loading eBPF programs");
    let agent = harness::cluster::binary("agent");
    let out = std::process::Command::new(&agent)
        .args(["bpf", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("program count_packets (SchedClassifier): loaded"),
        "{text}"
    );
    // A file that is not an eBPF object is refused with a clear error.
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), b"not an ELF file").unwrap();
    let out = std::process::Command::new(&agent)
        .arg("--ebpf-object")
        .arg(bogus.path())
        .args(["bpf", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("eBPF"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
