//! The control plane's processes: API servers, schedulers and
//! controller-managers, one of each per control plane.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::component::Component;
use super::netns::{cp_address, netns_command};
use super::state_dir;
use super::topology::Topology;
use crate::setup::kubectl_path;
use crate::util;

/// Starts the API servers one after another and returns the admin
/// kubeconfig the first one wrote.
pub fn start_apiservers(t: &Topology) -> anyhow::Result<PathBuf> {
    let cps = t.cps;
    util::step(&if cps == 1 {
        "starting the API server".to_string()
    } else {
        format!("starting {cps} API servers")
    });
    let kubeconfig = state_dir().join("kubeconfig");
    let etcd_urls = t.etcd_urls();
    // One at a time: they share the CA in pki/, and each re-issues its
    // serving certificate there as it starts.
    for i in 1..=cps {
        let apiserver = Component::named(t.named("apiserver", i));
        // The user's kubectl reaches API server i on this machine at
        // 127.0.0.1:(port + i - 1).
        let host_port = t.apiserver_port + (i as u16 - 1);
        let mut cmd = Command::new(t.control_plane_bin());
        cmd.arg("apiserver")
            .arg(format!("--etcd-servers={}", etcd_urls.join(",")))
            .arg(format!("--cert-dir={}", state_dir().join("pki").display()))
            .arg(format!(
                "--bind-address={}:{}",
                t.listen_host(i),
                t.apiserver_port
            ));
        if i == 1 {
            cmd.arg(format!("--admin-kubeconfig={}", kubeconfig.display()));
        }
        // Kept open until the API server has its copy.
        let mut _host_socket = None;
        if t.cp_ns.is_some() {
            // The API server lives in the control plane's namespace, where
            // the nodes reach it; the user's kubectl reaches it on this
            // machine's loopback through a socket made here and handed
            // over (socket activation).
            for j in 1..=cps {
                cmd.arg(format!("--tls-san={}", cp_address(j)));
            }
            // Where pods reach it: its endpoint in Service default/kubernetes.
            cmd.arg(format!("--advertise-address={}", cp_address(i)));
            if apiserver.pid().is_none() {
                _host_socket = Some(hand_over_listener(&mut cmd, host_port)?);
            }
            t.spawn_in(&mut cmd)?;
        }
        apiserver.start(&mut cmd)?;
        drop(_host_socket);
        // Ready when the admin, through TLS and its client certificate, is
        // answered.
        apiserver.wait_ready(Duration::from_secs(30), || {
            kubeconfig.exists()
                && util::succeeds(
                    Command::new(kubectl_path())
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .arg(format!("--server=https://127.0.0.1:{host_port}"))
                        .args(["get", "--raw", "/readyz"]),
                )
        })?;
    }
    Ok(kubeconfig)
}

/// Listens on this machine's 127.0.0.1:`port` and makes `cmd` inherit the
/// socket as fd 3 with LISTEN_FDS=1. The caller keeps the listener until
/// the process has started.
fn hand_over_listener(cmd: &mut Command, port: u16) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| anyhow::anyhow!("127.0.0.1:{port}: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
    cmd.env("LISTEN_FDS", "1");
    // SAFETY: dup2 is async-signal-safe; fd 3 is where socket
    // activation puts the first socket.
    unsafe {
        cmd.pre_exec(move || {
            // Already fd 3: only its close-on-exec flag must go.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(l)
}

/// A kubeconfig for component `base` as its own least-privilege user
/// (`system:kube-scheduler`, `system:kube-controller-manager`), beside
/// the admin's and naming the same server.
fn component_kubeconfig(t: &Topology, base: &str) -> anyhow::Result<PathBuf> {
    let out = state_dir().join(format!("{base}.kubeconfig"));
    let status = Command::new(t.control_plane_bin())
        .arg("kubeconfig")
        .arg(format!("--cert-dir={}", state_dir().join("pki").display()))
        .arg(format!("--user=system:kube-{base}"))
        .arg(format!("--server=https://127.0.0.1:{}", t.apiserver_port))
        .arg("--out")
        .arg(&out)
        .status()?;
    anyhow::ensure!(status.success(), "writing {}", out.display());
    Ok(out)
}

/// Starts a scheduler and a controller-manager per control plane; with
/// several, one of each leads and the others stand by. Each runs as its own
/// RBAC user, not as the admin.
pub fn start_controllers(t: &Topology) -> anyhow::Result<()> {
    let cps = t.cps;
    util::step(&if cps == 1 {
        "starting the scheduler and the controller-manager".to_string()
    } else {
        format!("starting {cps} schedulers and {cps} controller-managers (one of each leads)")
    });
    let api_urls = t.api_urls();
    for i in 1..=cps {
        for (base, health) in [("scheduler", 10259), ("controller-manager", 10257)] {
            let c = Component::named(t.named(base, i));
            let kubeconfig = component_kubeconfig(t, base)?;
            let mut cmd = Command::new(t.control_plane_bin());
            cmd.arg(base).arg("--kubeconfig").arg(&kubeconfig);
            // Health and metrics are plain HTTP without authentication:
            // loopback only, never the node network. Several control
            // planes share one namespace, so each gets ports of its own.
            let health = health + 10 * (i as u16 - 1);
            if cps > 1 {
                // Every API server, so the component fails over.
                cmd.arg(format!("--master={}", api_urls.join(",")))
                    .arg(format!("--bind-address=127.0.0.1:{health}"));
            }
            t.spawn_in(&mut cmd)?;
            c.start(&mut cmd)?;
            // A standby is live but not ready until it leads.
            let url = if cps == 1 {
                format!("http://127.0.0.1:{health}/readyz")
            } else {
                format!("http://127.0.0.1:{health}/healthz")
            };
            c.wait_ready(Duration::from_secs(30), || {
                util::succeeds(netns_command(t.cp_ns, "curl").args(["-sf", &url]))
            })?;
        }
    }
    Ok(())
}
