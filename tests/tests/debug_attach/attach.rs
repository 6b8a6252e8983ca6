//! `kubectl attach -i` to a container's stdin and output, and an
//! interactive `kubectl debug -i`.

use harness::cluster::ControlPlane;

use crate::common::{ephemeral_status, run_for, Agent};

/// `kubectl attach -i` writes to a container's stdin and reads its output
/// (stdinOnce: the end of the user's input is the end of the
/// container's); attach to a container without stdin shows its output;
/// `kubectl debug -i` runs an interactive ephemeral container.
#[test]
fn kubectl_attach_and_interactive_debug() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: echo}}
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: echo
    image: busybox
    stdin: true
    stdinOnce: true
    command: [sh, -c, 'while read l; do echo "got $l"; done; echo bye']
---
apiVersion: v1
kind: Pod
metadata: {{name: ticker}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: ticker
    image: busybox
    command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done']
"#
    ));
    for name in ["echo", "ticker"] {
        agent.wait(60, "the pods running", || {
            let p = k.get_json(&["pod", name]);
            (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
        });
    }

    let out = k
        .run_stdin(&["attach", "-i", "echo"], "hello\nworld\n")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "got hello\ngot world\nbye\n");
    let done = agent.wait(30, "the echo container to end", || {
        let p = k.get_json(&["pod", "echo"]);
        p["status"]["containerStatuses"][0]["state"]["terminated"]
            .is_object()
            .then_some(p)
    });
    assert_eq!(done["status"]["phase"], "Succeeded");

    // Output only, from the moment of attaching.
    let (stdout, stderr) = run_for(&k, &["attach", "ticker"], 3);
    let ticks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("tick ")).collect();
    assert!(ticks.len() >= 3, "{stdout}\n{stderr}");
    assert_ne!(ticks[0], "tick 1", "history was replayed: {stdout}");

    // An interactive ephemeral container: the piped commands run in it,
    // in the pod's network.
    let out = k
        .run_stdin(
            &[
                "debug",
                "-i",
                "--tty=false",
                "pod/ticker",
                "--image=busybox",
                "--container=shell",
                "--",
                "sh",
            ],
            "echo in-debug; hostname; wget -qO- http://127.0.0.1:1 2>&1 | head -c 0; exit 4\n",
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("in-debug\nticker\n"), "{stdout}\n{stderr}");
    let p = agent.wait(30, "the debug shell to end", || {
        let p = k.get_json(&["pod", "ticker"]);
        ephemeral_status(&p, "shell")?["state"]["terminated"]
            .is_object()
            .then_some(p)
    });
    let shell = ephemeral_status(&p, "shell").unwrap();
    assert_eq!(shell["state"]["terminated"]["exitCode"], 4, "{shell}");
    assert_eq!(p["spec"]["ephemeralContainers"][0]["stdin"], true);
}
