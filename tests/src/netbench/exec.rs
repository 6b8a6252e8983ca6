//! Starting what measures inside a namespace: entering it (a process or
//! a thread), its cgroup and CPU, and running it to an end in bounded time.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub use crate::net::in_netns_at as in_ns;

/// The CPU request/response runs pin both their ends to: the last one
/// this process may run on, or None with fewer than two (nothing else
/// would be left for the rest of the testbed).
///
/// On one CPU a transaction costs the CPU time of both stacks and the path
/// between them. With the ends on two CPUs of a VM, each message waits for
/// the other idle vCPU to wake, which costs more than any path and makes
/// every path look alike; whether it waits depends on what else the
/// machine runs at that moment.
pub fn rr_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: a valid buffer of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return None;
    }
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: i is below CPU_SETSIZE.
        .filter(|i| unsafe { libc::CPU_ISSET(*i, &set) })
        .collect();
    (allowed.len() >= 2).then(|| allowed[allowed.len() - 1])
}

/// Makes `cmd` run on CPU `cpu` only.
pub(super) fn pin(cmd: &mut Command, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu is below CPU_SETSIZE (rr_cpu found it with CPU_ISSET).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity is async-signal-safe; the set is copied
    // into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `f` on a short-lived thread that has entered the namespace at `ns`
/// (setns moves only the calling thread, so ours stays where it is).
pub fn on_ns_thread<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        crate::forward::enter(&ns)
            .with_context(|| format!("enter the network namespace {}", ns.display()))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a namespace thread panicked"))?
}

/// Lets one client namespace open tens of thousands of short connections a
/// second (TCP_CRR): the whole port range, and reuse of ports in TIME_WAIT.
/// Both are per-namespace settings.
pub fn tune_client(ns: &Path) -> Result<()> {
    on_ns_thread(ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        Ok(())
    })
}

/// Waits until something listens on TCP `port` in the namespace at `ns`
/// (read from its /proc/net/tcp, so the server sees no probe connection).
pub fn wait_listening(ns: &Path, port: u16, timeout: Duration) -> Result<()> {
    let want = format!(":{port:04X}");
    on_ns_thread(ns, move || {
        let deadline = Instant::now() + timeout;
        loop {
            // thread-self: /proc/self/net would show the main thread's namespace.
            let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
            let listening = tcp.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
            });
            if listening {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nothing listens on port {port} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Runs `cmd` to its end, with `input` on its stdin, and returns its
/// stdout; kills it after `timeout`.
pub fn run_bounded(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        // Small enough for the pipe's buffer; dropping stdin sends EOF.
        stdin.write_all(input.as_bytes())?;
    }
    let mut stdout = child.stdout.take().context("piped stdout")?;
    let mut stderr = child.stderr.take().context("piped stderr")?;
    // Readers on their own threads: a full pipe would stall the child.
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{:?} still ran after {timeout:?}", cmd.get_program());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    ensure!(
        status.success(),
        "{:?} {:?} failed ({status}): {}{}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        err.trim(),
        out.chars().take(500).collect::<String>()
    );
    Ok(out)
}

/// Makes `cmd` start in the cgroup v2 directory `dir`.
pub(super) fn join_cgroup(cmd: &mut Command, dir: &Path) -> Result<()> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .with_context(|| format!("open {}/cgroup.procs", dir.display()))?;
    let fd: OwnedFd = procs.into();
    // SAFETY: write(2) is async-signal-safe; "0" moves the writing process
    // itself. The Command keeps the fd alive in the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
