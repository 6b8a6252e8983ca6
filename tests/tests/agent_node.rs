//! The agent registers its node with the machine's real capacity and
//! conditions and keeps its Lease fresh; kubectl shows it like any node.

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::cluster::{binary, ControlPlane};
use harness::process::{wait_for, Guarded};
use serde_json::Value;

fn get(k: &harness::kubectl::Kubectl, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&k.run(&a).unwrap()).unwrap()
}

/// A user starts the agent and sees the node Ready with the machine's CPUs,
/// memory and disk, allocatable below capacity, real node info, a renewed
/// Lease, and the pods bound to it in `kubectl describe node`.
#[test]
fn agent_registers_the_node_with_real_capacity_and_conditions() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    let state = tempfile::tempdir().unwrap();
    let name = harness::names::unique("node");
    let _agent = Guarded::spawn(
        "agent",
        Command::new(binary("agent"))
            .args(["run", "--master", &cp.url(), "--node-name", &name])
            .arg("--state-dir")
            .arg(state.path())
            .args([
                "--node-lease-interval",
                "1",
                "--system-reserved",
                "cpu=500m,memory=512Mi",
            ])
            // Only the node here: no runtime helper, no pods.
            .arg("--no-pods")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let node = wait_for(Duration::from_secs(30), || {
        let out = k.output(&["get", "node", &name, "-o", "json"]).ok()?;
        let n: Value = serde_json::from_slice(&out.stdout).ok()?;
        n["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
            .then_some(n)
    })
    .expect("the agent registered its node");

    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(node["status"]["capacity"]["cpu"], cpus.to_string());
    assert_eq!(
        node["status"]["allocatable"]["cpu"],
        format!("{}m", cpus * 1000 - 500)
    );
    let kib = |v: &Value| -> u64 { v.as_str().unwrap().trim_end_matches("Ki").parse().unwrap() };
    let mem = kib(&node["status"]["capacity"]["memory"]);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        mem <= total && mem > total / 2,
        "memory {mem}Ki vs MemTotal {total}Ki"
    );
    assert!(kib(&node["status"]["allocatable"]["memory"]) < mem);
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    assert!(node["status"]["capacity"]["ephemeral-storage"]
        .as_str()
        .is_some());

    let cond = |t: &str| {
        node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap_or_else(|| panic!("no {t} condition"))["status"]
            .clone()
    };
    assert_eq!(cond("Ready"), "True");
    for t in ["MemoryPressure", "PIDPressure", "NetworkUnavailable"] {
        assert_eq!(cond(t), "False", "{t}");
    }
    // Disk pressure is real: under 10% free where the agent keeps its data.
    let c = std::ffi::CString::new(state.path().to_str().unwrap()).unwrap();
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a writable struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut vfs) }, 0);
    let low = (vfs.f_bavail as u128) * 100 < (vfs.f_blocks as u128) * 10;
    assert_eq!(cond("DiskPressure"), if low { "True" } else { "False" });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(node["status"]["nodeInfo"]["kernelVersion"], kernel.trim());
    assert!(node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("libcontainer://"));
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        name.as_str()
    );
    assert!(node["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["type"] == "Hostname" && a["address"] == name.as_str()));

    // The Lease is renewed.
    let renew = |k: &harness::kubectl::Kubectl| {
        get(k, &["lease", &name, "-n", "kube-node-lease"])["spec"]["renewTime"]
            .as_str()
            .map(str::to_string)
    };
    let first = wait_for(Duration::from_secs(10), || renew(&k)).expect("a node lease");
    wait_for(Duration::from_secs(10), || {
        (renew(&k).as_ref() != Some(&first)).then_some(())
    })
    .expect("the lease is renewed");

    // kubectl get nodes shows it Ready; describe lists a pod bound to it.
    let nodes = k.run(&["get", "nodes"]).unwrap();
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(&name) && l.contains(" Ready ")),
        "{nodes}"
    );
    let pod = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"pinned\"}},\"spec\":{{\"nodeName\":\"{name}\",\"containers\":[{{\"name\":\"c\",\"image\":\"registry.local/busybox:1\"}}]}}}}"
    );
    let out = k.run_stdin(&["apply", "-f", "-"], &pod).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let describe = k.run(&["describe", "node", &name]).unwrap();
    assert!(describe.contains("pinned"), "{describe}");
    assert!(describe.contains("KubeletReady"), "{describe}");
}
