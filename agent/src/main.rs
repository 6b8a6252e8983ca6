//! `agent`: the node agent, its runtime helper, and tools to look at a
//! node's images and eBPF datapath.

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
        /// A cgroup v2 directory to join first, so containers inherit it.
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// Stop every container of this node and remove what pods left behind
    /// (mounts, cgroups, sandboxes); images stay.
    Reset {
        #[arg(long, default_value = "/var/lib/kestrel/agent")]
        state_dir: PathBuf,
        #[arg(long, default_value = "/kestrel")]
        cgroup_root: String,
        /// The agent's bpffs directory, whose pinned maps and links go too
        /// (default: /sys/fs/bpf/kestrel/HOSTNAME).
        #[arg(long)]
        bpffs_dir: Option<PathBuf>,
    },
    /// Manage the node's images.
    Image {
        /// The agent's state directory (images live in its `images/`).
        #[arg(long, global = true, default_value = "/var/lib/kestrel/agent")]
        state_dir: PathBuf,
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Inspect the eBPF datapath.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import images from a `docker save` or OCI image archive.
    Import { archive: PathBuf },
    /// List the images on this node.
    Ls,
    /// Remove an image (its layers go when no other image uses them).
    Rm { reference: String },
    /// Push the image in a `docker save` or OCI archive to a registry
    /// under TARGET (`REGISTRY/NAME:TAG`, e.g. 10.99.0.1:5000/app:1).
    /// Leaves this node's images alone.
    Push {
        archive: PathBuf,
        target: String,
        /// A registry to push to over plain HTTP (repeatable); loopback
        /// registries always are.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// Write an OCI archive of a busybox image made from a static busybox
    /// binary (Debian's busybox-static), for clusters without a registry.
    BuildBusybox {
        /// Where to write the archive.
        out: PathBuf,
        #[arg(long, default_value = "docker.io/library/busybox:latest")]
        reference: String,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
}

#[derive(Subcommand)]
enum BpfCommand {
    /// Load the eBPF object into the kernel (needs root), list its programs
    /// and maps, and unload it: a check that this kernel accepts it.
    Check,
    /// Show this node's datapath: attached programs, pod endpoints,
    /// decision counters and the routes to other nodes.
    Status {
        /// The agent's bpffs directory (default:
        /// /sys/fs/bpf/kestrel/HOSTNAME).
        #[arg(long)]
        bpffs_dir: Option<PathBuf>,
        /// Look from this network namespace (a name under /run/netns or a
        /// path), for nodes that are namespaces: the routes and interfaces
        /// are there. Unlike `ip netns exec`, this keeps the bpffs mount.
        #[arg(long)]
        netns: Option<PathBuf>,
    },
    /// Show this node's NetworkPolicy: each local pod's isolation, the
    /// peers and ports it allows, and its allowed and denied new flows.
    Policy {
        /// The agent's bpffs directory (default:
        /// /sys/fs/bpf/kestrel/HOSTNAME).
        #[arg(long)]
        bpffs_dir: Option<PathBuf>,
    },
    /// Show this node's service load balancer: frontends with their
    /// backends, counters, socket translations, UDP flows and client
    /// affinity.
    Lb {
        /// The agent's bpffs directory (default:
        /// /sys/fs/bpf/kestrel/HOSTNAME).
        #[arg(long)]
        bpffs_dir: Option<PathBuf>,
    },
}

fn default_pin_dir() -> anyhow::Result<PathBuf> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(kestrel_agent::network::default_pin_dir(
        &host.trim().to_lowercase(),
    ))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One TLS provider for the whole process (the registry client asks for
    // the process default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        // Before any runtime or thread exists: libcontainer forks.
        Command::RuntimeHelper {
            root,
            socket,
            cgroup,
        } => {
            if let Some(dir) = cgroup {
                // Containers need not be there to run, only to reach
                // ClusterIPs: a failure is reported, not fatal.
                if let Err(e) = kestrel_agent::services::cgroup::join(&dir) {
                    tracing::error!("{e}; pods will not reach ClusterIPs");
                }
            }
            kestrel_agent::runtime::helper::serve(root, socket)
        }
        Command::Run(args) => {
            // glibc gives each thread that allocates an arena of its own (up
            // to eight per CPU), and each keeps pages resident; the agent's
            // allocations are small, and two arenas hold them.
            // SAFETY: mallopt only tunes the allocator, before any thread.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
            tokio::runtime::Runtime::new()?.block_on(kestrel_agent::run(*args))
        }
        Command::Reset {
            state_dir,
            cgroup_root,
            bpffs_dir,
        } => {
            let pins = match bpffs_dir {
                Some(d) => d,
                None => default_pin_dir()?,
            };
            tokio::runtime::Runtime::new()?.block_on(kestrel_agent::reset(
                &std::env::current_exe()?,
                &state_dir,
                &cgroup_root,
                Some(&pins),
            ))
        }
        Command::Image { state_dir, command } => {
            use kestrel_agent::image::{build, ImageStore};
            let store = || ImageStore::open(&state_dir.join("images"));
            match command {
                ImageCommand::Import { archive } => {
                    for r in store()?.import(&archive)? {
                        println!("imported {r}");
                    }
                }
                ImageCommand::Ls => {
                    println!("{:<60} {:<20} {:>10}", "IMAGE", "DIGEST", "SIZE");
                    for i in store()?.list()? {
                        let short: String = i
                            .digest
                            .trim_start_matches("sha256:")
                            .chars()
                            .take(12)
                            .collect();
                        println!("{:<60} {:<20} {:>10}", i.reference, short, i.size);
                    }
                }
                ImageCommand::Rm { reference } => {
                    if !store()?.remove(&reference)? {
                        anyhow::bail!("no image {reference:?} on this node");
                    }
                    println!("removed {reference}");
                }
                ImageCommand::Push {
                    archive,
                    target,
                    insecure_registries,
                } => {
                    // A store of its own, so the push reads exactly what the
                    // archive holds, and the node's store is not touched.
                    let scratch =
                        std::env::temp_dir().join(format!("kestrel-push-{}", std::process::id()));
                    let result = (|| {
                        let store = ImageStore::open(&scratch)?;
                        let refs = store.import(&archive)?;
                        let [source] = refs.as_slice() else {
                            anyhow::bail!(
                                "{} holds {} images; push takes an archive of one",
                                archive.display(),
                                refs.len()
                            );
                        };
                        let digest = tokio::runtime::Runtime::new()?
                            .block_on(kestrel_agent::image::push::push(
                                &store,
                                source,
                                &target,
                                &insecure_registries,
                            ))
                            .map_err(anyhow::Error::msg)?;
                        println!("pushed {target} ({digest})");
                        Ok(())
                    })();
                    let _ = std::fs::remove_dir_all(&scratch);
                    result?;
                }
                ImageCommand::BuildBusybox {
                    out,
                    reference,
                    busybox,
                } => {
                    build::busybox_archive(&busybox, &out, &reference)?;
                    println!("wrote {}", out.display());
                }
            }
            Ok(())
        }
        Command::Bpf {
            command: BpfCommand::Check,
        } => {
            let object = kestrel_agent::ebpf::object(cli.ebpf_object.as_deref())?;
            let report = kestrel_agent::ebpf::check(&object)?;
            print!("{report}");
            Ok(())
        }
        Command::Bpf {
            command: BpfCommand::Status { bpffs_dir, netns },
        } => {
            if let Some(ns) = netns {
                let path = if ns.is_absolute() {
                    ns
                } else {
                    PathBuf::from("/run/netns").join(ns)
                };
                // Still single-threaded: the whole process moves.
                kestrel_agent::netns::enter(&path)?;
            }
            let pins = match bpffs_dir {
                Some(d) => d,
                None => default_pin_dir()?,
            };
            let report = tokio::runtime::Runtime::new()?
                .block_on(kestrel_agent::network::describe(&pins))?;
            print!("{report}");
            Ok(())
        }
        Command::Bpf {
            command: BpfCommand::Policy { bpffs_dir },
        } => {
            let pins = match bpffs_dir {
                Some(d) => d,
                None => default_pin_dir()?,
            };
            print!("{}", kestrel_agent::policy::describe::describe(&pins)?);
            Ok(())
        }
        Command::Bpf {
            command: BpfCommand::Lb { bpffs_dir },
        } => {
            let pins = match bpffs_dir {
                Some(d) => d,
                None => default_pin_dir()?,
            };
            print!("{}", kestrel_agent::services::describe(&pins)?);
            Ok(())
        }
    }
}
