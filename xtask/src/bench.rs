//! `cargo xtask bench <what>`: builds the release binaries and runs a
//! benchmark program from `tests/src/bin/`. Each writes a Markdown table to
//! stdout and to `target/bench/<what>.md`; `bench all` runs them one after
//! another and joins their tables into `target/bench/report.md`.

use std::path::PathBuf;
use std::process::Command;

use clap::Subcommand;

use crate::util;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Exit non-zero when the benchmark misses a target it printed (a row
    /// whose `met` column says no).
    #[arg(long, global = true)]
    check: bool,
    #[command(subcommand)]
    what: Bench,
}

#[derive(Subcommand)]
pub enum Bench {
    /// The API server against raw etcd: creates (closed and open loop),
    /// gets, lists and watch delivery. `-- --help` lists its options.
    Apiserver {
        /// Options for the bench program, e.g. `--duration 3 --concurrency 8`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The scheduler on 1,000 and 5,000 hollow nodes: pods/s, where the
    /// time goes, and create-to-bound latency. `-- --help` lists its options.
    Scheduler {
        /// Options for the bench program, e.g. `--nodes 1000 --pods 2000`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Pod start-up on a real agent: one pod, 100 at once, agent memory,
    /// against the runtime helper alone. Needs root.
    Pods {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Pod network: iperf3 throughput, TCP_RR and TCP_CRR on a plain veth
    /// pair, the eBPF datapath (one node, two nodes) and the CNI bridge
    /// plugin; a table and `target/bench/net.png`. Needs root.
    Net {
        /// Options for the bench program, e.g. `--duration 3 --rounds 2`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// ClusterIPs by service count (1, 1,000, 5,000, 10,000): TCP_CRR with
    /// connect() latency, TCP_RR and throughput through the eBPF socket
    /// load balancer, straight to the pod, and through kube-proxy's
    /// iptables and nftables rules; a table and `target/bench/services.png`.
    /// Needs root.
    Services {
        /// Options for the bench program, e.g. `--sizes 1,1000 --rounds 1`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Job controller on hollow nodes: a Job of 1,000 completions
    /// (parallelism 50) against a Deployment of 1,000 replicas, pods/s and
    /// their ratio.
    Jobs {
        /// Options for the bench program, e.g. `--pods 500 --parallelism 20`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// NetworkPolicy by policy count (0, 100, 1,000, 10,000): TCP_CRR and
    /// connect() latency pod to pod against kube-router's iptables chains,
    /// agent memory, and create-to-enforced time on every node. Needs root.
    Policy {
        /// Options for the bench program, e.g. `--sizes 0,100,1000 --rounds 1`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The agent's TC programs per packet, decision by decision, timed in
    /// the kernel with BPF_PROG_TEST_RUN against a counter-only program.
    /// Needs root.
    Ebpf {
        /// Options for the bench program, e.g. `--runs 20000 --rounds 3`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every benchmark above with its defaults, one after another (they
    /// would disturb each other's numbers side by side), then one report:
    /// `target/bench/report.md` with each table and the charts. Needs root.
    All,
}

/// The benchmarks `bench all` runs, by the name of their report.
const ALL: [&str; 6] = ["apiserver", "scheduler", "pods", "net", "services", "ebpf"];

/// `$CARGO_TARGET_DIR` or the workspace's `target/`, where cargo puts the binaries.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => util::root().join(d),
        None => util::root().join("target"),
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let names: Vec<&str> = match &args.what {
        Bench::All => ALL.to_vec(),
        Bench::Apiserver { .. } => vec!["apiserver"],
        Bench::Scheduler { .. } => vec!["scheduler"],
        Bench::Pods { .. } => vec!["pods"],
        Bench::Net { .. } => vec!["net"],
        Bench::Services { .. } => vec!["services"],
        Bench::Jobs { .. } => vec!["jobs"],
        Bench::Policy { .. } => vec!["policy"],
        Bench::Ebpf { .. } => vec!["ebpf"],
    };
    if args.check {
        // A report left by an earlier run must not pass for this one's.
        for name in &names {
            let _ = std::fs::remove_file(target_dir().join("bench").join(format!("{name}.md")));
        }
    }
    let ran = match args.what {
        Bench::All => all(),
        bench => run_one(bench),
    };
    if args.check {
        let mut missed = Vec::new();
        for name in &names {
            let path = target_dir().join("bench").join(format!("{name}.md"));
            // A benchmark that failed has said so; its missing report is not a miss.
            if let Ok(report) = std::fs::read_to_string(&path) {
                missed.extend(
                    missed_targets(&report)
                        .into_iter()
                        .map(|m| format!("{name}: {m}")),
                );
            }
        }
        if !missed.is_empty() {
            for m in &missed {
                eprintln!("missed: {m}");
            }
            ran?;
            anyhow::bail!("{} target(s) missed", missed.len());
        }
        util::step("every target the benchmarks print was met");
    }
    ran
}

/// The rows of the report's tables whose `met` column says no, by their
/// first cell.
fn missed_targets(report: &str) -> Vec<String> {
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let mut met_column = None;
    let mut missed = Vec::new();
    for line in report.lines() {
        if !line.trim_start().starts_with('|') {
            met_column = None;
            continue;
        }
        let row = cells(line);
        if row.iter().all(|c| c.chars().all(|ch| "-:".contains(ch))) {
            continue;
        }
        match met_column {
            None => met_column = Some(row.iter().position(|c| c == "met")),
            Some(Some(i)) => {
                if row.get(i).is_some_and(|c| c.trim_matches('*') == "no") {
                    missed.push(row.join(" | "));
                }
            }
            Some(None) => {}
        }
    }
    missed
}

impl BenchArgs {
    #[cfg(test)]
    pub fn check(&self) -> bool {
        self.check
    }
}

fn run_one(bench: Bench) -> anyhow::Result<()> {
    anyhow::ensure!(
        util::succeeds(Command::new("etcd").arg("--version")),
        "etcd is not installed: run `cargo xtask setup` first"
    );
    util::step("building the release binaries");
    let mut build = util::cargo_command();
    build
        .args([
            "build",
            "--release",
            "-p",
            "kestrel-control-plane",
            "-p",
            "kestrel-agent",
        ])
        .args(["-p", "kestrel-tests", "--bins"]);
    util::run(&mut build)?;
    let release = target_dir().join("release");
    match bench {
        Bench::Apiserver { args } => {
            util::step("running bench-apiserver");
            let mut cmd = Command::new(release.join("bench-apiserver"));
            if !args.iter().any(|a| a.starts_with("--apiserver-bin")) {
                cmd.arg("--apiserver-bin")
                    .arg(release.join("control-plane"));
            }
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::Pods { args } => {
            util::step("running bench-pods");
            let mut cmd = Command::new(release.join("bench-pods"));
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::Net { args } => {
            util::step("running bench-net");
            let mut cmd = Command::new(release.join("bench-net"));
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::Policy { args } => {
            util::step("running bench-policy");
            let mut cmd = Command::new(release.join("bench-policy"));
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::Ebpf { args } => {
            util::step("running bench-ebpf");
            let mut cmd = Command::new(release.join("bench-ebpf"));
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::Services { args } => {
            util::step("running bench-services");
            let mut cmd = Command::new(release.join("bench-services"));
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::Scheduler { args } => {
            util::step("running bench-scheduler");
            let mut cmd = Command::new(release.join("bench-scheduler"));
            if !args.iter().any(|a| a.starts_with("--control-plane-bin")) {
                cmd.arg("--control-plane-bin")
                    .arg(release.join("control-plane"));
            }
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::Jobs { args } => {
            util::step("running bench-jobs");
            let mut cmd = Command::new(release.join("bench-jobs"));
            if !args.iter().any(|a| a.starts_with("--control-plane-bin")) {
                cmd.arg("--control-plane-bin")
                    .arg(release.join("control-plane"));
            }
            util::run(cmd.args(&args).current_dir(util::root()))
        }
        Bench::All => unreachable!("handled above"),
    }
}

/// `bench all`: runs each benchmark, then writes the joint report. A
/// benchmark that fails is named in the report and the others still run.
fn all() -> anyhow::Result<()> {
    let dir = target_dir().join("bench");
    let mut failed = Vec::new();
    for name in ALL {
        let _ = std::fs::remove_file(dir.join(format!("{name}.md")));
        let args = Vec::new();
        let bench = match name {
            "apiserver" => Bench::Apiserver { args },
            "scheduler" => Bench::Scheduler { args },
            "pods" => Bench::Pods { args },
            "net" => Bench::Net { args },
            "ebpf" => Bench::Ebpf { args },
            _ => Bench::Services { args },
        };
        if let Err(e) = run_one(bench) {
            eprintln!("bench {name} failed: {e:#}");
            failed.push(name);
        }
    }
    let mut report = String::from(
        "# kestrel benchmarks\n\nEvery figure below was measured in this one run, \
         each against the baseline its table names (raw etcd, the runtime \
         helper alone, a plain veth pair, the CNI bridge plugin, kube-proxy's rules).\n",
    );
    for name in ALL {
        report += &format!("\n## {name}\n\n");
        match std::fs::read_to_string(dir.join(format!("{name}.md"))) {
            Ok(table) => report += &table,
            Err(_) => report += "(no result: the benchmark failed, see its output)\n",
        }
        let chart = dir.join(format!("{name}.png"));
        if chart.exists() {
            report += &format!("\n![{name}]({name}.png)\n");
        }
    }
    let out = dir.join("report.md");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&out, report)?;
    util::step(&format!("report written to {}", out.display()));
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_column_saying_no_is_a_miss() {
        let report = "| pods | ms |\n|---|---:|\n| no | 3 |\n\n\
                      | ratio | measured | target | met |\n|---|---:|---:|---|\n\
                      | a ÷ b | 0.900 | ≥ 0.95 | **no** |\n| c ÷ d | 1.2 | ≥ 1.10 | yes |\n| e | 1 | – |  |\n";
        assert_eq!(
            missed_targets(report),
            vec!["a ÷ b | 0.900 | ≥ 0.95 | **no**"]
        );
    }
}
