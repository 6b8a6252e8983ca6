//! Machines for the install tests: a Debian root file system booted by
//! systemd-nspawn, so `install.sh` runs against a real systemd.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::dist::{release, stderr, stdout};
use crate::process::{wait_for, Guarded};

/// What debootstrap is asked for: the cache path is keyed by it, so a change
/// here builds a new tree instead of reusing one that lacks a package.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const DEBOOTSTRAP_ARGS: &[&str] = &[
    "--variant=minbase",
    "--include=systemd,systemd-sysv,dbus,etcd-server,curl,openssl,libseccomp2,iproute2,ca-certificates",
];

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases, for
/// a cache path that outlives the binary.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A Debian 12 root file system with systemd, etcd-server and what
/// install.sh needs, made once with debootstrap from Debian's mirror and
/// kept in `~/.cache/kestrel/` under a name keyed by what it was built from.
///
/// Tests of one process and of several run at once may all want it on a
/// cold cache: the first to take the lock builds it in a directory of its
/// own and renames that into place, so the tree at the cache path is
/// always whole; the others wait on the lock and find it there.
pub fn debian_rootfs() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cache = PathBuf::from(home).join(".cache/kestrel");
    let mut key = vec![SUITE, MIRROR];
    key.extend(DEBOOTSTRAP_ARGS);
    let base = cache.join(format!("rootfs-{SUITE}-{:016x}", fnv1a(&key)));
    if base.exists() {
        return base;
    }
    std::fs::create_dir_all(&cache).expect("mkdir");
    let lock = std::fs::File::create(cache.join("rootfs.lock")).expect("lock file");
    // Each call opens the file anew, so threads of this process exclude
    // each other as well as other processes. The lock goes with the file.
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    if base.exists() {
        return base;
    }
    // Holding the lock, no one else is building: partial trees are left
    // over from killed runs.
    for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("rootfs-partial-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let partial = cache.join(format!("rootfs-partial-{}", std::process::id()));
    eprintln!(
        "building {} with debootstrap (once; about two minutes)",
        base.display()
    );
    let out = Command::new("debootstrap")
        .args(DEBOOTSTRAP_ARGS)
        .arg(SUITE)
        .arg(&partial)
        .arg(MIRROR)
        .output()
        .expect("debootstrap is missing: `cargo xtask setup` installs it");
    if !out.status.success() {
        // Its log is in the tree about to go: keep the end of it.
        let log = std::fs::read_to_string(partial.join("debootstrap/debootstrap.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let _ = std::fs::remove_dir_all(&partial);
        panic!(
            "debootstrap: {}{}\nend of debootstrap.log:\n{}",
            stdout(&out),
            stderr(&out),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    std::fs::rename(&partial, &base).expect("rename the built tree into place");
    base
}

/// A machine: the Debian root booted by systemd-nspawn with systemd as its
/// init, in a network namespace the test made. The root is read-only with
/// a tmpfs over it (`--volatile=overlay`), so the cached tree is never
/// changed and nothing is copied; the release comes in by a read-only bind
/// mount at /opt/kestrel, and `/root/xfer` is a directory shared with the
/// test. Killed on drop.
pub struct Machine {
    nspawn: Guarded,
    leader: u32,
    /// The host side of `/root/xfer`.
    pub xfer: PathBuf,
}

impl Machine {
    pub fn boot(base: &Path, dir: &Path, name: &str, netns: &crate::net::Netns) -> Self {
        let xfer = dir.join(format!("{name}-xfer"));
        std::fs::create_dir_all(&xfer).expect("mkdir");
        let log = std::fs::File::create(dir.join(format!("{name}.console"))).expect("log");
        // systemd sets the host name from /etc/hostname, over nspawn's.
        let hostname = dir.join(format!("{name}.hostname"));
        std::fs::write(&hostname, format!("{name}\n")).expect("hostname");
        // --register=no and --keep-unit: no machined or host systemd needed.
        let nspawn = Guarded::spawn(
            "systemd-nspawn",
            Command::new("systemd-nspawn")
                .arg("--directory")
                .arg(base)
                .args(["--boot", "--volatile=overlay"])
                .arg(format!("--machine={name}"))
                .arg(format!("--hostname={name}"))
                .arg(format!("--bind-ro={}:/etc/hostname", hostname.display()))
                .arg(format!(
                    "--network-namespace-path={}",
                    netns.path().display()
                ))
                .arg(format!("--bind-ro={}:/opt/kestrel", release().display()))
                .arg(format!(
                    "--bind-ro={}:/usr/local/lib/kubectl",
                    crate::kubectl::binary().display()
                ))
                .arg(format!("--bind={}:/root/xfer", xfer.display()))
                .args(["--register=no", "--keep-unit", "--quiet"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        )
        .expect("systemd-nspawn is missing: `cargo xtask setup` installs systemd-container");
        let pid = nspawn.pid();
        // nspawn forks short-lived helpers too: the leader is the child
        // that has become systemd.
        let leader = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()?
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .find(|c| {
                    std::fs::read_to_string(format!("/proc/{c}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
        })
        .expect("the container's init started");
        let mut machine = Self {
            nspawn,
            leader,
            xfer,
        };
        let started = std::time::Instant::now();
        let booted = wait_for(Duration::from_secs(150), || {
            if !machine.nspawn.is_running() {
                return Some(false);
            }
            let out = machine.sh("systemctl is-system-running");
            let state = stdout(&out);
            (state.starts_with("running") || state.starts_with("degraded")).then_some(true)
        });
        if booted != Some(true) {
            let state = machine.sh(
                "systemctl is-system-running; systemctl list-jobs --no-pager; systemctl --failed --no-pager",
            );
            panic!(
                "{name} did not boot: {}{}\nconsole:\n{}",
                stdout(&state),
                stderr(&state),
                std::fs::read_to_string(dir.join(format!("{name}.console"))).unwrap_or_default()
            );
        }
        eprintln!("{name} booted in {:?}", started.elapsed());
        machine
    }

    /// Runs a shell command inside the machine, as root, with a clean
    /// environment.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "sh",
                "-c",
                script,
            ])
            .output()
            .expect("nsenter")
    }

    /// Like `sh`, failing with the output unless it exits 0.
    pub fn run(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The container's init is PID 1 of its PID namespace: killing it
        // ends every process in the container at once, and nspawn exits
        // with it, taking its mounts along.
        // SAFETY: plain signal delivery to a process of ours.
        unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
        let _ = wait_for(Duration::from_secs(10), || {
            (!self.nspawn.is_running()).then_some(())
        });
        self.nspawn.kill();
    }
}

/// Machine `i` of a test's machines, which must still be up.
pub fn m(machines: &[Option<Machine>], i: usize) -> &Machine {
    machines[i].as_ref().expect("machine is up")
}
