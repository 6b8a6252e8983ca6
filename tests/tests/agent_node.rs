//! The agent registers its node with the machine's real capacity and
//! conditions and keeps its Lease fresh; kubectl shows it like any node.

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::cluster::{binary, ControlPlane};
use harness::ports::free_port;
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
    // This agent runs in the machine's own network namespace: its node API
    // stays on loopback.
    let port = free_port();
    let _agent = Guarded::spawn(
        "agent",
        Command::new(binary("agent"))
            .args(["run", "--master", &cp.url(), "--node-name", &name])
            .arg(format!("--node-api-address=127.0.0.1:{port}"))
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

    // No cluster CA: the node API answers health on loopback, and logs and
    // exec not at all.
    assert_eq!(
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        port
    );
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(curl(&[&format!("{base}/healthz")]).1, "ok");
    for path in [
        "containerLogs/default/pinned/c",
        "exec/default/pinned/c?command=ls",
    ] {
        let (status, body) = curl(&["-w", "\n%{http_code}", &format!("{base}/{path}")]);
        assert!(status.success(), "{path}: {body}");
        assert!(
            body.ends_with("\n404"),
            "{path} is served without a CA: {body}"
        );
    }
}

/// `curl -sS ARGS`: (exit status, stdout).
fn curl(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "5"])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `NAME.crt`/`NAME.key` in `dir`, and a client certificate it signed
/// for an admin, `NAME-client.crt`/`NAME-client.key`.
fn ca_and_client(dir: &std::path::Path, name: &str) {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj"];
    let subject = format!("/CN={name}");
    ca.push(&subject);
    ca.extend(EC);
    ca.extend(["-keyout", &key, "-out", &crt]);
    openssl(dir, &ca);
    client_of(
        dir,
        name,
        &format!("{name}-client"),
        "/O=system:masters/CN=admin",
    );
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A client certificate `OUT.crt`/`OUT.key` for `subject`, signed by the
/// CA `CA.crt`/`CA.key` in `dir`.
fn client_of(dir: &std::path::Path, ca: &str, out: &str, subject: &str) {
    let (crt, key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let (ckey, csr, ccrt) = (
        format!("{out}.key"),
        format!("{out}.csr"),
        format!("{out}.crt"),
    );
    let mut req = vec!["req", "-subj", subject];
    req.extend(EC);
    req.extend(["-keyout", &ckey, "-out", &csr]);
    openssl(dir, &req);
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &crt,
            "-CAkey",
            &key,
            "-CAcreateserial",
            "-extfile",
            "client.ext",
            "-out",
            &ccrt,
        ],
    );
}

/// With the cluster CA in its kubeconfig the node API speaks HTTPS alone
/// and lets in only admins (the API server's kubelet client) whose
/// certificate that CA signed: no certificate, one from another CA, and
/// the cluster CA's certificates of a node, the scheduler or an ordinary
/// user get no logs, no exec and no metrics.
#[test]
fn node_api_refuses_clients_without_a_cluster_certificate() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca_and_client(d, "cluster");
    ca_and_client(d, "rogue");
    client_of(d, "cluster", "node", "/O=system:nodes/CN=system:node:other");
    client_of(d, "cluster", "scheduler", "/CN=system:kube-scheduler");
    client_of(d, "cluster", "user", "/O=developers/CN=jane");
    let ca = std::fs::read(d.join("cluster.crt")).unwrap();
    // base64 of the CA for certificate-authority-data.
    let out = Command::new("base64")
        .args(["-w0"])
        .arg(d.join("cluster.crt"))
        .output()
        .unwrap();
    assert!(out.status.success() && !ca.is_empty());
    let ca_data = String::from_utf8(out.stdout).unwrap();
    let kubeconfig = d.join("agent.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca_data}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            cp.url()
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let name = harness::names::unique("node");
    let port = free_port();
    let _agent = Guarded::spawn(
        "agent",
        Command::new(binary("agent"))
            .arg("run")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", &name])
            .arg(format!("--node-api-address=127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(state.path())
            .arg("--no-pods")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_for(Duration::from_secs(30), || {
        k.output(&["get", "node", &name])
            .ok()?
            .status
            .success()
            .then_some(())
    })
    .expect("the agent registered its node");

    let base = format!("https://127.0.0.1:{port}");
    let path = |p: &str| format!("{base}/{p}");
    let good = [
        "--cert",
        "cluster-client.crt",
        "--key",
        "cluster-client.key",
    ];
    let rogue = ["--cert", "rogue-client.crt", "--key", "rogue-client.key"];
    let in_dir = |extra: &[&str], url: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-k", "-m", "5", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(url)
            .current_dir(d)
            .output()
            .expect("curl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // A client of the cluster CA gets in (the container does not exist,
    // which the agent says).
    let (ok, body) = wait_for(Duration::from_secs(20), || {
        let r = in_dir(&good, &path("healthz"));
        r.0.then_some(r)
    })
    .expect("the node API answers a client of the cluster CA");
    assert!(ok && body == "ok\n200", "{body}");
    let (ok, body) = in_dir(&good, &path("containerLogs/default/p/c"));
    assert!(ok && body.ends_with("\n400"), "{body}");

    let (ok, body) = in_dir(&good, &path("metrics"));
    assert!(ok && body.ends_with("\n200"), "{body}");

    let node = ["--cert", "node.crt", "--key", "node.key"];
    let scheduler = ["--cert", "scheduler.crt", "--key", "scheduler.key"];
    let user = ["--cert", "user.crt", "--key", "user.key"];
    for p in [
        "containerLogs/default/p/c",
        "exec/default/p/c?command=ls",
        "metrics",
    ] {
        for (who, cert) in [
            ("no certificate", &[][..]),
            ("another CA's", &rogue[..]),
            ("a node's", &node[..]),
            ("the scheduler's", &scheduler[..]),
            ("an ordinary user's", &user[..]),
        ] {
            let (ok, body) = in_dir(cert, &path(p));
            assert!(!ok, "{p} with {who}: {body}");
            assert!(
                !body.contains("\n200") && !body.contains("\n400"),
                "{p} with {who}: {body}"
            );
        }
        // Nor over plain HTTP.
        let (_, body) = in_dir(&[], &format!("http://127.0.0.1:{port}/{p}"));
        assert!(
            !body.ends_with("\n200") && !body.ends_with("\n400"),
            "{p} over HTTP: {body}"
        );
    }
}
