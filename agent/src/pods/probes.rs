//! Liveness, readiness and startup probes (exec, tcpSocket, httpGet) with
//! kubelet's timing fields. TCP and HTTP checks connect from inside the
//! pod's network namespace to its loopback, where the pod's servers listen.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::Runtime;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// One probe's schedule and counters for one container run.
#[derive(Debug)]
pub struct Prober {
    pub kind: Kind,
    probe: Probe,
    pub next: Instant,
    successes: i32,
    failures: i32,
    /// The last verdict once thresholds were met.
    pub passing: Option<bool>,
}

impl Prober {
    pub fn for_container(c: &Container, started: Instant) -> Vec<Prober> {
        [
            (Kind::Startup, &c.startup_probe),
            (Kind::Liveness, &c.liveness_probe),
            (Kind::Readiness, &c.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(kind, p)| {
            let p = p.clone()?;
            let delay = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
            Some(Prober {
                kind,
                next: started + delay,
                probe: p,
                successes: 0,
                failures: 0,
                passing: None,
            })
        })
        .collect()
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64)
    }

    /// Records an outcome; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        self.next = Instant::now() + self.period();
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.probe.success_threshold.unwrap_or(1).max(1) {
            Some(true)
        } else if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }

    /// Runs the check once: Ok(()) or why it failed.
    pub async fn check(
        &self,
        runtime: &Runtime,
        container_id: &str,
        netns: PathBuf,
        ports: &[(String, i32)],
    ) -> Result<(), String> {
        let timeout = self.timeout();
        if let Some(exec) = &self.probe.exec {
            let cmd = exec.command.clone().unwrap_or_default();
            return exec_in(runtime, container_id, &cmd, timeout).await;
        }
        let port_of = |p: &IntOrString| -> Result<u16, String> {
            match p {
                IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("bad port {n}")),
                IntOrString::String(name) => ports
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, p)| u16::try_from(*p).ok())
                    .ok_or_else(|| format!("no container port named {name:?}")),
            }
        };
        let (port, http) = if let Some(t) = &self.probe.tcp_socket {
            (port_of(&t.port)?, None)
        } else if let Some(h) = &self.probe.http_get {
            (
                port_of(&h.port)?,
                Some(h.path.clone().unwrap_or_else(|| "/".into())),
            )
        } else {
            return Err("the probe has no handler".into());
        };
        tokio::task::spawn_blocking(move || in_netns(&netns, move || connect(port, http, timeout)))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// Runs `f` on a thread that has joined the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let ns = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this short-lived thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        f()
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_string())?
}

fn connect(port: u16, http: Option<String>, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let Some(path) = http else {
        return Ok(());
    };
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.32\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"http://{addr}{path}\": not an HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Runs `cmd` in container `container_id` and waits up to `timeout` for it
/// (killed after that): Ok(()) when it exits 0, else why not. Exec probes
/// and preStop hooks run this way.
pub async fn exec_in(
    runtime: &Runtime,
    container_id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let mut exits = runtime.exits();
    let pid = runtime
        .exec(container_id, cmd.to_vec(), vec![], [None, None, None])
        .await
        .map_err(|e| e.to_string())?;
    let code = match runtime.recent_exit(pid) {
        Some(e) => e.code,
        None => tokio::time::timeout(timeout, async {
            loop {
                match exits.recv().await {
                    Ok(e) if e.pid == pid => return e.code,
                    Ok(_) => {}
                    Err(_) => return -1,
                }
            }
        })
        .await
        .map_err(|_| {
            // SAFETY: a signal to the process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            format!("command {cmd:?} timed out")
        })?,
    };
    if code == 0 {
        Ok(())
    } else {
        Err(format!("command {cmd:?} exited with {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prober(success: i32, failure: i32) -> Prober {
        Prober {
            kind: Kind::Readiness,
            probe: Probe {
                success_threshold: Some(success),
                failure_threshold: Some(failure),
                ..Default::default()
            },
            next: Instant::now(),
            successes: 0,
            failures: 0,
            passing: None,
        }
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let mut p = prober(1, 3);
        assert_eq!(p.record(true), Some(true));
        assert_eq!(p.record(false), None);
        assert_eq!(p.record(false), None);
        assert_eq!(p.record(false), Some(false));
        assert_eq!(p.record(false), None, "no change, no new verdict");
        let mut p = prober(2, 1);
        assert_eq!(p.record(true), None);
        assert_eq!(p.record(true), Some(true));
        assert_eq!(p.record(false), Some(false));
    }
}
