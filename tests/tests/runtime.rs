//! The runtime helper runs real containers through libcontainer: output,
//! exit codes, signals, and cleanup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::cluster::binary;
use kestrel_agent::pods::spec::{config_json, ContainerSpec};
use kestrel_agent::runtime::Runtime;
use tokio::io::AsyncReadExt;

/// A root filesystem with Debian's static busybox and a few applets.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed (cargo xtask setup)");
    for applet in ["sh", "echo", "sleep", "hostname", "cat", "id"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// Removes the test's cgroup parent from every hierarchy (libcontainer
/// removes only the container's own leaf).
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            if let Ok(entries) = std::fs::read_dir(base) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir(e.path().join(self.0.trim_start_matches('/')));
                }
            }
            let _ = std::fs::remove_dir(Path::new(base).join(self.0.trim_start_matches('/')));
        }
    }
}

/// A container runs its command with the configured hostname and user,
/// writes to a FIFO the agent reads, and its exit code is reported; a
/// sleeping one is stopped by a signal; deleted containers leave nothing.
#[test]
fn runtime_helper_runs_containers_and_reports_exits() {
    harness::require_root("containers need root");
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let prefix = harness::names::unique("rt");
    let _cg = CgroupParent(format!("/{prefix}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let state = dir.path().join("state");
        let runtime = Runtime::connect_or_spawn(
            &binary("agent"),
            &state,
            &dir.path().join("runtime.sock"),
            &dir.path().join("helper.log"),
        )
        .await
        .expect("the runtime helper starts");
        let mut exits = runtime.exits();

        let bundle = dir.path().join("b1");
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = ContainerSpec {
            rootfs: rootfs.clone(),
            args: vec![
                "sh".into(),
                "-c".into(),
                "echo hello from $(hostname) as $(id -u); exit 3".into(),
            ],
            env: vec!["PATH=/bin".into()],
            hostname: "box-one".into(),
            uid: 0,
            cgroups_path: format!("/{prefix}/c1"),
            no_new_privileges: true,
            memory_limit: Some(64 << 20),
            ..Default::default()
        };
        std::fs::write(bundle.join("config.json"), config_json(&spec).to_string()).unwrap();
        let fifo = dir.path().join("c1.out");
        mkfifo(&fifo);
        let mut out = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .unwrap();
        let created = runtime
            .create(
                &format!("{prefix}-c1"),
                &bundle,
                Some(fifo.clone()),
                Some(fifo.clone()),
                None,
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create: {e}\n{}",
                    std::fs::read_to_string(dir.path().join("helper.log")).unwrap_or_default()
                )
            });
        assert_eq!(created.status, "created");
        let pid = created.pid.expect("a created container has an init pid");
        runtime.start(&format!("{prefix}-c1")).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = exits.recv().await.unwrap();
                if e.pid == pid {
                    return e;
                }
            }
        })
        .await
        .expect("the container's exit is reported");
        assert_eq!(exit.code, 3);
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), out.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            "hello from box-one as 0\n"
        );
        let st = runtime.state(&format!("{prefix}-c1")).await.unwrap();
        assert_eq!(st.status, "stopped");
        runtime
            .delete(&format!("{prefix}-c1"), false)
            .await
            .unwrap();
        assert!(!state.join(format!("{prefix}-c1")).exists());
        runtime
            .delete(&format!("{prefix}-c1"), false)
            .await
            .expect("deleting twice is fine");

        // A long-running container is stopped by SIGTERM... which a shell
        // as PID 1 ignores, so SIGKILL it is.
        let bundle = dir.path().join("b2");
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = ContainerSpec {
            args: vec!["sleep".into(), "1000".into()],
            cgroups_path: format!("/{prefix}/c2"),
            hostname: "box-two".into(),
            ..spec
        };
        std::fs::write(bundle.join("config.json"), config_json(&spec).to_string()).unwrap();
        let id = format!("{prefix}-c2");
        let pid = runtime
            .create(&id, &bundle, None, None, None)
            .await
            .unwrap()
            .pid
            .unwrap();
        runtime.start(&id).await.unwrap();
        assert_eq!(runtime.state(&id).await.unwrap().status, "running");
        let listed = runtime.list().await.unwrap();
        assert!(listed.iter().any(|c| c.id == id && c.pid == Some(pid)));
        runtime.kill(&id, libc::SIGKILL).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = exits.recv().await.unwrap();
                if e.pid == pid {
                    return e;
                }
            }
        })
        .await
        .expect("the killed container's exit is reported");
        assert_eq!(
            (exit.code, exit.signal),
            (128 + libc::SIGKILL, Some(libc::SIGKILL))
        );
        runtime.delete(&id, true).await.unwrap();
    });
    // The helper keeps running for a restarted agent; this test is done with it.
    let pidfile = std::process::Command::new("pkill")
        .args([
            "-f",
            &format!(
                "runtime-helper --root {}",
                dir.path().join("state").display()
            ),
        ])
        .status();
    let _ = pidfile;
}
