//! Attach and debug on a terminal: a `tty: true` container, and
//! `kubectl debug -it` from a user's terminal.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::wait_for;
use harness::terminal::Terminal;

use crate::common::{ephemeral_status, web_pod, Agent};

/// A container with `tty: true` runs on a terminal the agent keeps:
/// attach types into it (the terminal echoes) and reads what it prints;
/// `kubectl debug` with `--tty` gives an ephemeral container one too.
#[test]
fn attach_to_a_container_on_a_terminal() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: term}}
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: term
    image: busybox
    stdin: true
    tty: true
    command: [sh]
"#
    ));
    agent.wait(60, "the terminal pod running", || {
        let p = k.get_json(&["pod", "term"]);
        (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
    });
    let out = k
        .run_stdin(
            &["attach", "-i", "term"],
            "tty; echo answer=$((6*7)); exit 0\n",
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("/dev/pts/0"), "{stdout}\n{stderr}");
    assert!(stdout.contains("answer=42"), "{stdout}\n{stderr}");
    let done = agent.wait(30, "the shell to end", || {
        let p = k.get_json(&["pod", "term"]);
        p["status"]["containerStatuses"][0]["state"]["terminated"]
            .is_object()
            .then_some(p)
    });
    assert_eq!(done["status"]["phase"], "Succeeded");

    // kubectl debug -it: the ephemeral container gets a terminal (kubectl
    // itself has none here, so it says so and streams without one).
    web_pod(&k, &agent, "web");
    let out = k
        .run_stdin(
            &[
                "debug",
                "-i",
                "--tty",
                "pod/web",
                "--image=busybox",
                "--container=term",
                "--",
                "sh",
            ],
            "tty; wget -qO- http://127.0.0.1:8080/; exit 0\n",
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("/dev/pts/0"), "{stdout}\n{stderr}");
    assert!(stdout.contains("hello-from-web"), "{stdout}\n{stderr}");
    let p = k.get_json(&["pod", "web"]);
    assert_eq!(p["spec"]["ephemeralContainers"][0]["tty"], true);
}

/// `kubectl debug -it` from a user's terminal: keystrokes reach the shell
/// in the ephemeral container, its answers come back, and a resize of the
/// user's terminal reaches the container's.
#[test]
fn kubectl_debug_on_a_users_terminal() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    web_pod(&k, &agent, "web");
    let mut t = Terminal::spawn(
        &k,
        &[
            "debug",
            "-it",
            "pod/web",
            "--image=busybox",
            "--container=shell",
            "--",
            "sh",
        ],
        24,
        80,
    );
    // The shell's prompt reaches the user's terminal once kubectl attaches.
    assert!(
        t.expect(0, "# ", 60),
        "kubectl did not attach\n{}",
        t.screen()
    );
    let answered = wait_for(Duration::from_secs(20), || {
        let mark = t.output().len();
        t.type_in("echo hi-$((1+1))\n");
        t.expect(mark, "hi-2", 2).then_some(())
    });
    assert!(answered.is_some(), "no answer\n{}", t.screen());
    let mark = t.output().len();
    t.type_in("wget -qO- http://127.0.0.1:8080/\n");
    assert!(t.expect(mark, "hello-from-web", 10), "{}", t.screen());
    t.resize(50, 132);
    let resized = wait_for(Duration::from_secs(10), || {
        let mark = t.output().len();
        t.type_in("stty size\n");
        t.expect(mark, "50 132", 1).then_some(())
    });
    assert!(resized.is_some(), "resize not seen\n{}", t.screen());
    t.type_in("exit\n");
    assert_eq!(t.wait(30), Some(0), "{}", t.screen());
    let p = k.get_json(&["pod", "web"]);
    let shell = ephemeral_status(&p, "shell").unwrap();
    assert_eq!(p["spec"]["ephemeralContainers"][0]["tty"], true, "{shell}");
}
