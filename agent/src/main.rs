//! `agent`: the node agent. Today it loads and inspects the eBPF object;
//! node registration and pods come next.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Node agent: pods with libcontainer, networking with eBPF"
)]
struct Cli {
    /// Load this eBPF object instead of the one embedded at build time.
    #[arg(long, global = true)]
    ebpf_object: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: register this node and report it.
    Run(Box<kestrel_agent::config::RunArgs>),
    /// The runtime helper the agent starts to make libcontainer calls
    /// (internal: requests on stdin, replies on stdout).
    #[command(hide = true)]
    RuntimeHelper {
        /// Where container state lives.
        #[arg(long)]
        root: PathBuf,
        /// The unix socket the agent connects to.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Inspect the eBPF datapath.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
}

#[derive(Subcommand)]
enum BpfCommand {
    /// Load the eBPF object into the kernel (needs root), list its programs
    /// and maps, and unload it: a check that this kernel accepts it.
    Check,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        // Before any runtime or thread exists: libcontainer forks.
        Command::RuntimeHelper { root, socket } => {
            kestrel_agent::runtime::helper::serve(root, socket)
        }
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(kestrel_agent::run(*args)),
        Command::Bpf {
            command: BpfCommand::Check,
        } => {
            let object = kestrel_agent::ebpf::object(cli.ebpf_object.as_deref())?;
            let report = kestrel_agent::ebpf::check(&object)?;
            print!("{report}");
            Ok(())
        }
    }
}
