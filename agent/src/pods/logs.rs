//! Container output in the CRI log format kubelet writes
//! (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`), copied from the FIFOs the
//! containers write to, with size-based rotation.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Rotate when a log file passes this size; keep one rotated file.
const MAX_BYTES: u64 = 10 << 20;

/// Makes a FIFO at `path` (if missing).
pub fn mkfifo(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if path.exists() {
        return Ok(());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("NUL in path"))?;
    // SAFETY: a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the FIFO's read end (read-write, so it never sees EOF between
/// writers, e.g. across a container restart) and copies lines into `log`
/// until the task is aborted.
pub fn copy(
    fifo: PathBuf,
    log: PathBuf,
    stream: &'static str,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)?;
    // The file exists from the start, as kubelet's does: a running
    // container that printed nothing has an empty log, not none.
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    Ok(tokio::spawn(async move {
        let mut lines = BufReader::new(rx);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match lines.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let (text, tag) = match buf.strip_suffix(b"\n") {
                Some(t) => (t, "F"),
                None => (&buf[..], "P"),
            };
            let ts = k8s_openapi::jiff::Timestamp::now();
            let mut line = format!("{ts:.9} {stream} {tag} ").into_bytes();
            line.extend_from_slice(text);
            line.push(b'\n');
            if let Err(e) = append(&log, &line).await {
                tracing::warn!("writing {}: {e}", log.display());
            }
        }
    }))
}

/// Copies what a container writes to its terminal into its log (as
/// stdout; a terminal has no stderr), without waiting for a newline, until
/// the terminal is closed. Blocking: runs on a thread of its own.
pub fn copy_terminal(mut master: std::fs::File, log: &Path) {
    use std::io::{Read, Write};
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match master.read(&mut buf) {
            // EIO once no process holds the terminal any more.
            Ok(0) => return,
            Ok(n) => n,
            // The master is non-blocking (attach writes to it): wait.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                use std::os::fd::AsRawFd;
                let mut pfd = libc::pollfd {
                    fd: master.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one descriptor we hold.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut out = Vec::new();
        let ts = k8s_openapi::jiff::Timestamp::now();
        for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
            let (text, tag) = match piece.strip_suffix(b"\n") {
                Some(t) => (t, "F"),
                None => (piece, "P"),
            };
            out.extend_from_slice(format!("{ts:.9} stdout {tag} ").as_bytes());
            out.extend_from_slice(text);
            out.push(b'\n');
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(&out));
        if let Err(e) = written {
            tracing::warn!("writing {}: {e}", log.display());
        }
    }
}

async fn append(log: &Path, line: &[u8]) -> std::io::Result<()> {
    if tokio::fs::metadata(log)
        .await
        .is_ok_and(|m| m.len() > MAX_BYTES)
    {
        let rotated = log.with_extension("log.1");
        tokio::fs::rename(log, rotated).await?;
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await?;
    f.write_all(line).await
}
