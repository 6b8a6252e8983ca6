//! `kubectl exec` into a running container: on a terminal, and as the
//! container's own user, environment and restrictions.

use std::time::{Duration, Instant};

use harness::cluster::ControlPlane;
use harness::process::wait_for;
use harness::terminal::Terminal;

use crate::common::Agent;

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
