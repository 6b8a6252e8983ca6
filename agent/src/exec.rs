//! `kubectl exec` on the node: a WebSocket speaking Kubernetes' channel
//! protocol (v5.channel.k8s.io, v4 accepted): one byte of channel, then
//! data; 0 stdin, 1 stdout, 2 stderr, 3 the final Status, 255 a close
//! signal (v5). The process runs in the container through the runtime
//! helper, with its stdio on FIFOs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::nodeapi::Ctx;

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
async fn find(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> Option<String> {
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

fn frame(channel: u8, data: &[u8]) -> Message {
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
    std::fs::create_dir_all(&dir)?;
    let result = run(&runtime, &dir, &id, &q, &mut socket).await;
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
        ("stderr", q.stderr || q.tty),
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
                if let Ok(n) = n { if n > 0 { socket.send(frame(if q.tty { 1 } else { 2 }, &err_buf[..n])).await?; } }
            }
            e = exits.recv() => {
                if let Ok(e) = e { if e.pid == pid { code = Some(e.code); } }
            }
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
}
