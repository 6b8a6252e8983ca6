//! A pod's sandbox: its network, IPC and UTS namespaces, held open by bind
//! mounts (no pause process), and the files every container of the pod
//! shares (/etc/hosts, /etc/hostname, /etc/resolv.conf).

use std::path::{Path, PathBuf};

/// Paths of one pod's sandbox.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub dir: PathBuf,
}

const KINDS: [(&str, libc::c_int); 3] = [
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
];

fn cstr(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("NUL in path"))
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    text.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_ref()))
}

impl Sandbox {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn ns_path(&self, kind: &str) -> PathBuf {
        self.dir.join("ns").join(kind)
    }

    /// Whether the namespaces exist (a restarted agent finds them again).
    pub fn exists(&self) -> bool {
        KINDS.iter().all(|(k, _)| is_mountpoint(&self.ns_path(k)))
    }

    /// Makes the namespaces (on a short-lived thread, since unshare acts on
    /// the calling thread only) and sets the hostname in the new UTS one.
    pub fn create(&self, hostname: &str, hosts: &str, resolv: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir.join("ns"))?;
        std::fs::write(self.dir.join("hostname"), format!("{hostname}\n"))?;
        std::fs::write(self.dir.join("hosts"), hosts)?;
        std::fs::write(self.dir.join("resolv.conf"), resolv)?;
        if self.exists() {
            return Ok(());
        }
        for (k, _) in KINDS {
            std::fs::File::create(self.ns_path(k))?;
        }
        let this = self.clone();
        let hostname = hostname.to_string();
        std::thread::spawn(move || -> std::io::Result<()> {
            let flags = KINDS.iter().fold(0, |f, (_, flag)| f | flag);
            // SAFETY: unshare on this thread only; it ends right after.
            if unsafe { libc::unshare(flags) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a valid buffer and length.
            if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A new network namespace starts with loopback down; pods expect
            // localhost to work.
            loopback_up()?;
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            for (k, _) in KINDS {
                let src = cstr(Path::new(&format!("/proc/self/task/{tid}/ns/{k}")))?;
                let dst = cstr(&this.ns_path(k))?;
                // SAFETY: valid C strings; a plain bind mount.
                let r = unsafe {
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
    }

    /// Unmounts the namespaces and removes the sandbox directory.
    pub fn destroy(&self) -> std::io::Result<()> {
        for (k, _) in KINDS {
            let p = self.ns_path(k);
            if is_mountpoint(&p) {
                let c = cstr(&p)?;
                // SAFETY: a valid C string; MNT_DETACH never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Sets `lo` up in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed ifreq is valid; the name fits.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: ioctls on our socket with a valid ifreq.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(err);
    }
    Ok(())
}

/// Mounts the image layers (bottom first) and a writable upper layer as an
/// overlay at `target`. The layers are shared, never copied.
pub fn mount_rootfs(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(upper)?;
    std::fs::create_dir_all(work)?;
    std::fs::create_dir_all(target)?;
    if is_mountpoint(target) {
        return Ok(());
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let (src, ty, dst, data) = (
        cstr(Path::new("overlay"))?,
        cstr(Path::new("overlay"))?,
        cstr(target)?,
        cstr(Path::new(&opts))?,
    );
    // SAFETY: valid C strings.
    if unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            ty.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    } != 0
    {
        return Err(std::io::Error::other(format!(
            "mounting the overlay at {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Unmounts what `mount_rootfs` mounted (idempotent).
pub fn unmount(target: &Path) {
    if is_mountpoint(target) {
        if let Ok(c) = cstr(target) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
