//! The container runtime: a client for the runtime helper process (see
//! `helper`), which the agent starts by re-executing itself and finds
//! again, with its containers, after a restart.

pub mod helper;
pub mod protocol;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, oneshot};

use protocol::{ContainerState, Envelope, Message, Request};

/// A failed runtime call.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Call(String),
    #[error("the runtime helper is gone")]
    Gone,
    #[error("starting the runtime helper: {0}")]
    Spawn(std::io::Error),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>;

/// A process exit reported by the helper.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub pid: i32,
    pub code: i32,
    pub signal: Option<i32>,
}

/// Talks to the helper. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    writer: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    pending: Pending,
    seq: Arc<AtomicU64>,
    exits: broadcast::Sender<Exit>,
    /// Recent exits by pid: those the helper kept while no agent was
    /// connected arrive before anyone subscribes.
    recent: Arc<Mutex<HashMap<i32, Exit>>>,
    /// Set once the helper was asked to stop, so its going is no error.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Runtime {
    /// Connects to the helper serving `socket`, first starting one
    /// (`exe runtime-helper`, normally the agent binary itself, in a
    /// session of its own so it outlives this process) when none answers.
    pub async fn connect_or_spawn(
        exe: &Path,
        root: &Path,
        socket: &Path,
        log: &Path,
    ) -> Result<Self, RuntimeError> {
        Self::connect_or_spawn_in(exe, root, socket, log, None).await
    }

    /// Like `connect_or_spawn`; a helper it starts first joins the cgroup
    /// v2 directory `cgroup`, which every container then inherits (see
    /// `services::cgroup`).
    pub async fn connect_or_spawn_in(
        exe: &Path,
        root: &Path,
        socket: &Path,
        log: &Path,
        cgroup: Option<&Path>,
    ) -> Result<Self, RuntimeError> {
        if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
            tracing::info!("reconnected to the runtime helper at {}", socket.display());
            return Ok(Self::attach(stream));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(RuntimeError::Spawn)?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("runtime-helper")
            .arg("--root")
            .arg(root)
            .arg("--socket")
            .arg(socket)
            .args(cgroup.iter().flat_map(|c| [Path::new("--cgroup"), c]))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(RuntimeError::Spawn)?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no Rust state.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(RuntimeError::Spawn)?;
        // Reap it if it ever exits while we run; it normally outlives us.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        for _ in 0..100 {
            if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
                return Ok(Self::attach(stream));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(RuntimeError::Spawn(std::io::Error::other(format!(
            "the runtime helper did not open {}",
            socket.display()
        ))))
    }

    fn attach(stream: tokio::net::UnixStream) -> Self {
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (exits, _) = broadcast::channel(1024);
        let recent: Arc<Mutex<HashMap<i32, Exit>>> = Arc::default();
        let stopping: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (p, tx, r, asked) = (
            pending.clone(),
            exits.clone(),
            recent.clone(),
            stopping.clone(),
        );
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Message>(&line) {
                    Ok(Message::Exit { pid, code, signal }) => {
                        let exit = Exit { pid, code, signal };
                        {
                            let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
                            if r.len() > 4096 {
                                r.clear();
                            }
                            r.insert(pid, exit);
                        }
                        let _ = tx.send(exit);
                    }
                    Ok(m @ Message::Reply { seq, .. }) => {
                        let waiter = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&seq);
                        if let Some(w) = waiter {
                            let _ = w.send(m);
                        }
                    }
                    Err(e) => tracing::warn!("runtime helper said {line:?}: {e}"),
                }
            }
            if asked.load(Ordering::Relaxed) {
                tracing::debug!("the runtime helper stopped as asked");
            } else {
                tracing::error!("lost the runtime helper");
            }
            // Dropping the senders fails every waiting call.
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Self {
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            pending,
            seq: Arc::new(AtomicU64::new(1)),
            exits,
            recent,
            stopping,
        }
    }

    /// The exit of `pid`, if the helper reported one lately.
    pub fn recent_exit(&self, pid: i32) -> Option<Exit> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .copied()
    }

    /// Every exit the helper reaps from now on.
    pub fn exits(&self) -> broadcast::Receiver<Exit> {
        self.exits.subscribe()
    }

    async fn call(
        &self,
        request: Request,
    ) -> Result<(Option<ContainerState>, Vec<ContainerState>), RuntimeError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, tx);
        let line = serde_json::to_string(&Envelope { seq, request })
            .map_err(|e| RuntimeError::Call(e.to_string()))?
            + "\n";
        {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes())
                .await
                .map_err(|_| RuntimeError::Gone)?;
            w.flush().await.map_err(|_| RuntimeError::Gone)?;
        }
        match rx.await.map_err(|_| RuntimeError::Gone)? {
            Message::Reply { error: Some(e), .. } => Err(RuntimeError::Call(e)),
            Message::Reply { state, list, .. } => Ok((state, list)),
            Message::Exit { .. } => Err(RuntimeError::Gone),
        }
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdout: Option<PathBuf>,
        stderr: Option<PathBuf>,
        stdin: Option<PathBuf>,
    ) -> Result<ContainerState, RuntimeError> {
        let (s, _) = self
            .call(Request::Create {
                id: id.into(),
                bundle: bundle.into(),
                stdout,
                stderr,
                stdin,
                console_socket: None,
            })
            .await?;
        s.ok_or(RuntimeError::Gone)
    }

    /// Creates a container whose process runs on a PTY; libcontainer sends
    /// the master to `console_socket`, which must be listening.
    pub async fn create_tty(
        &self,
        id: &str,
        bundle: &Path,
        console_socket: PathBuf,
    ) -> Result<ContainerState, RuntimeError> {
        let (s, _) = self
            .call(Request::Create {
                id: id.into(),
                bundle: bundle.into(),
                stdout: None,
                stderr: None,
                stdin: None,
                console_socket: Some(console_socket),
            })
            .await?;
        s.ok_or(RuntimeError::Gone)
    }

    pub async fn start(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let (s, _) = self.call(Request::Start { id: id.into() }).await?;
        s.ok_or(RuntimeError::Gone)
    }

    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.call(Request::Kill {
            id: id.into(),
            signal,
        })
        .await
        .map(|_| ())
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.call(Request::Delete {
            id: id.into(),
            force,
        })
        .await
        .map(|_| ())
    }

    pub async fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let (s, _) = self.call(Request::State { id: id.into() }).await?;
        s.ok_or(RuntimeError::Gone)
    }

    /// Starts `args` inside running container `id` with its stdio on the
    /// given FIFOs; returns the process's pid (its exit comes as an event).
    pub async fn exec(
        &self,
        id: &str,
        args: Vec<String>,
        env: Vec<String>,
        stdio: [Option<PathBuf>; 3],
    ) -> Result<i32, RuntimeError> {
        let [stdin, stdout, stderr] = stdio;
        let (s, _) = self
            .call(Request::Exec {
                id: id.into(),
                args,
                env,
                stdin,
                stdout,
                stderr,
                terminal: None,
            })
            .await?;
        s.and_then(|s| s.pid).ok_or(RuntimeError::Gone)
    }

    /// Starts `args` inside running container `id` on a new PTY whose
    /// master arrives on `terminal.console_socket`; returns the pid.
    pub async fn exec_tty(
        &self,
        id: &str,
        args: Vec<String>,
        env: Vec<String>,
        terminal: protocol::Terminal,
    ) -> Result<i32, RuntimeError> {
        let (s, _) = self
            .call(Request::Exec {
                id: id.into(),
                args,
                env,
                stdin: None,
                stdout: None,
                stderr: None,
                terminal: Some(terminal),
            })
            .await?;
        s.and_then(|s| s.pid).ok_or(RuntimeError::Gone)
    }

    /// Stops the helper; running containers are left alone.
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        self.stopping.store(true, Ordering::Relaxed);
        self.call(Request::Shutdown).await.map(|_| ())
    }

    pub async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        Ok(self.call(Request::List).await?.1)
    }
}
