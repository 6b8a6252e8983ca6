//! Images pulled from a registry.

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::{wait_for, Guarded};

use crate::common::Agent;

/// Debian's docker-registry on a loopback port, with the project's busybox
/// image pushed to it by `agent image push`.
struct Registry {
    // The node reaches the registry on its own loopback, relayed here.
    _relay: harness::forward::Forward,
    _proc: Guarded,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    fn start_with_busybox(agent: &Agent, repo: &str, tag: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = harness::ports::free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", dir.path().join("data").display()),
        )
        .unwrap();
        let proc = Guarded::spawn(
            "docker-registry",
            Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("docker-registry is installed (cargo xtask setup)");
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).ok().map(|_| ())
        })
        .expect("the registry listens");
        let sock: std::net::SocketAddr = addr.parse().unwrap();
        let relay =
            harness::forward::Forward::start(Some(&agent.netns.path()), sock, None, sock).unwrap();
        // The busybox OCI archive the agent built, pushed the way a user
        // fills a registry from an archive.
        let archive = agent.state.path().join("busybox.tar");
        let target = format!("{addr}/{repo}:{tag}");
        let out = Command::new(harness::cluster::binary("agent"))
            .args(["image", "push"])
            .arg(&archive)
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "agent image push {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("pushed {target} (sha256:")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Registry {
            _relay: relay,
            _proc: proc,
            _dir: dir,
            addr,
        }
    }
}

/// A pod whose image is only in a registry: the agent pulls it (events say
/// so) and runs it; an image the registry lacks shows ErrImagePull, then
/// ImagePullBackOff, and the agent and other pods carry on.
#[test]
fn images_are_pulled_from_a_registry() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let registry = Registry::start_with_busybox(&agent, "tools/box", "1.0");
    let node = agent.name.clone();
    let image = format!("{}/tools/box:1.0", registry.addr);
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: pulled}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - {{name: c, image: "{image}", command: [echo, pulled fine]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: nosuch}}
spec:
  nodeName: {node}
  containers:
  - {{name: c, image: "{}/tools/nosuch:9"}}
"#,
        registry.addr
    ));
    agent.wait(60, "the pulled image to run", || {
        (k.get_json(&["pod", "pulled"])["status"]["phase"] == "Succeeded").then_some(())
    });
    assert_eq!(k.run(&["logs", "pulled"]).unwrap(), "pulled fine\n");
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=pulled",
        ])
        .unwrap();
    assert!(
        events.contains("Pulling") && events.contains("Successfully pulled"),
        "{events}"
    );
    let listed = agent.agent(&["image", "ls"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&image),
        "the pulled image is in the store"
    );

    let waiting = agent.wait(60, "nosuch in ImagePullBackOff", || {
        let p = k.get_json(&["pod", "nosuch"]);
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "ImagePullBackOff").then_some(w)
    });
    assert!(
        waiting["message"].as_str().unwrap().contains("nosuch"),
        "{waiting}"
    );
}
