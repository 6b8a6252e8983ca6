//! TCP forwarding between network namespaces, the way kind publishes a
//! node container's port on the host: a listener in one namespace, each
//! connection relayed to an address in another.
//!
//! A socket stays in the namespace it was created in, so the relay thread
//! binds its listener after entering the listening namespace, then enters
//! the target namespace for its outgoing connections.

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: a valid namespace fd; setns affects this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A relay from `listen` (in one namespace) to `target` (in another),
/// stopped on drop.
pub struct Forward {
    listener: RawFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub listen: SocketAddr,
}

impl Forward {
    /// Starts relaying. `None` for a namespace means the test's own.
    pub fn start(
        listen_ns: Option<&Path>,
        listen: SocketAddr,
        target_ns: Option<&Path>,
        target: SocketAddr,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let listen_ns: Option<PathBuf> = listen_ns.map(Path::to_path_buf);
        // The thread may leave our namespace before it connects: keep a way
        // back to it.
        let own: PathBuf = format!("/proc/{}/task/{}/ns/net", std::process::id(), gettid()).into();
        let own = File::open(own)?;
        let target_ns = target_ns.map(Path::to_path_buf);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let setup = (|| -> io::Result<TcpListener> {
                if let Some(ns) = &listen_ns {
                    enter(ns)?;
                }
                let l = TcpListener::bind(listen)?;
                match &target_ns {
                    Some(ns) => enter(ns)?,
                    // SAFETY: a valid namespace fd, this thread only.
                    None => {
                        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                Ok(l)
            })();
            let listener = match setup {
                Ok(l) => {
                    let _ = tx.send(Ok((l.as_raw_fd(), l.local_addr())));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let _ = client.set_nodelay(true);
                match TcpStream::connect(target) {
                    Ok(upstream) => {
                        let _ = upstream.set_nodelay(true);
                        relay(client, upstream);
                    }
                    // Closing the client at once tells it nobody is there.
                    Err(_) => drop(client),
                }
            }
        });
        let (fd, addr) = rx
            .recv()
            .map_err(|_| io::Error::other("forwarding thread died"))??;
        Ok(Self {
            listener: fd,
            stop,
            thread: Some(thread),
            listen: addr?,
        })
    }
}

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// Copies both ways until either side closes.
fn relay(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
    };
    pipe(a, b2);
    pipe(b, a2);
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Shutting a listening socket down wakes a thread blocked in accept.
        // SAFETY: the fd belongs to the listener the thread still owns.
        unsafe { libc::shutdown(self.listener, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
