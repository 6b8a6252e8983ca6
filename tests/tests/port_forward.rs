//! User story: `kubectl port-forward`. A developer reaches ports that a
//! pod serves only on its own loopback, through the API server and the
//! pod's node agent, by pod or by Service, with every byte arriving; a
//! user whose role does not grant `pods/portforward` is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::kubectl::Kubectl;
use harness::networked::NetCluster;
use harness::process::{wait_for, Guarded};

const MB: u64 = 1 << 20;

/// A pod serving echo on 8080 and 9090 of its loopback, and a Service
/// naming the two as ports 80 and 81.
fn pod_yaml(probe_dir: &Path) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: echo, labels: {{app: echo}}}}
spec:
  terminationGracePeriodSeconds: 0
  volumes: [{{name: probe, hostPath: {{path: '{dir}'}}}}]
  containers:
  - name: echo
    image: busybox
    volumeMounts: [{{name: probe, mountPath: /probe, readOnly: true}}]
    command: [/probe/echo-probe, '8080', '9090']
    ports: [{{containerPort: 8080}}, {{containerPort: 9090}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports:
  - {{name: a, port: 80, targetPort: 8080}}
  - {{name: b, port: 81, targetPort: 9090}}
"#,
        dir = probe_dir.display()
    )
}

/// The bytes sent: a xorshift stream, so a lost, doubled or misplaced
/// chunk shows, however the reads and writes cut it.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Sends `bytes` through `local` to the echo server behind it and checks
/// that the greeting names `port` and that exactly the same bytes come
/// back before the server closes. Returns the seconds it took.
fn echo_through(local: u16, port: u16, bytes: u64, seed: u64) -> f64 {
    let started = Instant::now();
    let conn = TcpStream::connect(("127.0.0.1", local)).expect("connecting to kubectl");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            p.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).expect("sending");
            left -= n as u64;
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = BufReader::with_capacity(256 * 1024, conn);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    assert_eq!(
        greeting,
        format!("port {port}\n"),
        "through local port {local}"
    );
    let mut p = Pattern::new(seed);
    let (mut got, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut got).expect("reading the echo");
        if n == 0 {
            break;
        }
        p.fill(&mut want[..n]);
        assert!(
            got[..n] == want[..n],
            "the echo through {local} differs at byte {seen}"
        );
        seen += n as u64;
    }
    sending.join().unwrap();
    assert_eq!(seen, bytes, "bytes echoed through local port {local}");
    started.elapsed().as_secs_f64()
}

/// `kubectl port-forward ARGS`, running until dropped, once it says it
/// forwards every local port in `locals`.
/// With `websocket` false, kubectl goes straight to its SPDY fallback.
fn port_forward(
    k: &Kubectl,
    dir: &Path,
    name: &str,
    args: &[&str],
    locals: &[u16],
    websocket: bool,
) -> Guarded {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = k.command(&[&["port-forward"], args].concat());
    cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websocket.to_string());
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let mut g = Guarded::spawn(name, &mut cmd).unwrap();
    let ready = wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        locals
            .iter()
            .all(|l| text.contains(&format!("Forwarding from 127.0.0.1:{l} ")))
            .then_some(())
    });
    if ready.is_none() || !g.is_running() {
        panic!(
            "kubectl port-forward {args:?} did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    g
}

#[test]
fn kubectl_port_forward_carries_100_mb_to_a_pods_ports_and_through_a_service() {
    let c = NetCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let probe_dir = tempfile::tempdir().unwrap();
    harness::build_probe("echo_probe.rs", &probe_dir.path().join("echo-probe"));
    c.apply(&pod_yaml(probe_dir.path()));
    wait_for(Duration::from_secs(120), || {
        let p = c.k.get_json(&["pod", "echo"]);
        (p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the echo pod never ran\n{}", c.logs(40)));

    // Two ports of the pod at once: 100 MB each way through one, 20 MB
    // through the other at the same time.
    let (l1, l2) = (harness::ports::free_port(), harness::ports::free_port());
    let pf = port_forward(
        &c.k,
        dir.path(),
        "port-forward-pod",
        &["pod/echo", &format!("{l1}:8080"), &format!("{l2}:9090")],
        &[l1, l2],
        true,
    );
    let started = Instant::now();
    let small = std::thread::spawn(move || echo_through(l2, 9090, 20 * MB, 7));
    let secs = echo_through(l1, 8080, 100 * MB, 1);
    let small_secs = small.join().unwrap();
    eprintln!(
        "port-forward pod/echo: 100 MB echoed through {l1}->8080 in {secs:.1} s, 20 MB through {l2}->9090 in {small_secs:.1} s at the same time ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    );
    // A second connection on the same forward, after the first closed.
    echo_through(l1, 8080, MB, 3);
    drop(pf);
    let agent = &c.nodes[0];
    assert!(
        agent
            .log()
            .contains("port-forward to default/echo over a WebSocket"),
        "kubectl 1.32 tunnels SPDY through a WebSocket first:\n{}",
        agent.log()
    );

    // By Service: kubectl picks a pod of its selector and maps the
    // Service's port to the pod's target port. This time over plain SPDY,
    // kubectl's fallback.
    let l3 = harness::ports::free_port();
    let _svc = port_forward(
        &c.k,
        dir.path(),
        "port-forward-svc",
        &["svc/echo", &format!("{l3}:81")],
        &[l3],
        false,
    );
    let secs = echo_through(l3, 9090, 100 * MB, 5);
    eprintln!(
        "port-forward svc/echo over SPDY: 100 MB echoed through {l3}->81->9090 in {secs:.1} s"
    );
    assert!(
        agent
            .log()
            .contains("port-forward to default/echo over SPDY"),
        "{}",
        agent.log()
    );

    // A port nothing listens on: kubectl reports the agent's error and
    // the connection closes without a greeting.
    let l4 = harness::ports::free_port();
    let _closed = port_forward(
        &c.k,
        dir.path(),
        "port-forward-closed",
        &["pod/echo", &format!("{l4}:7777")],
        &[l4],
        true,
    );
    let mut conn = TcpStream::connect(("127.0.0.1", l4)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    let said = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(dir.path().join("port-forward-closed.log")).ok()?;
        text.contains("127.0.0.1:7777").then_some(text)
    });
    assert!(
        said.is_some(),
        "kubectl did not report the refused port:\n{}",
        std::fs::read_to_string(dir.path().join("port-forward-closed.log")).unwrap_or_default()
    );
}

/// RBAC: without `create` on `pods/portforward` kubectl is refused with
/// 403 before anything reaches a node; the `edit` role grants it.
#[test]
fn port_forward_needs_create_on_pods_portforward() {
    let cp = harness::cluster::ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    k.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: target}
spec:
  nodeName: nowhere
  containers: [{name: c, image: busybox}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: User, name: viewer, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: editor}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{kind: User, name: editor, apiGroup: rbac.authorization.k8s.io}]
"#,
    );
    // kubectl forwards only to a running pod; no agent runs this one.
    k.run(&[
        "patch",
        "pod",
        "target",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ])
    .unwrap();
    let attempt = |user: &str| -> String {
        let port = harness::ports::free_port();
        let out = k
            .command(&[
                "port-forward",
                &format!("--as={user}"),
                "pod/target",
                &format!("{port}:80"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{user} forwarded to a pod on no node"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The RoleBindings reach the authorizer through a watch.
    let refused = wait_for(Duration::from_secs(10), || {
        let e = attempt("viewer");
        e.contains("portforward").then_some(e)
    })
    .unwrap_or_else(|| panic!("the viewer is not refused: {}", attempt("viewer")));
    assert!(
        refused.contains(
            r#"User "viewer" cannot create resource "pods/portforward" in API group "" in the namespace "default""#
        ),
        "{refused}"
    );
    let editor = wait_for(Duration::from_secs(10), || {
        let e = attempt("editor");
        (!e.contains("forbidden")).then_some(e)
    })
    .unwrap_or_else(|| panic!("the editor is refused: {}", attempt("editor")));
    // Past authorization: the pod's node does not exist.
    assert!(editor.contains("nowhere"), "{editor}");
}
