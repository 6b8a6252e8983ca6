//! The runtime helper: a single-threaded process that makes every
//! libcontainer call. libcontainer forks and runs Rust code in the child
//! (changing the working directory, environment and dumpable flag of the
//! whole process), which is only safe without other threads, so the
//! multi-threaded agent never calls it itself. The helper is also the
//! child subreaper of every container, reaps their inits and reports the
//! exits.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use super::protocol::{ContainerState, Envelope, Message, Request};

fn state_of(c: &Container) -> ContainerState {
    ContainerState {
        id: c.id().to_string(),
        status: format!("{:?}", c.status()).to_lowercase(),
        pid: c.pid().map(|p| p.as_raw()),
        bundle: c.bundle().clone(),
    }
}

fn load(root: &Path, id: &str) -> Result<Container, String> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(format!("invalid container id {id:?}"));
    }
    let mut c = Container::load(root.join(id)).map_err(|e| format!("container {id}: {e}"))?;
    c.refresh_status()
        .map_err(|e| format!("container {id}: {e}"))?;
    Ok(c)
}

/// Opens one end of a FIFO without waiting for the other, then makes it
/// blocking so the process's reads and writes behave as on a pipe. The
/// read end is opened read-only so the process sees end-of-file when the
/// agent closes its side.
fn open_fifo_end(path: &Path, write: bool) -> Result<OwnedFd, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let fd = f.as_raw_fd();
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(OwnedFd::from(f))
}

/// The container or exec process's stdin, stdout and stderr: the given
/// FIFOs, or /dev/null.
fn stdio(
    stdin: Option<PathBuf>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
) -> Result<[OwnedFd; 3], String> {
    let open = |p: Option<PathBuf>, write: bool| match p {
        Some(p) => open_fifo_end(&p, write),
        None => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| e.to_string()),
    };
    Ok([
        open(stdin, false)?,
        open(stdout, true)?,
        open(stderr, true)?,
    ])
}

fn handle(
    root: &Path,
    request: Request,
) -> Result<(Option<ContainerState>, Vec<ContainerState>), String> {
    match request {
        Request::Create {
            id,
            bundle,
            stdout,
            stderr,
        } => {
            let [i, o, e] = stdio(None, stdout, stderr)?;
            let c = ContainerBuilder::new(id.clone(), SyscallType::Linux)
                .with_root_path(root)
                .map_err(|e| e.to_string())?
                .validate_id()
                .map_err(|e| e.to_string())?
                .with_stdin(i)
                .with_stdout(o)
                .with_stderr(e)
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("creating container {id}: {e}"))?;
            Ok((Some(state_of(&c)), vec![]))
        }
        Request::Start { id } => {
            let mut c = load(root, &id)?;
            c.start()
                .map_err(|e| format!("starting container {id}: {e}"))?;
            Ok((Some(state_of(&c)), vec![]))
        }
        Request::Kill { id, signal } => {
            let mut c = load(root, &id)?;
            let sig = libcontainer::signal::Signal::try_from(signal).map_err(|e| e.to_string())?;
            c.kill(sig, true)
                .map_err(|e| format!("signalling container {id}: {e}"))?;
            Ok((Some(state_of(&c)), vec![]))
        }
        Request::Delete { id, force } => {
            let mut c = match load(root, &id) {
                Ok(c) => c,
                // Already gone: deleting is idempotent.
                Err(_) if !root.join(&id).exists() => return Ok((None, vec![])),
                Err(e) => return Err(e),
            };
            c.delete(force)
                .map_err(|e| format!("deleting container {id}: {e}"))?;
            Ok((None, vec![]))
        }
        Request::State { id } => Ok((Some(state_of(&load(root, &id)?)), vec![])),
        Request::List => {
            let mut out = Vec::new();
            if let Ok(entries) = std::fs::read_dir(root) {
                for e in entries.flatten() {
                    let id = e.file_name().to_string_lossy().to_string();
                    if let Ok(c) = load(root, &id) {
                        out.push(state_of(&c));
                    }
                }
            }
            Ok((None, out))
        }
        // Answered by the serve loop, which then exits.
        Request::Shutdown => Ok((None, vec![])),
        Request::Exec {
            id,
            args,
            env,
            stdin,
            stdout,
            stderr,
        } => {
            let c = load(root, &id)?;
            let [i, o, e] = stdio(stdin, stdout, stderr)?;
            let b = ContainerBuilder::new(id.clone(), SyscallType::Linux)
                .with_root_path(root)
                .map_err(|e| e.to_string())?
                .with_stdin(i)
                .with_stdout(o)
                .with_stderr(e);
            let env = env
                .into_iter()
                .filter_map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            let pid = b
                .as_tenant()
                .with_container_args(args)
                .with_env(env)
                .with_detach(true)
                .build()
                .map_err(|e| format!("exec in container {id}: {e}"))?;
            let mut st = state_of(&c);
            st.pid = Some(pid.as_raw());
            Ok((Some(st), vec![]))
        }
    }
}

/// Where messages go: the connected agent, or a backlog kept for the next
/// agent when none is connected (exits must not be lost across restarts).
struct Outbox {
    client: Option<UnixStream>,
    backlog: std::collections::VecDeque<Message>,
}

impl Outbox {
    fn send(&mut self, m: Message) {
        let Some(c) = self.client.as_mut() else {
            if matches!(m, Message::Exit { .. }) {
                if self.backlog.len() >= 10_000 {
                    self.backlog.pop_front();
                }
                self.backlog.push_back(m);
            }
            return;
        };
        let ok = serde_json::to_string(&m)
            .ok()
            .is_some_and(|line| writeln!(c, "{line}").and_then(|_| c.flush()).is_ok());
        if !ok {
            self.client = None;
            if matches!(m, Message::Exit { .. }) {
                self.backlog.push_back(m);
            }
        }
    }

    fn connect(&mut self, c: UnixStream) {
        self.client = Some(c);
        while let Some(m) = self.backlog.pop_front() {
            self.send(m);
            if self.client.is_none() {
                return;
            }
        }
    }
}

fn reap(out: &mut Outbox) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on any child.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let (code, signal) = if libc::WIFEXITED(status) {
            (libc::WEXITSTATUS(status), None)
        } else if libc::WIFSIGNALED(status) {
            let s = libc::WTERMSIG(status);
            (128 + s, Some(s))
        } else {
            continue;
        };
        out.send(Message::Exit { pid, code, signal });
    }
}

fn reply(root: &Path, line: &str) -> Message {
    match serde_json::from_str::<Envelope>(line) {
        Ok(env) => match handle(root, env.request) {
            Ok((state, list)) => Message::Reply {
                seq: env.seq,
                error: None,
                state,
                list,
            },
            Err(error) => Message::Reply {
                seq: env.seq,
                error: Some(error),
                state: None,
                list: vec![],
            },
        },
        Err(e) => Message::Reply {
            seq: 0,
            error: Some(format!("bad request: {e}")),
            state: None,
            list: vec![],
        },
    }
}

/// Serves one agent at a time on the unix socket `socket` until killed.
/// `root` holds the containers' state. Must run before any other thread
/// exists, in a session of its own, so it outlives agent restarts: it is
/// the parent (subreaper) of the containers and keeps their exits for the
/// next agent.
pub fn serve(root: PathBuf, socket: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&root)?;
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    listener.set_nonblocking(true)?;
    let mut out = Outbox {
        client: None,
        backlog: Default::default(),
    };
    let mut reader: Option<UnixStream> = None;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(r) = &reader {
            fds.push(libc::pollfd {
                fd: r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Wake every 100 ms to reap exited containers.
        // SAFETY: a valid array of pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        reap(&mut out);
        if fds[0].revents & libc::POLLIN != 0 {
            if let Ok((conn, _)) = listener.accept() {
                // A new agent replaces the old connection.
                conn.set_nonblocking(false)?;
                let writer = conn.try_clone()?;
                reader = Some(conn);
                buf.clear();
                out.connect(writer);
            }
            continue;
        }
        let Some(r) = reader.as_mut() else { continue };
        if fds.len() < 2 || fds[1].revents == 0 {
            continue;
        }
        let mut chunk = [0u8; 8192];
        let n = r.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            reader = None;
            out.client = None;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line);
            let shutdown = matches!(
                serde_json::from_str::<Envelope>(&text),
                Ok(Envelope {
                    request: Request::Shutdown,
                    ..
                })
            );
            let m = reply(&root, &text);
            out.send(m);
            reap(&mut out);
            if shutdown {
                let _ = std::fs::remove_file(&socket);
                return Ok(());
            }
        }
    }
}
