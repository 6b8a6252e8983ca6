//! `cargo xtask test [ARGS]`: builds every test binary with cargo, then runs
//! each one itself, one after another, so that each gets a deadline and a
//! line in the timing table.
//!
//! Why not `cargo test` straight: it cannot stop a binary that hangs, and a
//! hung test would eat CI's whole budget with no word of which test it was.
//! Why not nextest: it runs every test in a process of its own, and the tests
//! of a binary share state (one API server, one etcd per binary) that would
//! then start once per test. Binaries still run one at a time, as under
//! `cargo test`, and the tests inside a binary keep libtest's threads.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util;

mod supervise;

use supervise::{on_signal, sweep_stale_test_namespaces, watch, Outcome};

/// How long one test binary may run when `KESTREL_TEST_TIMEOUT` (seconds)
/// does not say: the slowest binaries (the nspawn and cluster tests) take a
/// few minutes on a loaded 2-core machine; a hang should not take CI's 45.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// `cargo test` options that take a value in the next argument.
const VALUE_FLAGS: &[&str] = &[
    "-p",
    "--package",
    "--exclude",
    "--test",
    "--bin",
    "--example",
    "--bench",
    "-F",
    "--features",
    "-j",
    "--jobs",
    "--target",
    "--target-dir",
    "--profile",
    "--manifest-path",
    "--color",
    "--config",
    "-Z",
];

/// `cargo test` options that choose targets; `--doc` cannot be mixed with them.
const TARGET_FLAGS: &[&str] = &[
    "--lib",
    "--bins",
    "--bin",
    "--tests",
    "--test",
    "--examples",
    "--example",
    "--benches",
    "--bench",
    "--all-targets",
];

/// The arguments of `cargo xtask test`, split as `cargo test` splits them.
#[derive(Debug, Default, PartialEq)]
struct Args {
    /// For cargo: which packages and targets, features...
    cargo: Vec<String>,
    /// For each test binary: the name filter and everything after `--`.
    binary: Vec<String>,
}

fn split_args(args: &[String]) -> Args {
    let mut out = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.binary.extend(it.by_ref().cloned());
        } else if VALUE_FLAGS.contains(&arg.as_str()) {
            out.cargo.push(arg.clone());
            out.cargo.extend(it.next().cloned());
        } else if arg.starts_with('-') {
            out.cargo.push(arg.clone());
        } else {
            // cargo test's TESTNAME: a filter for the binaries.
            out.binary.insert(0, arg.clone());
        }
    }
    out
}

/// One test binary cargo built.
struct Binary {
    /// `package/target`, e.g. `kestrel-tests/dist_install`.
    name: String,
    path: PathBuf,
    /// The package's directory: cargo runs tests there.
    dir: PathBuf,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    crate::setup::run(false)?;
    sweep_stale_test_namespaces();
    let args = split_args(args);
    util::step("building the workspace");
    util::cargo(&["build", "--workspace", "--all-targets"])
        .map_err(|e| anyhow::anyhow!("{e} ({})", util::resources()))?;
    util::step("building the test binaries");
    let binaries = build(&args.cargo)?;
    let timeout = timeout()?;
    util::step(&format!(
        "running {} test binaries, {}s each at most",
        binaries.len(),
        timeout.as_secs()
    ));
    // SAFETY: the handler only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for binary in &binaries {
        outcomes.push(run_binary(binary, &args.binary, timeout)?);
    }
    // Only over the whole workspace: `--doc` refuses target options, and a
    // package without a library.
    if !args.cargo.iter().any(|a| {
        let flag = a.split('=').next().unwrap_or(a);
        TARGET_FLAGS.contains(&flag) || ["-p", "--package"].contains(&flag)
    }) {
        outcomes.push(doc_tests(&args, timeout)?);
    }
    report(&outcomes, started.elapsed());
    let passed: u64 = outcomes.iter().map(|o| o.passed).sum();
    let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
    println!("tests: {passed} passed, {failed} failed");
    let troubled = outcomes.iter().filter(|o| o.trouble.is_some()).count();
    anyhow::ensure!(
        failed == 0 && troubled == 0,
        "{failed} test(s) failed{}",
        if troubled > 0 {
            format!(", {troubled} binary(ies) did not finish cleanly")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn timeout() -> anyhow::Result<Duration> {
    match std::env::var("KESTREL_TEST_TIMEOUT") {
        Ok(s) => {
            let secs: u64 = s
                .parse()
                .map_err(|_| anyhow::anyhow!("KESTREL_TEST_TIMEOUT={s:?} is not seconds"))?;
            Ok(Duration::from_secs(secs))
        }
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

/// `cargo test --no-run`, reading the test executables from cargo's JSON messages.
fn build(cargo_args: &[String]) -> anyhow::Result<Vec<Binary>> {
    let mut cmd = util::cargo_command();
    cmd.args(["test", "--no-run", "--message-format=json"]);
    // `--workspace` would win over `-p`.
    if !cargo_args
        .iter()
        .any(|a| ["-p", "--package"].contains(&a.split('=').next().unwrap_or(a)))
    {
        cmd.arg("--workspace");
    }
    cmd.args(cargo_args).stdout(Stdio::piped());
    let output = cmd
        .spawn()
        .and_then(|c| c.wait_with_output())
        .map_err(|e| anyhow::anyhow!("cannot run cargo: {e}"))?;
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // With JSON messages the compiler's errors and warnings come here,
        // not on stderr.
        if msg["reason"] == "compiler-message" {
            if let Some(text) = msg["message"]["rendered"].as_str() {
                eprint!("{text}");
            }
            continue;
        }
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(path) = msg["executable"].as_str() else {
            continue;
        };
        let package = msg["package_id"]
            .as_str()
            .map(package_name)
            .unwrap_or_default();
        let target = msg["target"]["name"].as_str().unwrap_or_default();
        let kind = msg["target"]["kind"][0].as_str().unwrap_or_default();
        let name = match kind {
            "test" => format!("{package}/{target}"),
            _ => format!("{package} ({kind} {target})"),
        };
        let dir = msg["manifest_path"]
            .as_str()
            .map(PathBuf::from)
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_else(util::root);
        binaries.push(Binary {
            name,
            path: PathBuf::from(path),
            dir,
        });
    }
    anyhow::ensure!(
        output.status.success(),
        "cargo test --no-run failed ({}; {})",
        output.status,
        util::resources()
    );
    // Cargo reports them as they finish building; run them in a stable order.
    binaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(binaries)
}

/// The package's name from a cargo package id, either
/// `path+file:///work/tests#kestrel-tests@0.1.0` or `kestrel-tests 0.1.0 (path+file://...)`.
fn package_name(id: &str) -> String {
    if let Some((_, frag)) = id.rsplit_once('#') {
        let name = frag.split('@').next().unwrap_or(frag);
        // `...#0.1.0` when the name is the directory's.
        if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            let path = id.split('#').next().unwrap_or(id);
            return path.rsplit('/').next().unwrap_or(path).to_string();
        }
        return name.to_string();
    }
    id.split_whitespace().next().unwrap_or(id).to_string()
}

/// Runs one binary under the deadline, echoing its output.
fn run_binary(binary: &Binary, args: &[String], timeout: Duration) -> anyhow::Result<Outcome> {
    eprintln!("==> {}", binary.name);
    // What the binary holds under this filter, to name the tests that never
    // finished if it has to be stopped.
    let listed = list_tests(binary, args);
    let mut cmd = Command::new(&binary.path);
    cmd.args(args).current_dir(&binary.dir);
    watch(&binary.name, cmd, timeout, listed)
}

/// `BINARY --list FILTER`: the names of the tests that would run.
fn list_tests(binary: &Binary, args: &[String]) -> BTreeSet<String> {
    let output = Command::new(&binary.path)
        .args(args)
        .arg("--list")
        .current_dir(&binary.dir)
        .stderr(Stdio::null())
        .output();
    let Ok(output) = output else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(String::from)
        .collect()
}

/// `cargo test --doc` under the same deadline. It builds as it runs, so its
/// time includes rustdoc's.
fn doc_tests(args: &Args, timeout: Duration) -> anyhow::Result<Outcome> {
    eprintln!("==> doc tests");
    let mut cmd = util::cargo_command();
    cmd.args(["test", "--workspace", "--doc"]).args(&args.cargo);
    if !args.binary.is_empty() {
        cmd.arg("--").args(&args.binary);
    }
    watch("doc tests", cmd, timeout, BTreeSet::new())
}

/// The timing table, slowest first, and the total.
fn report(outcomes: &[Outcome], total: Duration) {
    let mut rows: Vec<&Outcome> = outcomes.iter().collect();
    rows.sort_by_key(|o| std::cmp::Reverse(o.took));
    let width = rows.iter().map(|o| o.name.len()).max().unwrap_or(0).max(6);
    println!();
    println!(
        "{:<width$}  {:>8}  {:>6}  {:>6}",
        "binary", "time", "passed", "failed"
    );
    for o in &rows {
        println!(
            "{:<width$}  {:>8}  {:>6}  {:>6}{}",
            o.name,
            seconds(o.took),
            o.passed,
            o.failed,
            if o.trouble.is_some() { "  (!)" } else { "" }
        );
    }
    println!("{:<width$}  {:>8}", "total", seconds(total));
    for o in rows.iter().filter(|o| o.trouble.is_some()) {
        println!("(!) {}", o.trouble.as_deref().unwrap_or_default());
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::supervise::{finished_test, kill_tree, tally};
    use super::*;
    use std::os::unix::process::CommandExt;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_filter_and_the_args_after_dashes_go_to_the_binaries() {
        let args = split_args(&strings(&[
            "-p",
            "kestrel-tests",
            "--test",
            "dist",
            "nspawn",
            "--",
            "--nocapture",
        ]));
        assert_eq!(
            args.cargo,
            strings(&["-p", "kestrel-tests", "--test", "dist"])
        );
        assert_eq!(args.binary, strings(&["nspawn", "--nocapture"]));
        let args = split_args(&strings(&["--release"]));
        assert_eq!(args.cargo, strings(&["--release"]));
        assert!(args.binary.is_empty());
    }

    #[test]
    fn libtest_lines_are_read() {
        assert_eq!(finished_test("test a::b ... ok"), Some("a::b"));
        assert_eq!(finished_test("test a ... FAILED"), Some("a"));
        assert_eq!(
            finished_test("test a has been running for over 60 seconds"),
            None
        );
        let (mut p, mut f) = (0, 0);
        tally(
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            &mut p,
            &mut f,
        );
        assert_eq!((p, f), (3, 2));
    }

    #[test]
    fn a_killed_binary_takes_along_what_left_its_group() {
        // The grandchild starts a session of its own, as the agents'
        // runtime helpers do, and writes its pid where the test reads it.
        let dir = tempfile_dir();
        let pid_file = dir.join("pid");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("setsid sh -c 'echo $$ > \"$1\"; exec sleep 300' sh \"$1\" & exec sleep 300")
            .arg("sh")
            .arg(&pid_file)
            .process_group(0)
            .spawn()
            .expect("sh");
        let grandchild: i32 = (0..100)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
            })
            .expect("the grandchild wrote its pid");
        kill_tree(child.id() as i32);
        child.wait().expect("wait");
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(gone, "pid {grandchild} outlived the kill");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn package_names_from_ids() {
        assert_eq!(
            package_name("path+file:///w/tests#kestrel-tests@0.1.0"),
            "kestrel-tests"
        );
        assert_eq!(package_name("path+file:///w/xtask#0.1.0"), "xtask");
        assert_eq!(package_name("xtask 0.1.0 (path+file:///w/xtask)"), "xtask");
    }
}
