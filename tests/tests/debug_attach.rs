//! `kubectl debug` and `kubectl attach` against a real node: ephemeral
//! containers join a running pod's sandbox, are reported in its status and
//! may only be added; attach reaches a container's stdin and output.

use harness::terminal::Terminal;
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use harness::process::wait_for;
use serde_json::Value;

type Agent = harness::node::Node;

/// A pod whose main container serves a page on localhost:8080.
fn web_pod(k: &Kubectl, agent: &Agent, name: &str) {
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: busybox
    command: [sh, -c, "mkdir /www; echo hello-from-web > /www/index.html; exec httpd -f -p 8080 -h /www"]
"#
    ));
    agent.wait(60, "the web pod running", || {
        let p = k.get_json(&["pod", name]);
        (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
    });
}

fn ephemeral_status(pod: &Value, name: &str) -> Option<Value> {
    pod["status"]["ephemeralContainerStatuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// `kubectl debug` adds an ephemeral container that runs in the pod's
/// network namespace (and, with --target, sees the target's processes),
/// is reported in ephemeralContainerStatuses, and is never restarted;
/// existing ephemeral containers cannot be changed, and the pod itself
/// cannot be updated to add one.
#[test]
fn kubectl_debug_adds_an_ephemeral_container() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let mut agent = Agent::start(&cp);
    web_pod(&k, &agent, "web");

    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=dbg",
            "--",
            "sleep",
            "300",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl debug: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = agent.wait(60, "the debug container running", || {
        let p = k.get_json(&["pod", "web"]);
        ephemeral_status(&p, "dbg")?["state"]["running"]
            .is_object()
            .then_some(p)
    });
    let status = ephemeral_status(&pod, "dbg").unwrap();
    assert_eq!(status["image"], "busybox", "{status}");
    assert!(
        status["containerID"]
            .as_str()
            .is_some_and(|c| c.starts_with("libcontainer://")),
        "{status}"
    );
    assert_eq!(pod["spec"]["ephemeralContainers"][0]["name"], "dbg");
    // Its status is not the pod's: still Running and Ready.
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        pod["status"]["containerStatuses"].as_array().unwrap().len(),
        1
    );

    // The pod's network: its address, and the main container on localhost.
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let addrs = k
        .run(&["exec", "web", "-c", "dbg", "--", "ip", "-4", "addr"])
        .unwrap();
    assert!(
        addrs.contains(&format!("inet {ip}/")),
        "{ip} not in {addrs}"
    );
    let page = k
        .run(&[
            "exec",
            "web",
            "-c",
            "dbg",
            "--",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/",
        ])
        .unwrap();
    assert_eq!(page, "hello-from-web\n");
    // Its own processes only, without a target.
    let ps = k
        .run(&["exec", "web", "-c", "dbg", "--", "ps", "-o", "args"])
        .unwrap();
    assert!(!ps.contains("httpd"), "{ps}");

    // With --target it shares the target's process namespace.
    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=peek",
            "--target=web",
            "--",
            "sleep",
            "300",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait(60, "the targeted debug container running", || {
        let p = k.get_json(&["pod", "web"]);
        ephemeral_status(&p, "peek")?["state"]["running"]
            .is_object()
            .then_some(())
    });
    let ps = k
        .run(&["exec", "web", "-c", "peek", "--", "ps", "-o", "args"])
        .unwrap();
    assert!(ps.contains("httpd -f -p 8080"), "{ps}");

    // An ephemeral container that ends stays ended.
    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=once",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = agent.wait(60, "the short debug container to end", || {
        let p = k.get_json(&["pod", "web"]);
        ephemeral_status(&p, "once")?["state"]["terminated"]
            .is_object()
            .then_some(p)
    });
    let once = ephemeral_status(&done, "once").unwrap();
    assert_eq!(once["state"]["terminated"]["exitCode"], 3, "{once}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = ephemeral_status(&k.get_json(&["pod", "web"]), "once").unwrap();
    assert_eq!(later["restartCount"], 0, "{later}");
    assert!(later["state"]["terminated"].is_object(), "{later}");

    // A restarted agent adopts the running ephemeral container and does
    // not run the ended one again.
    let dbg_id =
        ephemeral_status(&k.get_json(&["pod", "web"]), "dbg").unwrap()["containerID"].clone();
    agent.proc.as_mut().unwrap().kill();
    std::thread::sleep(std::time::Duration::from_millis(500));
    agent.launch();
    agent.wait(30, "the restarted agent to adopt the containers", || {
        (agent.log().matches("adopted running container").count() >= 3).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = k.get_json(&["pod", "web"]);
    let dbg = ephemeral_status(&after, "dbg").unwrap();
    assert_eq!(dbg["containerID"], dbg_id, "{dbg}");
    assert!(dbg["state"]["running"].is_object(), "{dbg}");
    let once = ephemeral_status(&after, "once").unwrap();
    assert!(once["state"]["terminated"].is_object(), "{once}");
    assert_eq!(once["restartCount"], 0, "{once}");
    assert_eq!(after["status"]["phase"], "Running");

    // Changing an existing ephemeral container through the subresource is
    // refused, naming the field.
    let mut pod = k.get_json(&["pod", "web"]);
    pod["spec"]["ephemeralContainers"][0]["image"] = Value::from("busybox:other");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = k
        .output(&[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/web/ephemeralcontainers",
            "-f",
            file.to_str().unwrap(),
        ])
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is invalid"), "{err}");
    assert!(err.contains("spec.ephemeralContainers"), "{err}");
    assert!(err.contains("may not be changed"), "{err}");
    // Nor may one have ports.
    let mut pod = k.get_json(&["pod", "web"]);
    pod["spec"]["ephemeralContainers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "porty", "image": "busybox", "ports": [{"containerPort": 80}]}));
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = k
        .output(&[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/web/ephemeralcontainers",
            "-f",
            file.to_str().unwrap(),
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("spec.ephemeralContainers[3].ports"), "{err}");
    // A name already in use is refused.
    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=web",
            "--",
            "true",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Duplicate value"), "{err}");
    // The pod itself may not add ephemeral containers.
    let out = k
        .output(&[
            "patch",
            "pod",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"sneaky","image":"busybox"}}]"#,
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("spec: Forbidden"), "{err}");
}

/// Runs kubectl `args` for at most `secs` seconds; returns its stdout and
/// stderr.
fn run_for(k: &Kubectl, args: &[&str], secs: u64) -> (String, String) {
    let inner = k.command(args);
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg(secs.to_string()).arg(inner.get_program());
    cmd.args(inner.get_args());
    let out = cmd.output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

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

/// Attach and debug are authorized like exec: a user who may read pods
/// but not `pods/attach` or `pods/ephemeralcontainers` is refused with
/// 403, and `edit` grants both.
#[test]
fn attach_and_debug_need_their_subresources() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    web_pod(&k, &agent, "web");
    k.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-reads, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-edits, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
"#,
    );
    let (_, err) = run_for(&k, &["--as", "alice", "attach", "web"], 20);
    assert!(
        err.contains("forbidden") && err.contains("pods/attach"),
        "{err}"
    );
    let out = k
        .output(&[
            "--as",
            "alice",
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=x",
            "--",
            "true",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("forbidden") && err.contains("pods/ephemeralcontainers"),
        "{err}"
    );
    assert!(k.get_json(&["pod", "web"])["spec"]["ephemeralContainers"].is_null());
    for (verb, res) in [
        ("create", "pods/attach"),
        ("patch", "pods/ephemeralcontainers"),
    ] {
        let alice = k
            .output(&["auth", "can-i", verb, res, "--as", "alice"])
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&alice.stdout).trim(), "no");
        let bob = k
            .output(&["auth", "can-i", verb, res, "--as", "bob"])
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&bob.stdout).trim(),
            "yes",
            "{verb} {res}"
        );
    }
    let out = k
        .output(&[
            "--as",
            "bob",
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=x",
            "--",
            "true",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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
