//! Asking the kernel where the load balancer is attached, for `agent bpf
//! lb`: the cgroup a pinned link holds, and how many programs run on each
//! hook there (one per hook once a restarted agent replaced its links).
//! aya has no call for either, so these are the two `bpf(2)` commands.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// enum bpf_cmd in <linux/bpf.h>.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;

/// The sock_addr hooks (enum bpf_attach_type) by program name.
pub const HOOKS: [(&str, u32); 4] = [
    ("lb_connect4", 10),     // BPF_CGROUP_INET4_CONNECT
    ("lb_sendmsg4", 14),     // BPF_CGROUP_UDP4_SENDMSG
    ("lb_recvmsg4", 19),     // BPF_CGROUP_UDP4_RECVMSG
    ("lb_getpeername4", 29), // BPF_CGROUP_INET4_GETPEERNAME
];

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded buffer larger than every union member
    // the two commands read or write.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Opens the object pinned at `pin`.
fn open_pin(pin: &Path) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    let mut attr = [0u64; 16];
    // pathname, then bpf_fd and file_flags (zero).
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", pin.display())))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the cgroup the link pinned at `pin` is attached to.
pub fn link_cgroup_id(pin: &Path) -> io::Result<u64> {
    let link = open_pin(pin)?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then a union
    // aligned to 8 whose cgroup member starts with the u64 cgroup_id.
    let mut info = [0u64; 16];
    let mut attr = [0u64; 16];
    let fd = link.as_raw_fd() as u32;
    // bpf_fd and info_len (u32 each), then the info pointer.
    attr[0] = u64::from(fd) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[2])
}

/// The directory of the cgroup with id `id` under the v2 mount `mount`: a
/// cgroup's id is the inode number of its directory.
pub fn find_cgroup(mount: &Path, id: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![mount.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    None
}

/// How many programs are attached directly at cgroup `dir` on hook
/// `attach_type`.
pub fn attached(dir: &Path, attach_type: u32) -> io::Result<u32> {
    let group = std::fs::File::open(dir)?;
    let mut attr = [0u64; 16];
    // target_fd, attach_type; query_flags and attach_flags zero; no id
    // buffer (prog_ids 0, prog_cnt 0), so only the count comes back.
    attr[0] = u64::from(group.as_raw_fd() as u32) | (u64::from(attach_type) << 32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(attr[3] as u32)
}
