//! `kubectl exec` on the node: a WebSocket speaking Kubernetes' channel
//! protocol (v5.channel.k8s.io, v4 accepted): one byte of channel, then
//! data; 0 stdin, 1 stdout, 2 stderr, 3 the final Status, 255 a close
//! signal (v5). The process runs in the container through the runtime
//! helper, with its stdio on FIFOs; with `tty=true` on a PTY instead,
//! whose output is channel 1 alone and whose size follows channel 4.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::protocol::Terminal;

/// What exec needs from the node: where pods' logs are (they name the
/// pods this node runs), the runtime, and where exec sessions keep their
/// FIFOs.
pub struct Ctx {
    pub log_dir: std::path::PathBuf,
    /// Absent when the agent runs no pods.
    pub runtime: Option<crate::runtime::Runtime>,
    pub exec_dir: std::path::PathBuf,
}

/// The query of an exec request.
#[derive(Debug, Default, PartialEq)]
pub struct ExecQuery {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecQuery {
    pub fn parse(q: &str) -> Self {
        let mut e = ExecQuery::default();
        let on = |v: &str| v == "true" || v == "1";
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match k.as_ref() {
                "command" => e.command.push(v.into_owned()),
                "stdin" => e.stdin = on(&v),
                "stdout" => e.stdout = on(&v),
                "stderr" => e.stderr = on(&v),
                "tty" => e.tty = on(&v),
                _ => {}
            }
        }
        e
    }
}

/// The runtime id of the running container `container` of pod `ns/pod`.
pub(crate) async fn find(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> Option<String> {
    let prefix = format!("{ns}_{pod}_");
    let uid = std::fs::read_dir(&ctx.log_dir)
        .ok()?
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix(&prefix)
                .map(str::to_string)
        })?;
    let want = format!("{uid}_{container}_");
    ctx.runtime
        .as_ref()?
        .list()
        .await
        .ok()?
        .into_iter()
        .find(|c| c.id.starts_with(&want) && c.status == "running")
        .map(|c| c.id)
}

/// `GET /exec/{ns}/{pod}/{container}` with a WebSocket upgrade.
pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = ExecQuery::parse(q.as_deref().unwrap_or(""));
    if q.command.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        )
            .into_response();
    }
    let Some(id) = find(&ctx, &ns, &pod, &container).await else {
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {pod}"),
        )
            .into_response();
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = session(ctx, id, q, socket).await {
                tracing::warn!("exec: {e}");
            }
        })
}

pub(crate) fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

async fn session(
    ctx: Arc<Ctx>,
    id: String,
    q: ExecQuery,
    mut socket: WebSocket,
) -> anyhow::Result<()> {
    let runtime = ctx
        .runtime
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no runtime"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = ctx.exec_dir.join(format!("{id}-{nanos}"));
    // Root's alone: the helper gives the FIFOs in it to the container's
    // user, and the host's user of that uid must not reach them.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let result = if q.tty {
        run_tty(&runtime, &ctx.exec_dir, &id, &q, &mut socket).await
    } else {
        run(&runtime, &dir, &id, &q, &mut socket).await
    };
    let _ = std::fs::remove_dir_all(&dir);
    let status = match &result {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": format!("command terminated with non-zero exit code: error executing command {:?}, exit code {code}", q.command),
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": e.to_string(),
        }),
    };
    let _ = socket.send(frame(3, status.to_string().as_bytes())).await;
    // A normal closure (1000): kubectl treats a close without a code as
    // a broken stream.
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    Ok(())
}

async fn run(
    runtime: &crate::runtime::Runtime,
    dir: &std::path::Path,
    id: &str,
    q: &ExecQuery,
    socket: &mut WebSocket,
) -> anyhow::Result<i32> {
    let mut fifos: [Option<std::path::PathBuf>; 3] = [None, None, None];
    for (i, (name, on)) in [
        ("stdin", q.stdin),
        ("stdout", q.stdout),
        ("stderr", q.stderr),
    ]
    .into_iter()
    .enumerate()
    {
        if on {
            let p = dir.join(name);
            crate::pods::logs::mkfifo(&p)?;
            fifos[i] = Some(p);
        }
    }
    // Our ends first: the helper's opens must find them.
    let mut stdin = match &fifos[0] {
        Some(p) => Some(
            tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(p)?,
        ),
        None => None,
    };
    let open_rx = |p: &Option<std::path::PathBuf>| -> std::io::Result<Option<tokio::net::unix::pipe::Receiver>> {
        match p {
            Some(p) => Ok(Some(tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(p)?)),
            None => Ok(None),
        }
    };
    let mut out = open_rx(&fifos[1])?;
    let mut err = open_rx(&fifos[2])?;
    let mut exits = runtime.exits();
    let pid = runtime
        .exec(id, q.command.clone(), vec![], fifos.clone())
        .await?;
    let mut out_buf = vec![0u8; 16384];
    let mut err_buf = vec![0u8; 16384];
    let mut code: Option<i32> = runtime.recent_exit(pid).map(|e| e.code);
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if let Some(c) = code {
            if drain_until.is_none() {
                drain_until = Some(tokio::time::Instant::now() + Duration::from_millis(100));
            }
            if drain_until.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(c);
            }
        }
        let deadline =
            drain_until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match (b[0], stdin.as_mut()) {
                    (0, Some(w)) => { let _ = w.write_all(&b[1..]).await; }
                    // v5: the client closed a stream; only stdin matters.
                    (255, _) if b.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The user went away: end the process.
                    if code.is_none() {
                        // SAFETY: a signal to the exec'd process we started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    return Ok(code.unwrap_or(137));
                }
                _ => {}
            },
            n = async { match out.as_mut() { Some(r) => r.read(&mut out_buf).await, None => std::future::pending().await } } => {
                if let Ok(n) = n { if n > 0 { socket.send(frame(1, &out_buf[..n])).await?; } }
            }
            n = async { match err.as_mut() { Some(r) => r.read(&mut err_buf).await, None => std::future::pending().await } } => {
                if let Ok(n) = n { if n > 0 { socket.send(frame(2, &err_buf[..n])).await?; } }
            }
            e = exits.recv() => {
                if let Ok(e) = e { if e.pid == pid { code = Some(e.code); } }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// A terminal size from a channel-4 message, `{"Width":W,"Height":H}`.
pub(crate) fn parse_size(data: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let dim = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_u64)
            .map(|n| n.min(u64::from(u16::MAX)) as u16)
    };
    Some((dim("Width")?, dim("Height")?))
}

/// Gives the PTY behind `master` a new size; the kernel tells the
/// terminal's foreground process group with SIGWINCH.
pub(crate) fn resize(master: &impl AsRawFd, (width, height): (u16, u16)) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: an ioctl on a PTY master we own, with a valid winsize.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Receives the PTY master that the exec'd process sent (SCM_RIGHTS) on
/// the connection it made to our console socket.
fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for a few descriptors, aligned as cmsghdr needs.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at buffers that outlive the call. CLOEXEC keeps
    // the master out of processes the agent starts later.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in, within
    // msg_controllen, with the CMSG macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // The first is the master; any others close on drop.
    fds.into_iter().next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the container sent no terminal",
        )
    })
}

pub(crate) async fn recv_master(listener: &tokio::net::UnixListener) -> anyhow::Result<OwnedFd> {
    let (conn, _) = listener.accept().await?;
    loop {
        conn.readable().await?;
        match conn.try_io(tokio::io::Interest::READABLE, || recv_fd(conn.as_raw_fd())) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return Ok(r?),
        }
    }
}

/// Reads what the PTY has for us: `Ok(None)` once every holder of the
/// slave has closed it (the kernel answers EIO then).
fn read_master(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: reading into a buffer we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok((n > 0).then_some(n as usize))
}

fn write_master(fd: &OwnedFd, data: &[u8]) -> std::io::Result<usize> {
    // SAFETY: writing from a buffer we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// An exec on a PTY. The client's first resize gives the initial size,
/// which the helper sets before the program starts; stdin goes to the
/// master, the master's output to channel 1, later resizes to the master.
async fn run_tty(
    runtime: &crate::runtime::Runtime,
    exec_dir: &std::path::Path,
    id: &str,
    q: &ExecQuery,
    socket: &mut WebSocket,
) -> anyhow::Result<i32> {
    // kubectl sends its size as soon as the streams are up; wait briefly
    // for it (clients that never send one start at the PTY's default),
    // keeping any stdin that comes first.
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_open = q.stdin;
    let mut size = None;
    let first_size_by = tokio::time::Instant::now() + Duration::from_secs(1);
    while size.is_none() {
        match tokio::time::timeout_at(first_size_by, socket.recv()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Binary(b)))) if !b.is_empty() => match b[0] {
                0 if stdin_open => pending.extend_from_slice(&b[1..]),
                4 => size = parse_size(&b[1..]),
                // Stdin closed already: the EOF character, as below.
                255 if b.get(1) == Some(&0) && stdin_open => {
                    stdin_open = false;
                    pending.push(0x04);
                }
                _ => {}
            },
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => {
                anyhow::bail!("the client left before the process started")
            }
            Ok(_) => {}
        }
    }
    let (width, height) = size.unwrap_or((0, 0));

    // The console socket: a short name in the exec directory, since a unix
    // socket's path must fit in 108 bytes; libcontainer reaches it through
    // a link of its own, so only our bind needs the short path.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let console = exec_dir.join(format!("tty-{nanos:x}.sock"));
    let _ = std::fs::remove_file(&console);
    let listener = tokio::net::UnixListener::bind(&console)
        .map_err(|e| anyhow::anyhow!("console socket {}: {e}", console.display()))?;
    let exits = runtime.exits();
    let started = runtime
        .exec_tty(
            id,
            q.command.clone(),
            vec![],
            Terminal {
                console_socket: console.clone(),
                width,
                height,
            },
        )
        .await;
    // The process connected (and sent the master) before it started, so
    // the queued connection is all we need; the name can go.
    let _ = std::fs::remove_file(&console);
    let pid = started?;
    let result = async {
        let master = tokio::time::timeout(Duration::from_secs(10), recv_master(&listener))
            .await
            .map_err(|_| anyhow::anyhow!("the container sent no terminal"))??;
        drop(listener);
        copy_tty(runtime, master, pid, exits, pending, stdin_open, q, socket).await
    }
    .await;
    // Without its terminal or its client the process is of no use; end it
    // unless it has ended already (its pid may be reused once reaped).
    if result.is_err() && runtime.recent_exit(pid).is_none() {
        // SAFETY: a signal to the exec'd process we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    result
}

/// Copies between the PTY master and the client until the process has
/// exited and its output is read; returns its exit code.
#[allow(clippy::too_many_arguments)]
async fn copy_tty(
    runtime: &crate::runtime::Runtime,
    master: OwnedFd,
    pid: i32,
    mut exits: tokio::sync::broadcast::Receiver<crate::runtime::Exit>,
    mut pending: Vec<u8>,
    mut stdin_open: bool,
    q: &ExecQuery,
    socket: &mut WebSocket,
) -> anyhow::Result<i32> {
    // SAFETY: fcntl on the descriptor we own.
    unsafe {
        let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as
    // long as the AsyncFd owns it.
    let master =
        unsafe { tokio::io::unix::AsyncFd::register(master) }.map_err(std::io::Error::from)?;

    let mut buf = vec![0u8; 16384];
    let mut output_open = true;
    let mut code: Option<i32> = runtime.recent_exit(pid).map(|e| e.code);
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if let Some(c) = code {
            // Output the program wrote just before it exited is still in
            // the PTY: read until the slave is closed everywhere, or a
            // moment, since a background child may keep it open.
            let until = *drain_until
                .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(100));
            if !output_open || tokio::time::Instant::now() >= until {
                return Ok(c);
            }
        }
        let deadline =
            drain_until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            // While stdin waits for room in the PTY, read no more of it, but
            // keep copying output: the program may be blocked writing.
            m = socket.recv(), if pending.is_empty() => match m {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 if stdin_open => pending.extend_from_slice(&b[1..]),
                    4 => {
                        if let Some(s) = parse_size(&b[1..]) {
                            resize(master.get_ref(), s);
                        }
                    }
                    // v5: the client closed stdin. A PTY has no half-close,
                    // so end it the way a terminal does: an EOF character.
                    255 if b.get(1) == Some(&0) && stdin_open => {
                        stdin_open = false;
                        pending.push(0x04);
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The user went away: end the process.
                    if code.is_none() {
                        // SAFETY: a signal to the exec'd process we started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    return Ok(code.unwrap_or(137));
                }
                _ => {}
            },
            g = master.readable(), if output_open => {
                let mut g = g?;
                match g.try_io(|fd| read_master(fd.get_ref(), &mut buf)) {
                    Ok(Ok(Some(n))) => {
                        if q.stdout {
                            socket.send(frame(1, &buf[..n])).await?;
                        }
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => output_open = false,
                    Err(_would_block) => {}
                }
            }
            g = master.writable(), if !pending.is_empty() => {
                let mut g = g?;
                match g.try_io(|fd| write_master(fd.get_ref(), &pending)) {
                    Ok(Ok(n)) => {
                        pending.drain(..n);
                    }
                    // The PTY is gone: nothing will read stdin any more.
                    Ok(Err(_)) => pending.clear(),
                    Err(_would_block) => {}
                }
            }
            e = exits.recv() => match e {
                Ok(e) if e.pid == pid => code = Some(e.code),
                Ok(_) => {}
                // Missed some exits: ours, if among them, is in the recent ones.
                Err(_) => code = code.or(runtime.recent_exit(pid).map(|e| e.code)),
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_exec_query() {
        let q = ExecQuery::parse("command=sh&command=-c&command=echo+hi%3B+exit+3&container=c&stdin=true&stdout=true&stderr=true");
        assert_eq!(q.command, ["sh", "-c", "echo hi; exit 3"]);
        assert!(q.stdin && q.stdout && q.stderr && !q.tty);
        // Malformed escapes and non-ASCII never panic.
        let q = ExecQuery::parse("command=%&command=%é1&command=%zz&command=é");
        assert_eq!(q.command.len(), 4);
    }

    #[test]
    fn kubectl_resize_messages() {
        assert_eq!(parse_size(br#"{"Width":120,"Height":40}"#), Some((120, 40)));
        // Bad sizes are ignored, never fatal.
        assert_eq!(parse_size(br#"{"Width":120}"#), None);
        assert_eq!(parse_size(br#"{"Width":-1,"Height":40}"#), None);
        assert_eq!(parse_size(b"\xff"), None);
        assert_eq!(
            parse_size(br#"{"Width":100000,"Height":1}"#),
            Some((u16::MAX, 1))
        );
    }
}
