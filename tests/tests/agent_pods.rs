//! The agent runs real pods with libcontainer, driven by the real kubectl:
//! completion, CrashLoopBackOff, OOMKilled, grace periods, and containers
//! that survive a `kill -9` of the agent.

use harness::terminal::Terminal;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::cluster::ControlPlane;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

/// Each test's node: a namespace on the control plane's segment with a
/// real agent in it.
type Agent = harness::node::Node;

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

/// `kubectl exec -it` gives the process a terminal in the container: it
/// is a tty of the container's own devpts with the user's size from the
/// start, keystrokes reach it (^C as a signal to the foreground job), a
/// resize of the user's terminal follows, and the exit code comes back as
/// kubectl's status.
#[test]
fn exec_on_a_terminal() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: shell}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: shell
    image: busybox
    command: [sleep, "3600"]
"#
    ));
    agent.wait(30, "shell running", || {
        let p = k.get_json(&["pod", "shell"]);
        (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
    });

    // A terminal from the first instruction: its name, the size of the
    // user's terminal, and the exit code.
    let t0 = Instant::now();
    let mut t = Terminal::spawn(
        &k,
        &[
            "exec",
            "-it",
            "shell",
            "--",
            "sh",
            "-c",
            "tty; stty size; exit 7",
        ],
        33,
        101,
    );
    let code = t.wait(30);
    let screen = t.screen();
    assert_eq!(code, Some(7), "{screen}\n{}", agent.log());
    let out = t.output();
    let tty = out.lines().next().unwrap_or("").trim();
    assert!(
        tty.starts_with("/dev/pts/") && tty["/dev/pts/".len()..].parse::<u32>().is_ok(),
        "tty printed {tty:?}\n{screen}"
    );
    assert!(out.contains("33 101"), "stty size\n{screen}");
    eprintln!("exec -it with exit 7 took {:?}", t0.elapsed());
    drop(t);

    // An interactive shell: a command typed in and its answer, then a
    // resize of the user's terminal, which the shell sees.
    let mut t = Terminal::spawn(&k, &["exec", "-it", "shell", "--", "sh"], 24, 80);
    assert!(t.expect(0, "# ", 30), "no prompt\n{}", t.screen());
    let mark = t.output().len();
    t.type_in("echo hi-$((1+1))\n");
    assert!(t.expect(mark, "hi-2", 10), "no answer\n{}", t.screen());
    t.resize(50, 132);
    // kubectl sends the new size when SIGWINCH reaches it; ask until the
    // shell sees it.
    let resized = wait_for(Duration::from_secs(10), || {
        let mark = t.output().len();
        t.type_in("stty size\n");
        t.expect(mark, "50 132", 1).then_some(())
    });
    assert!(resized.is_some(), "resize not seen\n{}", t.screen());
    // The PTY is the shell's controlling terminal: ^C interrupts the
    // foreground job, well before its 30 s are up.
    t.type_in("sleep 30\n");
    std::thread::sleep(Duration::from_millis(500));
    let mark = t.output().len();
    t.type_in("\x03");
    t.type_in("echo back-$((2+2))\n");
    assert!(
        t.expect(mark, "back-4", 10),
        "^C did not interrupt\n{}",
        t.screen()
    );
    t.type_in("exit\n");
    assert_eq!(t.wait(30), Some(0), "{}", t.screen());

    // The terminal sessions left nothing behind in the exec directory.
    let exec_dir = agent.state.path().join("exec");
    let left: Vec<_> = std::fs::read_dir(&exec_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", exec_dir.display());
    // Nor in the runtime's container directories: the process files and
    // console socket links of terminal execs.
    for c in std::fs::read_dir(agent.state.path().join("containers"))
        .unwrap()
        .flatten()
    {
        for e in std::fs::read_dir(c.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with("tenant-tty-") && !name.starts_with("kestrel-exec-"),
                "left in {}: {name}",
                c.path().display()
            );
        }
    }
}

/// `kubectl exec`, with and without a terminal, runs the command as the
/// container runs: as its user with its groups, in its working directory,
/// with its environment; and with its capabilities, no-new-privileges,
/// seccomp filter and open-files limit, which /proc shows the same for the
/// exec'd process as for the container's init. A non-root user can reopen
/// its stdio and its terminal by name, which it owns as under runc.
#[test]
fn exec_runs_as_the_containers_user() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: nonroot}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  securityContext: {{runAsUser: 1234, runAsGroup: 2345, supplementalGroups: [3456]}}
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    workingDir: /tmp
    env: [{{name: FOO, value: bar}}]
"#
    ));
    agent.wait(30, "nonroot running", || {
        let p = k.get_json(&["pod", "nonroot"]);
        (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
    });

    let t0 = Instant::now();
    let out = k
        .output(&[
            "exec",
            "nonroot",
            "--",
            "sh",
            "-c",
            "id; pwd; echo $FOO; echo reopened >/dev/stderr",
        ])
        .unwrap();
    eprintln!("exec as the container's user took {:?}", t0.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", agent.log());
    let lines: Vec<&str> = stdout.lines().collect();
    let id = lines.first().copied().unwrap_or("");
    assert!(
        id.starts_with("uid=1234 gid=2345 groups="),
        "id printed {id:?}"
    );
    // The container's groups, and none of the runtime's own.
    let mut groups: Vec<&str> = id["uid=1234 gid=2345 groups=".len()..].split(',').collect();
    groups.sort();
    assert_eq!(groups, ["2345", "3456"], "id printed {id:?}");
    assert_eq!(lines.get(1..), Some(&["/tmp", "bar"][..]), "{stdout}");
    assert_eq!(stderr.trim(), "reopened", "{stdout}");

    // Credentials, capabilities, no_new_privs, seccomp and rlimits: the
    // exec'd process's (/proc/self, grep's, which inherits them from the
    // shell) against the container's init's (/proc/1).
    let fields = "^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):";
    let script = format!(
        "for p in 1 self; do grep -E '{fields}' /proc/$p/status; \
         grep 'Max open files' /proc/$p/limits; echo --; done"
    );
    let out = k
        .run(&["exec", "nonroot", "--", "sh", "-c", &script])
        .unwrap();
    let halves: Vec<&str> = out.split("--\n").collect();
    assert_eq!(halves.len(), 3, "{out}");
    assert_eq!(halves[0].lines().count(), 11, "{out}");
    assert_eq!(halves[1], halves[0], "exec'd process vs init:\n{out}");
    assert!(halves[0].contains("NoNewPrivs:\t1"), "{out}");
    assert!(halves[0].contains("Seccomp:\t2"), "{out}");

    // On a terminal: the same user, a tty of the container's own, which
    // the user can reopen by name.
    let mut t = Terminal::spawn(
        &k,
        &[
            "exec",
            "-it",
            "nonroot",
            "--",
            "sh",
            "-c",
            "id -u; tty; echo reopened >\"$(tty)\"",
        ],
        24,
        80,
    );
    let code = t.wait(30);
    let screen = t.screen();
    assert_eq!(code, Some(0), "{screen}\n{}", agent.log());
    let out = t.output();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"1234"), "{screen}");
    let tty = lines.get(1).copied().unwrap_or("");
    assert!(
        tty.starts_with("/dev/pts/") && tty["/dev/pts/".len()..].parse::<u32>().is_ok(),
        "tty printed {tty:?}\n{screen}"
    );
    assert_eq!(lines.get(2), Some(&"reopened"), "{screen}");
    drop(t);

    // An interactive shell as that user: its prompt, a command and its
    // answer.
    let mut t = Terminal::spawn(&k, &["exec", "-it", "nonroot", "--", "sh"], 24, 80);
    assert!(t.expect(0, "$ ", 30), "no prompt\n{}", t.screen());
    let mark = t.output().len();
    t.type_in("echo $(id -u)-$(pwd)\n");
    assert!(t.expect(mark, "1234-/tmp", 10), "no answer\n{}", t.screen());
    t.type_in("exit\n");
    assert_eq!(t.wait(30), Some(0), "{}", t.screen());
}

/// Probes: a readiness probe keeps a pod out of Ready until its check
/// passes, and a failing liveness probe restarts the container.
#[test]
fn readiness_and_liveness_probes() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: gated}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'mkdir /www; echo ok > /www/index.html; httpd -p 8080 -h /www; sleep 3600']
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      exec: {{command: [test, -f, /tmp/ready]}}
      periodSeconds: 1
    livenessProbe:
      httpGet: {{path: /, port: http}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: sick}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    livenessProbe:
      tcpSocket: {{port: 9999}}
      periodSeconds: 1
      failureThreshold: 2
"#
    ));
    let ready = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"] == "True")
            .unwrap_or(false)
    };
    agent.wait(30, "gated running but not ready", || {
        let p = k.get_json(&["pod", "gated"]);
        (p["status"]["phase"] == "Running" && !ready(&p)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let p = k.get_json(&["pod", "gated"]);
    assert!(!ready(&p), "ready before its probe passed");
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"],
        0,
        "the HTTP liveness probe failed: {}",
        k.run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=gated"
        ])
        .unwrap_or_default()
    );
    k.run(&["exec", "gated", "--", "touch", "/tmp/ready"])
        .unwrap();
    agent.wait(15, "gated ready once /tmp/ready exists", || {
        ready(&k.get_json(&["pod", "gated"])).then_some(())
    });

    let sick = agent.wait(40, "sick restarted by its liveness probe", || {
        let p = k.get_json(&["pod", "sick"]);
        (p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1)
            .then_some(p)
    });
    assert_eq!(
        sick["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        137
    );
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sick",
        ])
        .unwrap();
    assert!(events.contains("Liveness probe failed"), "{events}");
}

/// Init containers run first and in order, and volumes reach containers:
/// an emptyDir shared between init and app containers, a configMap as
/// files, downward API labels, and environment from the pod's fields.
#[test]
fn init_containers_and_volumes() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{color: blue}}
---
apiVersion: v1
kind: Pod
metadata: {{name: layered, labels: {{tier: web}}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  initContainers:
  - name: first
    image: busybox
    command: [sh, -c, 'echo first > /work/order']
    volumeMounts: [{{name: work, mountPath: /work}}]
  - name: second
    image: busybox
    command: [sh, -c, 'echo second >> /work/order']
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'cat /work/order /config/color /info/labels; echo "pod=$POD ns=$NS"']
    env:
    - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: config, mountPath: /config, readOnly: true}}
    - {{name: info, mountPath: /info}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: settings}}}}
  - name: info
    downwardAPI:
      items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]
"#
    ));
    let p = agent.wait(30, "layered to complete", || {
        let p = k.get_json(&["pod", "layered"]);
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Succeeded", "{p}");
    let inits = p["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    assert!(inits
        .iter()
        .all(|c| c["state"]["terminated"]["reason"] == "Completed"));
    let logs = k.run(&["logs", "layered"]).unwrap();
    assert_eq!(
        logs,
        "first\nsecond\nbluetier=\"web\"\npod=layered ns=default\n"
    );
}

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
