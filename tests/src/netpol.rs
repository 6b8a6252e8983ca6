//! The upstream network-policy test model, written for this harness: a
//! cluster of nodes, namespaces x, y and z with pods a, b and c each
//! serving TCP and UDP on ports 80 and 81, and a probe matrix from every
//! pod to every pod on each of those ports, compared with a truth table.
//!
//! The pods run `netpol-probe` (tests/probe/netpol_probe.rs, built here
//! with rustc and linked statically) from a hostPath volume: the busybox
//! image has no UDP server.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::networked::NetCluster;
use crate::node::Node;
use crate::process::wait_for;

/// The model's namespaces, each labelled `ns: <name>`.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The model's pods in every namespace, each labelled `pod: <name>`.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The probed protocol/port pairs, in the order of a [`Truth`]'s layers.
pub const PORTS: [&str; 4] = ["tcp/80", "tcp/81", "udp/80", "udp/81"];
/// How long a probe waits for its answer.
const PROBE_TIMEOUT_MS: u32 = 900;

/// Every pod of the model as (namespace, pod), x/a first and z/c last.
pub fn pods() -> impl Iterator<Item = (&'static str, &'static str)> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| (*ns, *p)))
}

/// Reachability for each of [`PORTS`]: nine rows (sources x/a .. z/c) of
/// nine characters (destinations in the same order), `.` reachable, `X`
/// not. Rows are written with spaces between namespaces for reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth([Vec<String>; 4]);

impl Truth {
    /// The same rows on every port.
    pub fn all(rows: &[&str; 9]) -> Self {
        let rows: Vec<String> = rows.iter().map(|r| r.replace(' ', "")).collect();
        Truth([rows.clone(), rows.clone(), rows.clone(), rows])
    }

    /// These rows on `port` (one of [`PORTS`]) instead.
    pub fn on(mut self, port: &str, rows: &[&str; 9]) -> Self {
        let i = PORTS
            .iter()
            .position(|p| *p == port)
            .unwrap_or_else(|| panic!("{port} is not one of {PORTS:?}"));
        self.0[i] = rows.iter().map(|r| r.replace(' ', "")).collect();
        self
    }

    /// Side by side per port, the differing rows marked.
    fn diff(&self, seen: &Truth) -> String {
        let names: Vec<String> = pods().map(|(n, p)| format!("{n}/{p}")).collect();
        let mut out = String::new();
        for (i, port) in PORTS.iter().enumerate() {
            let _ = writeln!(out, "{port:<7} expected   observed");
            for (r, name) in names.iter().enumerate() {
                let w = self.0[i].get(r).map_or("", String::as_str);
                let g = seen.0[i].get(r).map_or("", String::as_str);
                let mark = if w == g { "" } else { "   <-- differs" };
                let _ = writeln!(out, "{name:<7} {w:<10} {g}{mark}");
            }
        }
        out
    }
}

/// A networked cluster (plain HTTP: the tests read the agents' metrics)
/// and the probe binary the pods run.
pub struct Cluster {
    net: NetCluster,
    probe_dir: tempfile::TempDir,
}

impl std::ops::Deref for Cluster {
    type Target = NetCluster;
    fn deref(&self) -> &NetCluster {
        &self.net
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut NetCluster {
        &mut self.net
    }
}

impl Cluster {
    /// Starts the control plane and `nodes` nodes, and builds the probe.
    pub fn start(nodes: usize) -> Self {
        Self::start_with(nodes, &[])
    }

    /// Like `start`, with extra `agent run` flags on every node.
    pub fn start_with(nodes: usize, agent_args: &[&str]) -> Self {
        let probe_dir = tempfile::tempdir().unwrap();
        build_probe(&probe_dir.path().join("netpol-probe"));
        Self {
            net: NetCluster::start_plain(nodes, agent_args),
            probe_dir,
        }
    }

    /// The directory holding `netpol-probe`, for pods to mount at /probe.
    pub fn probe_dir(&self) -> &Path {
        self.probe_dir.path()
    }

    /// The tail of every agent's log and its `agent bpf policy`.
    pub fn logs(&self) -> String {
        let mut out = self.net.logs(40);
        for n in &self.nodes {
            let _ = write!(out, "--- bpf policy of {}\n{}\n", n.name, bpf_policy(n));
        }
        out
    }

    /// The nine pods x/a .. z/c, spread over the nodes, each serving TCP
    /// and UDP on 80 and 81 (container ports named `serve-80-tcp` and so
    /// on, as upstream names them). Returns their addresses in that order.
    pub fn start_pods(&self) -> Vec<String> {
        let mut yaml = String::new();
        for ns in NAMESPACES {
            let _ = write!(
                yaml,
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: '{ns}', labels: {{ns: '{ns}'}}}}\n---\n"
            );
        }
        let dir = self.probe_dir.path().display();
        for (i, (ns, pod)) in pods().enumerate() {
            let node = &self.nodes[i % self.nodes.len()].name;
            let _ = write!(
                yaml,
                r#"apiVersion: v1
kind: Pod
metadata: {{name: '{pod}', namespace: '{ns}', labels: {{pod: '{pod}'}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  volumes: [{{name: probe, hostPath: {{path: '{dir}'}}}}]
  containers:
  - name: main
    image: busybox
    volumeMounts: [{{name: probe, mountPath: /probe, readOnly: true}}]
    ports:
    - {{name: serve-80-tcp, containerPort: 80}}
    - {{name: serve-81-tcp, containerPort: 81}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
    command: [/probe/netpol-probe, serve, '80', '81']
---
"#
            );
        }
        self.apply(&yaml);
        pods()
            .map(|(ns, pod)| {
                wait_for(Duration::from_secs(120), || {
                    let ip = self
                        .k
                        .run(&[
                            "get",
                            "pod",
                            pod,
                            "-n",
                            ns,
                            "-o",
                            "jsonpath={.status.phase} {.status.podIP}",
                        ])
                        .ok()?;
                    let (phase, ip) = ip.trim().split_once(' ')?;
                    (phase == "Running" && !ip.is_empty()).then(|| ip.to_string())
                })
                .unwrap_or_else(|| panic!("{ns}/{pod} did not run\n{}", self.logs()))
            })
            .collect()
    }

    /// Probes every pod on every port from every pod, all at once: one
    /// `kubectl exec` per source, which tries its 36 targets in parallel.
    pub fn matrix(&self, ips: &[String]) -> Truth {
        let mut args = vec![
            "/probe/netpol-probe".to_string(),
            "connect".to_string(),
            PROBE_TIMEOUT_MS.to_string(),
        ];
        for port in PORTS {
            let (proto, port) = port.split_once('/').unwrap();
            args.extend(ips.iter().map(|ip| format!("{proto}:{ip}:{port}")));
        }
        let rows: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = pods()
                .map(|(ns, pod)| {
                    let k = &self.k;
                    let args = &args;
                    s.spawn(move || {
                        let mut all = vec!["exec", pod, "-n", ns, "--"];
                        all.extend(args.iter().map(String::as_str));
                        k.run(&all)
                            .map(|o| o.trim().to_string())
                            .unwrap_or_else(|e| format!("exec failed: {e}"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let n = ips.len();
        let layer = |i: usize| -> Vec<String> {
            rows.iter()
                .map(|r| r.get(i * n..(i + 1) * n).unwrap_or(r).to_string())
                .collect()
        };
        Truth([layer(0), layer(1), layer(2), layer(3)])
    }

    /// Probes `target` (as `netpol-probe connect` takes it) from pod `pod`
    /// of namespace `ns`: `.` answered, `X` not.
    pub fn probe(&self, ns: &str, pod: &str, target: &str) -> String {
        let timeout = PROBE_TIMEOUT_MS.to_string();
        let args = [
            "exec",
            pod,
            "-n",
            ns,
            "--",
            "/probe/netpol-probe",
            "connect",
            &timeout,
            target,
        ];
        self.k
            .run(&args)
            .map(|o| o.trim().to_string())
            .unwrap_or_else(|e| format!("exec failed: {e}"))
    }

    /// Polls the probe matrix until it is `want`; on timeout fails with
    /// both side by side.
    pub fn expect(&self, case: &str, ips: &[String], want: &Truth) {
        let mut last = None;
        let seen = wait_for(Duration::from_secs(90), || {
            let m = self.matrix(ips);
            let ok = m == *want;
            last = Some(m);
            ok.then_some(())
        });
        if seen.is_none() {
            let diff = last.map(|l| want.diff(&l)).unwrap_or_default();
            panic!(
                "case {case:?}: the probe matrix never matched (columns x/a .. z/c)\n{diff}\n{}",
                self.logs()
            );
        }
    }
}

/// `agent bpf policy` of `node`.
pub fn bpf_policy(node: &Node) -> String {
    let out = node
        .agent(&["bpf", "policy", "--bpffs-dir"])
        .arg(&node.bpffs_dir)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Compiles the probe into `out`, statically linked so it needs nothing
/// from the image it runs in.
fn build_probe(out: &Path) {
    crate::build_probe("netpol_probe.rs", out);
}

/// Why SCTP cannot be probed here, if it cannot: the kernel refuses SCTP
/// sockets when it was built without SCTP or its module is not loaded.
pub fn sctp_unavailable() -> Option<String> {
    // SAFETY: socket() with constant arguments; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd < 0 {
        return Some(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd was just opened by this function.
    unsafe { libc::close(fd) };
    None
}
