//! `control-plane`: the API server, scheduler and controller-manager.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "control-plane",
    version,
    about = "Kubernetes-compatible control plane over etcd"
)]
struct Cli {
    #[command(subcommand)]
    component: Component,
}

#[derive(Subcommand)]
enum Component {
    /// The API server: Kubernetes REST and watch over etcd.
    // Boxed: its flags outweigh every other command's.
    Apiserver(Box<kestrel_control_plane::apiserver::Config>),
    /// The scheduler: binds pending pods to nodes.
    Scheduler(kestrel_control_plane::scheduler::Config),
    /// The controller-manager: replication, deployments, nodes, endpoints,
    /// namespaces and garbage collection.
    ControllerManager(kestrel_control_plane::controllers::Config),
    /// Write a kubeconfig with a new client certificate signed by the
    /// cluster CA (e.g. for a node agent: --user system:node:NAME
    /// --group system:nodes).
    Kubeconfig {
        /// The API server's certificate directory (holds the CA).
        #[arg(long, default_value = "/var/lib/kestrel/pki")]
        cert_dir: std::path::PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        /// Where to write it (mode 0600).
        #[arg(long)]
        out: std::path::PathBuf,
        /// End the certificate's validity this many seconds from now
        /// (default: a year for nodes, unlimited for others).
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Make the cluster CA (ca.crt, ca.key) in --cert-dir unless one is
    /// there; the API server completes the directory on its first start.
    Ca {
        #[arg(long, default_value = "/var/lib/kestrel/pki")]
        cert_dir: std::path::PathBuf,
    },
    /// Write a new key and a certificate signed by the cluster CA to
    /// OUT.crt and OUT.key (mode 0600): for etcd members (--server
    /// --client, their addresses as --san) and the API server's etcd client.
    Certificate {
        #[arg(long, default_value = "/var/lib/kestrel/pki")]
        cert_dir: std::path::PathBuf,
        /// The subject's common name.
        #[arg(long)]
        cn: String,
        /// Organizations (groups) of the subject.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A DNS name or IP address the certificate is valid for (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Valid for TLS servers.
        #[arg(long)]
        server: bool,
        /// Valid for TLS clients.
        #[arg(long)]
        client: bool,
        /// Path prefix of the two files.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Simulated nodes: Node objects, Leases and a stand-in kubelet that
    /// marks their pods Running, for tests and benchmarks at scale.
    HollowNodes(kestrel_control_plane::hollow::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().component {
        Component::Apiserver(config) => kestrel_control_plane::apiserver::run(*config).await,
        Component::Scheduler(config) => kestrel_control_plane::scheduler::run(config).await,
        Component::Kubeconfig {
            cert_dir,
            user,
            groups,
            server,
            out,
            expires_in,
        } => {
            let pki = kestrel_control_plane::apiserver::auth::Pki { dir: cert_dir };
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            let kc = kestrel_control_plane::apiserver::auth::client_kubeconfig(
                &pki,
                &server,
                &user,
                &groups,
                expires_in.map(std::time::Duration::from_secs),
            )?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&out)?
                .write_all(kc.as_bytes())?;
            Ok(())
        }
        Component::Ca { cert_dir } => {
            if kestrel_control_plane::apiserver::auth::ensure_ca(&cert_dir)? {
                println!("made a new cluster CA in {}", cert_dir.display());
            } else {
                println!("kept the cluster CA in {}", cert_dir.display());
            }
            Ok(())
        }
        Component::Certificate {
            cert_dir,
            cn,
            groups,
            sans,
            server,
            client,
            out,
        } => {
            use kestrel_control_plane::apiserver::auth;
            let pki = auth::Pki { dir: cert_dir };
            let (cert, key) = auth::issue(
                &pki,
                &auth::CertRequest {
                    common_name: &cn,
                    organizations: &groups,
                    sans: &sans,
                    server,
                    client,
                },
            )?;
            let path = |ext: &str| {
                let mut p = out.clone().into_os_string();
                p.push(ext);
                std::path::PathBuf::from(p)
            };
            // The key first: a certificate on disk means its key is there.
            auth::write_private(&path(".key"), &key)?;
            std::fs::write(path(".crt"), cert)?;
            Ok(())
        }
        Component::HollowNodes(config) => kestrel_control_plane::hollow::run(config).await,
        Component::ControllerManager(config) => {
            kestrel_control_plane::controllers::run(config).await
        }
    }
}
