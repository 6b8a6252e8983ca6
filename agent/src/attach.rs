//! `kubectl attach` on the node: the same WebSocket channel protocol as
//! exec, joined to a container's own process instead of a new one. The
//! container's stdin (when its spec asks for one) is a FIFO whose write
//! end the agent keeps open for the container's life, so that sessions
//! can come and go; with `stdinOnce` the first session's end closes it.
//! Output comes from following the container's log from the moment of
//! attaching.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::exec::{frame, parse_size, resize, Ctx, ExecQuery};

struct Stdin {
    file: std::fs::File,
    once: bool,
    /// The file is a PTY master: resizes apply to it.
    terminal: bool,
}

/// The held write ends of containers' stdin FIFOs, by container id.
static STDIN: LazyLock<Mutex<HashMap<String, Stdin>>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, HashMap<String, Stdin>> {
    STDIN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens (read-write, so it never blocks and the container never sees
/// end-of-file while it is held) the stdin FIFO of container `id`.
pub fn open_stdin(id: &str, fifo: &Path, once: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a container that reads nothing must not hold a thread.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)?;
    registry().insert(
        id.to_string(),
        Stdin {
            file,
            once,
            terminal: false,
        },
    );
    Ok(())
}

/// Keeps the PTY master of container `id` (its `tty: true`) for attach.
pub fn open_terminal(id: &str, master: std::fs::File, once: bool) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fd = master.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    registry().insert(
        id.to_string(),
        Stdin {
            file: master,
            once,
            terminal: true,
        },
    );
}

/// Closes the held stdin of container `id`: its process reads end-of-file
/// once no session writes either.
pub fn close_stdin(id: &str) {
    registry().remove(id);
}

/// A handle on the container's stdin (or terminal), whether the first
/// session's end closes it, and whether it is a terminal.
fn stdin_of(id: &str) -> Option<(std::fs::File, bool, bool)> {
    let reg = registry();
    let s = reg.get(id)?;
    Some((s.file.try_clone().ok()?, s.once, s.terminal))
}

/// Writes `data` to a non-blocking stdin, waiting while it is full (the
/// container reads slowly), but not forever.
async fn write_all(mut f: &std::fs::File, mut data: &[u8]) -> std::io::Result<()> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while !data.is_empty() {
        match f.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if tokio::time::Instant::now() >= give_up {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the container does not read its stdin",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `GET /attach/{ns}/{pod}/{container}` with a WebSocket upgrade.
pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = ExecQuery::parse(q.as_deref().unwrap_or(""));
    let Some(id) = crate::exec::find(&ctx, &ns, &pod, &container).await else {
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {pod}"),
        )
            .into_response();
    };
    let Some(log) = crate::nodeapi::attempts(&ctx.log_dir, &ns, &pod, &container).pop() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container} in pod {pod} has no output yet"),
        )
            .into_response();
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = session(ctx, id, log, q, socket).await {
                tracing::debug!("attach: {e}");
            }
        })
}

/// Splits complete CRI log lines (`TIME STREAM TAG TEXT`) off `pending`
/// into (stream, bytes as the container wrote them).
fn take_lines(pending: &mut Vec<u8>) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let line = &line[..line.len() - 1];
        let mut parts = line.splitn(4, |b| *b == b' ');
        let (_, Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let mut text = parts.next().unwrap_or_default().to_vec();
        if tag == b"F" {
            text.push(b'\n');
        }
        out.push((stream == b"stderr", text));
    }
    out
}

async fn session(
    ctx: Arc<Ctx>,
    id: String,
    log: PathBuf,
    q: ExecQuery,
    mut socket: WebSocket,
) -> anyhow::Result<()> {
    let runtime = ctx
        .runtime
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no runtime"))?;
    let mut exits = runtime.exits();
    let pid = runtime
        .list()
        .await?
        .into_iter()
        .find(|c| c.id == id)
        .and_then(|c| c.pid);
    let mut file = tokio::fs::File::open(&log).await?;
    let mut offset = file.seek(std::io::SeekFrom::End(0)).await?;
    let held = stdin_of(&id);
    let terminal = held
        .as_ref()
        .map(|(f, _, t)| (*t).then(|| f.try_clone().ok()).flatten())
        .unwrap_or(None);
    let mut stdin = if q.stdin {
        held.map(|(f, once, _)| (f, once))
    } else {
        None
    };
    let mut pending = Vec::new();
    let mut ended: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some((f, _)) = &stdin {
                            write_all(f, &b[1..]).await?;
                        }
                    }
                    4 => {
                        if let (Some(m), Some(size)) = (&terminal, parse_size(&b[1..])) {
                            resize(m, size);
                        }
                    }
                    // v5: the client closed its stdin.
                    255 if b.get(1) == Some(&0) => {
                        if let Some((_, true)) = stdin.take() {
                            close_stdin(&id);
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    if let Some((_, true)) = stdin.take() {
                        close_stdin(&id);
                    }
                    return Ok(());
                }
                _ => {}
            },
            e = exits.recv() => {
                if let Ok(e) = e {
                    if Some(e.pid) == pid && ended.is_none() {
                        // Let the log copier write what came last.
                        ended = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                    }
                }
            }
            _ = tick.tick() => {
                loop {
                    file.seek(std::io::SeekFrom::Start(offset)).await?;
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    offset += n as u64;
                    pending.extend_from_slice(&buf[..n]);
                }
                for (err, text) in take_lines(&mut pending) {
                    let (on, channel) = if err { (q.stderr, 2) } else { (q.stdout, 1) };
                    if on {
                        socket.send(frame(channel, &text)).await?;
                    }
                }
                if ended.is_none() && pid.is_some_and(|p| runtime.recent_exit(p).is_some()) {
                    ended = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                }
                if ended.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    break;
                }
            }
        }
    }
    let status = serde_json::json!({"metadata": {}, "status": "Success"});
    let _ = socket.send(frame(3, status.to_string().as_bytes())).await;
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::take_lines;

    #[test]
    fn cri_lines_become_the_bytes_written() {
        let mut p =
            b"2024-01-01T00:00:00Z stdout F hello\n2024-01-01T00:00:00Z stderr P par".to_vec();
        let got = take_lines(&mut p);
        assert_eq!(got, vec![(false, b"hello\n".to_vec())]);
        p.extend_from_slice(b"tial\n");
        assert_eq!(take_lines(&mut p), vec![(true, b"partial".to_vec())]);
        assert!(p.is_empty());
    }
}
