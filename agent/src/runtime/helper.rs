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
use libcontainer::oci_spec::runtime::{LinuxSeccomp, Process, Spec};
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
            stdin,
            console_socket,
        } => {
            let mut b = ContainerBuilder::new(id.clone(), SyscallType::Linux)
                .with_root_path(root)
                .map_err(|e| e.to_string())?
                .validate_id()
                .map_err(|e| e.to_string())?;
            match console_socket {
                Some(sock) => b = b.with_console_socket(Some(sock)),
                None => {
                    let [i, o, e] = stdio(stdin, stdout, stderr)?;
                    b = b.with_stdin(i).with_stdout(o).with_stderr(e);
                }
            }
            let c = b
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
            terminal,
        } => {
            let c = load(root, &id)?;
            let spec = Spec::load(c.bundle().join("config.json"))
                .map_err(|e| format!("container {id}: {e}"))?;
            let process = exec_process(&spec, args, &env, terminal.as_ref())?;
            let executor = ExecInContainer::new(&spec)?;
            let path = write_process_file(root, &c, &process)?;
            let mut b = ContainerBuilder::new(id.clone(), SyscallType::Linux)
                .with_root_path(root)
                .map_err(|e| e.to_string())?
                .with_executor(executor);
            match &terminal {
                Some(t) => b = b.with_console_socket(Some(t.console_socket.clone())),
                None => {
                    let fds = stdio(stdin, stdout, stderr)?;
                    give_fifos_to(&fds, process.user().uid());
                    let [i, o, e] = fds;
                    b = b.with_stdin(i).with_stdout(o).with_stderr(e);
                }
            }
            let built = b
                .as_tenant()
                .with_process(Some(&path))
                .with_detach(true)
                .build();
            let _ = std::fs::remove_file(&path);
            if terminal.is_some() {
                remove_console_links(root, &id);
            }
            let pid = built.map_err(|e| format!("exec in container {id}: {e}"))?;
            let mut st = state_of(&c);
            st.pid = Some(pid.as_raw());
            Ok((Some(st), vec![]))
        }
    }
}

/// The process of an exec: the container's own OCI process (user and
/// groups, working directory, environment, capabilities, no-new-privileges,
/// rlimits, umask, AppArmor profile...), as Kubernetes runs `kubectl exec`
/// and exec probes, with the request's arguments, its environment over the
/// container's, and a terminal when asked for one. It goes to libcontainer
/// as a process file, the one form of its tenant builder that takes a whole
/// process; the builder's other form would run the program as root in `/`.
fn exec_process(
    spec: &Spec,
    args: Vec<String>,
    env: &[String],
    terminal: Option<&super::protocol::Terminal>,
) -> Result<Process, String> {
    use libcontainer::oci_spec::runtime::{BoxBuilder, LinuxCapabilities};
    if args.is_empty() {
        return Err("exec: no command".into());
    }
    let mut p = spec
        .process()
        .clone()
        .ok_or("the container's configuration has no process")?;
    p.set_args(Some(args));

    let key = |e: &str| e.split('=').next().unwrap_or("").to_string();
    let overridden: std::collections::HashSet<String> = env.iter().map(|e| key(e)).collect();
    let mut vars: Vec<String> = p
        .env()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !overridden.contains(&key(e)))
        .collect();
    vars.extend(env.iter().filter(|e| e.contains('=')).cloned());
    // Shells need TERM for line editing; containerd sets it for terminal
    // execs the same way when the image has none.
    if terminal.is_some() && !vars.iter().any(|e| e.starts_with("TERM=")) {
        vars.push("TERM=xterm".into());
    }
    p.set_env(Some(vars));

    // No capabilities in the spec means none for the process, never the
    // helper's full set (which is what libcontainer would leave it).
    if p.capabilities().is_none() {
        let mut none = LinuxCapabilities::default();
        none.set_bounding(Some(Default::default()));
        none.set_effective(Some(Default::default()));
        none.set_permitted(Some(Default::default()));
        none.set_inheritable(None);
        none.set_ambient(None);
        p.set_capabilities(Some(none));
    }

    // libcontainer calls setgroups only for a non-empty list; otherwise the
    // process would keep the helper's own supplementary groups. Containers
    // created before config.json listed the groups have none: the primary
    // group alone it is for them.
    let gid = p.user().gid();
    if p.user()
        .additional_gids()
        .as_ref()
        .is_none_or(Vec::is_empty)
    {
        p.user_mut().set_additional_gids(Some(vec![gid]));
    }

    p.set_terminal(Some(terminal.is_some()));
    p.set_console_size(None);
    if let Some(t) = terminal.filter(|t| t.width > 0 && t.height > 0) {
        let size = BoxBuilder::default()
            .width(u64::from(t.width))
            .height(u64::from(t.height))
            .build()
            .map_err(|e| e.to_string())?;
        p.set_console_size(Some(size));
    }
    Ok(p)
}

/// Writes `process` where the tenant builder reads it: a file of its own in
/// the container's state directory, readable by root alone since the
/// environment may hold secrets. The caller removes it after the exec.
fn write_process_file(root: &Path, c: &Container, process: &Process) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let json = serde_json::to_vec(process).map_err(|e| e.to_string())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let path = root.join(c.id()).join(format!("kestrel-exec-{nanos}.json"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&json))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Gives the FIFOs among an exec's stdio to the user it runs as, keeping
/// their group, as runc does: the process can then also reopen them by
/// name (`/dev/stdout`, `/proc/self/fd/2`), which opens the FIFO itself,
/// not the descriptor it was given. /dev/null stays as it is.
fn give_fifos_to(fds: &[OwnedFd], uid: u32) {
    if uid == 0 {
        return;
    }
    for fd in fds {
        // SAFETY: fstat into a zeroed stat, fchown on a descriptor we own.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFIFO
                && st.st_uid != uid
            {
                libc::fchown(fd.as_raw_fd(), uid, libc::gid_t::MAX);
            }
        }
    }
}

/// After a terminal exec: the links to the console socket libcontainer
/// leaves in the container's directory (it has connected through them by
/// now; the helper runs one exec at a time).
fn remove_console_links(root: &Path, id: &str) {
    if let Ok(entries) = std::fs::read_dir(root.join(id)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("tenant-tty-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Runs an exec'd program like libcontainer's default executor, in the
/// container right before exec, after what the tenant builder leaves
/// undone:
/// - on a terminal, the PTY (stdin by then) gets the client's size from the
///   process's consoleSize, so the program never sees a 0x0 terminal, as
///   it could if the agent set the size on the master afterwards; and it
///   goes to the process's user (see `own_terminal`);
/// - the container's seccomp filter: the tenant builder keeps only the
///   namespaces and cgroup of the container's `linux` section, and runc
///   applies the filter to exec'd processes too.
#[derive(Clone)]
struct ExecInContainer {
    seccomp: Option<LinuxSeccomp>,
}

impl ExecInContainer {
    fn new(spec: &Spec) -> Result<Self, String> {
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        // A notify action needs a listener the agent does not run; the
        // filter's syscalls would block forever.
        if seccomp
            .as_ref()
            .is_some_and(libcontainer::seccomp::is_notify)
        {
            return Err("exec: seccomp notify profiles are not supported".into());
        }
        Ok(ExecInContainer { seccomp })
    }
}

/// libcontainer opened the PTY's slave while still root, so it belongs to
/// root (mode 0620, group tty). runc gives it to the process's user, and
/// programs rely on that: they reopen their terminal by name (`$(tty)`,
/// `/dev/stdin`) and some, like `screen`, refuse a terminal that is not
/// theirs. Here that takes CAP_CHOWN among the container's capabilities
/// (the default set has it); without it the program keeps its terminal,
/// only not by name.
fn own_terminal() {
    // SAFETY: geteuid, fstat into a zeroed stat, fchown on our stdin.
    unsafe {
        let uid = libc::geteuid();
        let mut st: libc::stat = std::mem::zeroed();
        if uid != 0 && libc::fstat(0, &mut st) == 0 && st.st_uid != uid {
            libc::fchown(0, uid, libc::gid_t::MAX);
        }
    }
}

impl libcontainer::workload::Executor for ExecInContainer {
    fn exec(&self, spec: &Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        let process = spec.process().as_ref();
        if process.and_then(|p| p.terminal()) == Some(true) {
            if let Some(size) = process.and_then(|p| p.console_size()) {
                let ws = libc::winsize {
                    ws_row: size.height().min(u64::from(u16::MAX)) as u16,
                    ws_col: size.width().min(u64::from(u16::MAX)) as u16,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: an ioctl on our own stdin with a valid winsize.
                unsafe { libc::ioctl(0, libc::TIOCSWINSZ, &ws) };
            }
            own_terminal();
        }
        // Last before exec, so the filter governs the program alone. With
        // no-new-privileges (Kubernetes' default) no capability is needed.
        if let Some(filter) = &self.seccomp {
            match libcontainer::seccomp::initialize_seccomp(filter) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(libcontainer::workload::ExecutorError::Other(
                        "seccomp notify profiles are not supported".into(),
                    ))
                }
                Err(e) => {
                    return Err(libcontainer::workload::ExecutorError::Other(format!(
                        "applying the container's seccomp filter: {e}"
                    )))
                }
            }
        }
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
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
    // Container state (the saved OCI spec with its environment) is root's.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
    }
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
