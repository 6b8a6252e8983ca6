//! Project tasks: `cargo xtask <task>`. Run `cargo xtask --help`.

mod bench;
mod cluster;
mod dist;
mod ebpf;
mod fuzz;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set-up, eBPF build, local clusters and tests"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs on this Debian machine (idempotent; needs root).
    Setup {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build the eBPF programs in agent-ebpf with the pinned nightly.
    BuildEbpf {
        /// Use the release profile (both profiles are optimised; release adds LTO).
        #[arg(long)]
        release: bool,
    },
    /// Bring up a cluster: etcd, the control plane and the agent(s); one
    /// node on this machine, or `--nodes N` in network namespaces.
    Up(cluster::UpArgs),
    /// Local images for the cluster's nodes.
    #[command(subcommand)]
    Image(cluster::ImageTask),
    /// Stop the cluster that `up` started and remove what it made at run time.
    Down(cluster::DownArgs),
    /// Build in release and run a benchmark; writes target/bench/<what>.md.
    Bench(bench::BenchArgs),
    /// Build a release for bare-metal machines: binaries, systemd units,
    /// configuration and install.sh in target/dist/kestrel-<version>-<arch>/
    /// and a .tar.gz of it.
    Dist(dist::DistArgs),
    /// Run the libFuzzer targets in fuzz/ (nightly, cargo-fuzz) for a
    /// bounded time each; new inputs land in fuzz/corpus/<target>.
    Fuzz(fuzz::FuzzArgs),
    /// Run every test: set-up first, then each test binary of the workspace
    /// under a deadline (`KESTREL_TEST_TIMEOUT` seconds, 900 by default),
    /// with a table of how long each took.
    Test {
        /// Arguments as for `cargo test`: `-p PACKAGE`, `--test NAME`, a test
        /// name filter, and after `--` options for the test binaries.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { check } => setup::run(check),
        Task::BuildEbpf { release } => ebpf::build(release).map(|path| {
            println!("eBPF object: {}", path.display());
        }),
        Task::Up(args) => cluster::up(args),
        Task::Down(args) => cluster::down(args),
        Task::Image(task) => cluster::image(task),
        Task::Bench(what) => bench::run(what),
        Task::Dist(args) => dist::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Test { args } => test::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_check_goes_after_the_benchmark_before_its_options() {
        let cli = Cli::try_parse_from(["xtask", "bench", "net", "--check", "--", "--rounds", "2"]);
        let Ok(Cli {
            task: Task::Bench(args),
        }) = cli
        else {
            panic!("not parsed as bench");
        };
        assert!(args.check());
    }
}
