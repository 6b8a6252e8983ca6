//! Running one test binary under a deadline: its own process group, its
//! output echoed and tallied, and everything it started killed when the
//! deadline passes or the user presses Ctrl-C.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The process group of the binary running now, for the signal handler.
pub(super) static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// Ctrl-C reaches only the terminal's foreground group, which the binaries
/// (in groups of their own) are not in: take them down too.
pub(super) extern "C" fn on_signal(sig: libc::c_int) {
    let group = RUNNING_GROUP.load(Ordering::SeqCst);
    // SAFETY: kill and _exit are async-signal-safe.
    unsafe {
        if group > 0 {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(128 + sig);
    }
}

/// What running one binary came to.
pub(super) struct Outcome {
    pub(super) name: String,
    pub(super) took: Duration,
    pub(super) passed: u64,
    pub(super) failed: u64,
    /// Why the binary failed beyond its failed tests, if it did.
    pub(super) trouble: Option<String>,
}

/// Runs `cmd` in a process group of its own, echoing and tallying libtest's
/// output; past `timeout` kills the whole group and names what had not finished.
pub(super) fn watch(
    name: &str,
    mut cmd: Command,
    timeout: Duration,
    mut unfinished: BTreeSet<String>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {name}: {e}"))?;
    RUNNING_GROUP.store(child.id() as i32, Ordering::SeqCst);
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut passed, mut failed) = (0, 0);
    let mut slow = BTreeSet::new();
    let mut timed_out = false;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                println!("{line}");
                tally(&line, &mut passed, &mut failed);
                if let Some(test) = finished_test(&line) {
                    unfinished.remove(test);
                } else if let Some(test) = line
                    .strip_prefix("test ")
                    .and_then(|l| l.strip_suffix(" has been running for over 60 seconds"))
                {
                    slow.insert(test.to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                kill_tree(child.id() as i32);
                break;
            }
        }
    }
    let status = child.wait()?;
    RUNNING_GROUP.store(0, Ordering::SeqCst);
    let _ = reader.join();
    let took = started.elapsed();
    let trouble = if timed_out {
        // Every test still open counts as failed, the ones libtest said were
        // slow first: with a hang those are the ones that started.
        let running: Vec<&String> = slow.iter().filter(|t| unfinished.contains(*t)).collect();
        let waiting: Vec<&String> = unfinished.iter().filter(|t| !slow.contains(*t)).collect();
        let mut why = format!(
            "{name} passed its deadline of {}s and was killed",
            timeout.as_secs()
        );
        if !running.is_empty() {
            why += &format!("; still running: {}", join(&running));
        }
        if !waiting.is_empty() {
            why += &format!("; not finished: {}", join(&waiting));
        }
        eprintln!("error: {why}");
        failed += unfinished.len().max(1) as u64;
        // Killed tests could not remove their namespaces and pins.
        sweep_stale_test_namespaces();
        Some(why)
    } else if !status.success() && failed == 0 {
        let why = format!("{name} exited with {status} without a failed test");
        eprintln!("error: {why}");
        failed += 1;
        Some(why)
    } else {
        None
    };
    Ok(Outcome {
        name: name.to_string(),
        took,
        passed,
        failed,
        trouble,
    })
}

/// Removes network namespaces and bpffs pin directories left by test
/// processes that were killed before their clean-up ran (names
/// `kt<pid>-…` whose pid is gone).
pub(super) fn sweep_stale_test_namespaces() {
    let stale = |name: &str| {
        name.strip_prefix("kt")
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| u32::from_str_radix(p, 36).ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        }
    }
    // Pinned links detach when their pins go; pinned maps are freed.
    for entry in std::fs::read_dir("/sys/fs/bpf/kestrel")
        .into_iter()
        .flatten()
        .flatten()
    {
        if stale(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Kills a test binary and everything it started. Its children (API
/// servers, etcd, agents) share its process group; processes that left the
/// group for a session of their own (the agents' runtime helpers and
/// containers) are found by parentage first, while the binary still lives
/// to link them to it.
pub(super) fn kill_tree(pid: i32) {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((p, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    // SAFETY: kill has no memory preconditions; every target descends from
    // the binary this run started.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        for p in tree {
            libc::kill(p, libc::SIGKILL);
        }
    }
}

pub(super) fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The test a libtest line reports as done (`test NAME ... ok`).
pub(super) fn finished_test(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.rsplit_once(" ... ")?;
    ["ok", "FAILED", "ignored"]
        .iter()
        .any(|r| result.starts_with(r))
        .then_some(name)
}

/// Adds the counts of a `test result:` line.
pub(super) fn tally(line: &str, passed: &mut u64, failed: &mut u64) {
    let Some(rest) = line.strip_prefix("test result: ") else {
        return;
    };
    let count = |word: &str| -> u64 {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    *passed += count(" passed");
    *failed += count(" failed");
}
