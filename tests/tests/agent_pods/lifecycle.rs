//! A pod's life on the node: completion, crash loops and OOM kills, the
//! grace period of a deletion and its preStop hooks, and containers that
//! outlive a `kill -9` of the agent.

use std::time::{Duration, Instant};

use harness::cluster::ControlPlane;
use harness::process::wait_for;

use crate::common::Agent;

/// A user runs busybox pods on a real node: one completes and its output
/// is in the CRI log, one crash-loops with a growing restart count, one
/// exceeds its memory limit and shows OOMKilled.
#[test]
fn pods_complete_crash_loop_and_get_oom_killed() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    agent.wait(30, "the node to register", || {
        k.output(&["get", "node", &node])
            .ok()?
            .status
            .success()
            .then_some(())
    });
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hello}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: hello
    image: busybox
    command: [sh, -c, 'echo hello from $(hostname) as $(id -u); echo to stderr >&2']
---
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  nodeName: {node}
  containers:
  - name: crash
    image: busybox
    command: [sh, -c, 'echo dying; exit 3']
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox
    command: [sh, -c, 'x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done']
    resources: {{limits: {{memory: 32Mi}}}}
"#
    ));
    let hello = agent.wait(30, "hello to complete", || {
        let p = k.get_json(&["pod", "hello"]);
        (p["status"]["phase"] == "Succeeded").then_some(p)
    });
    let term = &hello["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 0);
    assert_eq!(term["reason"], "Completed");
    let table = k.run(&["get", "pod", "hello"]).unwrap();
    assert!(table.contains("Completed"), "{table}");
    let log = agent.wait(10, "the container's log file", || {
        let files = agent.log_files();
        let f = files
            .iter()
            .find(|f| f.to_string_lossy().contains("_hello_"))?;
        let text = std::fs::read_to_string(f).ok()?;
        (text.lines().count() >= 2).then_some(text)
    });
    assert!(
        log.lines()
            .any(|l| l.ends_with(" stdout F hello from hello as 0")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.ends_with(" stderr F to stderr")),
        "{log}"
    );

    let crash = agent.wait(60, "crash in CrashLoopBackOff after restarts", || {
        let p = k.get_json(&["pod", "crash"]);
        let cs = &p["status"]["containerStatuses"][0];
        (cs["restartCount"].as_i64().unwrap_or(0) >= 2
            && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(p)
    });
    let cs = &crash["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    let previous = k.run(&["logs", "crash", "--previous"]).unwrap();
    assert_eq!(previous, "dying\n");
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(crash["status"]["phase"], "Running");

    let hog = agent.wait(60, "hog OOMKilled", || {
        let p = k.get_json(&["pod", "hog"]);
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(
        hog["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "OOMKilled",
        "{hog}"
    );
}

/// `kubectl logs -f` and `kubectl exec` reach a running container; a
/// deleted pod gets its grace period (a shell as PID 1 ignores SIGTERM, so
/// SIGKILL ends it), and a running container survives `kill -9` of the
/// agent: the restarted agent adopts it without restarting it.
#[test]
fn grace_period_and_agent_restart_keep_containers_right() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let mut agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: sleeper}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: sleeper
    image: busybox
    command: [sleep, "3600"]
"#
    ));
    let running = agent.wait(30, "sleeper running", || {
        let p = k.get_json(&["pod", "sleeper"]);
        (p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true)
            .then_some(p)
    });
    let id = running["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("libcontainer://"), "{id}");
    let conditions: Vec<String> = running["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "True")
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect();
    for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            conditions.iter().any(|x| x == c),
            "{c} not True: {conditions:?}"
        );
    }

    // kubectl exec runs in the container: output, exit codes, stdin.
    assert_eq!(
        k.run(&["exec", "sleeper", "--", "hostname"]).unwrap(),
        "sleeper\n"
    );
    let out = k
        .output(&[
            "exec",
            "sleeper",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let out = k
        .run_stdin(
            &[
                "exec",
                "-i",
                "sleeper",
                "--",
                "sh",
                "-c",
                "read x; echo got $x",
            ],
            "hello\n",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");

    // The default seccomp profile is in force (mode 2: filter).
    let status = k
        .run(&[
            "exec",
            "sleeper",
            "--",
            "grep",
            "Seccomp:",
            "/proc/1/status",
        ])
        .unwrap();
    assert_eq!(
        status.split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"],
        "{status}"
    );

    // kill -9 the agent; the container keeps running; a new agent adopts it.
    agent.proc.as_mut().unwrap().kill();
    std::thread::sleep(Duration::from_millis(500));
    agent.launch();
    agent.wait(30, "the restarted agent to adopt the container", || {
        agent
            .log()
            .contains("adopted running container")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = k.get_json(&["pod", "sleeper"]);
    let cs = &after["status"]["containerStatuses"][0];
    assert_eq!(cs["containerID"], id.as_str(), "the container was replaced");
    assert_eq!(cs["restartCount"], 0);
    assert!(cs["state"]["running"].is_object(), "{cs}");

    let t0 = Instant::now();
    let out = k
        .output(&["delete", "pod", "sleeper", "--timeout=60s"])
        .unwrap();
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    assert!(
        took >= Duration::from_secs(2),
        "deleted after {took:?}, before the 2 s grace period"
    );
    assert!(took < Duration::from_secs(20), "deletion took {took:?}");
    let leftover = wait_for(Duration::from_secs(10), || {
        let m = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        (!m.contains(&agent.state.path().to_string_lossy().to_string())).then_some(())
    });
    assert!(leftover.is_some(), "the pod's mounts outlived it");
}

/// A pod deleted with preStop hooks: each container's hook runs to its end
/// before the container gets SIGTERM, and a hook that fails is a
/// FailedPreStopHook event without holding the deletion up.
#[test]
fn pre_stop_hooks_run_before_sigterm() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    let data = tempfile::Builder::new()
        .prefix("kestrel-hooks-")
        .tempdir()
        .unwrap();
    k.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 6
  volumes: [{{name: data, hostPath: {{path: {data}}}}}]
  containers:
  - name: main
    image: busybox
    volumeMounts: [{{name: data, mountPath: /data}}]
    command: [sh, -c, "trap 'echo TERM >> /data/log; exit 0' TERM; echo started >> /data/log; while true; do sleep 0.2; done"]
    lifecycle:
      preStop:
        exec: {{command: [sh, -c, "sleep 1; echo prestop >> /data/log"]}}
  - name: broken
    image: busybox
    command: [sleep, "3600"]
    lifecycle:
      preStop:
        exec: {{command: [sh, -c, "exit 7"]}}
"#,
            data = data.path().display()
        ),
    );
    let log = data.path().join("log");
    agent.wait(60, "hooked running", || {
        let p = k.get_json(&["pod", "hooked"]);
        (p["status"]["phase"] == "Running" && std::fs::read_to_string(&log).is_ok()).then_some(())
    });
    let t0 = Instant::now();
    let out = k
        .output(&["delete", "pod", "hooked", "--timeout=60s"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let took = t0.elapsed();
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        ["started", "prestop", "TERM"],
        "the hook ran before SIGTERM"
    );
    // The hook took a second; the broken container's sleep ignores
    // SIGTERM as PID 1 and waits out the grace period.
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hooked,reason=FailedPreStopHook",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(
        events.contains("broken") && events.contains("exited with 7"),
        "{events:?}"
    );
}
