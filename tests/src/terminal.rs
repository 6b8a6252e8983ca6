//! kubectl driven from a pseudo-terminal, for the stories of `-it`.

use std::time::Duration;

use crate::kubectl::Kubectl;
use crate::process::wait_for;

/// kubectl on a pseudo-terminal of the test's own, as a user's shell would
/// run it: `-t` needs a terminal on stdin, and takes its size from stdout.
pub struct Terminal {
    master: std::fs::File,
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: tempfile::NamedTempFile,
}

impl Terminal {
    pub fn winsize(rows: u16, cols: u16) -> libc::winsize {
        libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }

    /// Starts `kubectl args` with a `rows`x`cols` terminal as its
    /// controlling terminal, stdin and stdout.
    pub fn spawn(k: &Kubectl, args: &[&str], rows: u16, cols: u16) -> Self {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (-1, -1);
        let ws = Self::winsize(rows, cols);
        // SAFETY: openpty fills in two descriptors we then own.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptors from openpty, owned from here on.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        };
        // kubectl must hold only the slave, or the master would never
        // report the hang-up when it exits.
        // SAFETY: fcntl on our own descriptor.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&master),
                libc::F_SETFD,
                libc::FD_CLOEXEC,
            )
        };
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = {
            let mut cmd = k.command(args);
            cmd.stdin(slave.try_clone().unwrap())
                .stdout(slave)
                .stderr(stderr.reopen().unwrap());
            // A session of its own with the PTY as controlling terminal, so
            // that a size change reaches kubectl as SIGWINCH.
            // SAFETY: setsid and ioctl are async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.spawn().unwrap()
            // cmd, and with it our copy of the slave, is dropped here.
        };
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut r, out) = (master.try_clone().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once kubectl, the last holder of the slave, exits.
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            master,
            child,
            output,
            stderr,
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// What the user sees, and what kubectl said on stderr.
    pub fn screen(&self) -> String {
        format!(
            "--- terminal\n{}\n--- kubectl stderr\n{}",
            self.output(),
            std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
        )
    }

    pub fn type_in(&mut self, keys: &str) {
        use std::io::Write;
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Waits until the output after byte `from` contains `text`.
    pub fn expect(&self, from: usize, text: &str, secs: u64) -> bool {
        wait_for(Duration::from_secs(secs), || {
            self.output().get(from..)?.contains(text).then_some(())
        })
        .is_some()
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = Self::winsize(rows, cols);
        // SAFETY: TIOCSWINSZ on our own PTY master with a valid winsize.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.master),
                libc::TIOCSWINSZ,
                &ws,
            )
        };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// kubectl's exit status; kills it after `secs`.
    pub fn wait(&mut self, secs: u64) -> Option<i32> {
        let status = wait_for(Duration::from_secs(secs), || self.child.try_wait().unwrap());
        match status {
            Some(s) => s.code(),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("kubectl did not exit in {secs} s\n{}", self.screen());
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
