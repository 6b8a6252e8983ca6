//! Writes the files of a configMap, secret, downwardAPI or projected volume
//! so that containers see every update whole, and so that nothing a
//! container left in the volume can steer the agent's writes elsewhere.
//!
//! Each update goes into a fresh directory `..<timestamp>` inside the
//! volume directory; `..data` is a symlink to the current one, swapped by
//! renaming a new symlink over it; the names users see are symlinks into
//! `..data`. Every file is created relative to a directory descriptor with
//! `O_NOFOLLOW | O_EXCL`, every directory opened with `O_NOFOLLOW`, and old
//! generations are removed through descriptors without following links, so
//! a symlink a container planted (to a host file or directory) is at most
//! removed, never written through, chmodded or descended into.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The symlink naming the current generation.
const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Relative path inside the volume (`a`, `dir/b`).
    pub path: String,
    pub data: Vec<u8>,
    /// Permission bits (Kubernetes' defaultMode or the item's mode).
    pub mode: u32,
}

/// Why a volume could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid path {0:?}: {1}")]
    Path(String, &'static str),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |err| Error::Io { what, err }
}

/// Checks a file path as Kubernetes does for volume items: relative, no
/// empty, `.` or `..` element, and no element starting with `..` (those
/// names belong to the writer).
pub fn validate_path(p: &str) -> Result<(), Error> {
    let bad = |why| Err(Error::Path(p.to_string(), why));
    if p.is_empty() {
        return bad("empty");
    }
    if p.starts_with('/') {
        return bad("absolute");
    }
    if p.len() > 4096 || p.contains('\0') {
        return bad("too long or holds NUL");
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." {
            return bad("empty or '.' element");
        }
        if c.starts_with("..") {
            return bad("an element starts with '..'");
        }
    }
    Ok(())
}

fn cstr(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Path(s.to_string(), "holds NUL"))
}

fn last_err<T>(r: libc::c_int, v: T) -> std::io::Result<T> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// Opens directory `name` under `dir`, refusing a symlink in its place.
fn open_dir_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and C string; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a descriptor openat just returned, owned by nobody else.
    last_err(fd, ()).map(|()| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The type bits of `name` under `dir`, not following a symlink; None when
/// it does not exist.
fn kind_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<Option<libc::mode_t>> {
    // SAFETY: fstatat into a zeroed stat with valid pointers.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match last_err(r, ()) {
        Ok(()) => Ok(Some(st.st_mode & libc::S_IFMT)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn readlink_at(dir: BorrowedFd, name: &CStr) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    // SAFETY: a valid buffer and length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn symlink_at(target: &CStr, dir: BorrowedFd, name: &CStr) -> std::io::Result<()> {
    // SAFETY: valid C strings and descriptor.
    let r = unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) };
    last_err(r, ())
}

/// The names in directory `dir`.
fn entries(dir: BorrowedFd) -> std::io::Result<Vec<CString>> {
    // fdopendir takes the descriptor over; give it a copy of its own.
    // SAFETY: dup of a valid descriptor; fdopendir on the copy.
    let copy = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    last_err(copy, ())?;
    let d = unsafe { libc::fdopendir(copy) };
    if d.is_null() {
        let e = std::io::Error::last_os_error();
        // SAFETY: the copy is ours when fdopendir failed.
        unsafe { libc::close(copy) };
        return Err(e);
    }
    let mut out = Vec::new();
    // SAFETY: readdir on the open stream until it returns NULL; each entry's
    // name is a NUL-terminated string valid until the next call.
    unsafe {
        libc::rewinddir(d);
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = CStr::from_ptr((*e).d_name.as_ptr());
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                out.push(name.to_owned());
            }
        }
        libc::closedir(d);
    }
    Ok(out)
}

/// Removes `name` under `dir` and, for a directory, everything in it,
/// without following a symlink anywhere: a symlink is removed itself.
pub fn remove_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(libc::S_IFDIR) => {
            let sub = open_dir_at(dir, name)?;
            for e in entries(sub.as_fd())? {
                remove_at(sub.as_fd(), &e)?;
            }
            // SAFETY: valid descriptor and C string.
            let r = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) };
            last_err(r, ())
        }
        Some(_) => {
            // SAFETY: valid descriptor and C string.
            let r = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
            last_err(r, ())
        }
    }
}

/// Makes a fresh, empty generation directory and returns its name.
fn new_generation(root: BorrowedFd) -> Result<(String, OwnedFd), Error> {
    let stamp = k8s_openapi::jiff::Timestamp::now()
        .to_string()
        .replace(['-', ':', 'T'], "_")
        .trim_end_matches('Z')
        .to_string();
    for n in 0..100 {
        let name = if n == 0 {
            format!("..{stamp}")
        } else {
            format!("..{stamp}.{n}")
        };
        let c = cstr(&name)?;
        // SAFETY: valid descriptor and C string.
        let r = unsafe { libc::mkdirat(root.as_raw_fd(), c.as_ptr(), 0o755) };
        match last_err(r, ()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(io(format!("creating {name}"))(e)),
        }
        let fd = open_dir_at(root, &c).map_err(io(format!("opening {name}")))?;
        // SAFETY: fchmod on a descriptor we own; the umask must not decide.
        unsafe { libc::fchmod(fd.as_raw_fd(), 0o755) };
        return Ok((name, fd));
    }
    Err(Error::Path(stamp, "no free generation name"))
}

/// Creates `path` (with its directories) under the generation `gen`.
fn create_file(gen: BorrowedFd, f: &File) -> Result<(), Error> {
    let parts: Vec<&str> = f.path.split('/').collect();
    let (last, dirs) = parts
        .split_last()
        .ok_or(Error::Path(f.path.clone(), "empty"))?;
    let mut cur: Option<OwnedFd> = None;
    for d in dirs {
        let c = cstr(d)?;
        let at = cur.as_ref().map_or(gen, |o| o.as_fd());
        // SAFETY: valid descriptor and C string.
        let r = unsafe { libc::mkdirat(at.as_raw_fd(), c.as_ptr(), 0o755) };
        match last_err(r, ()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(io(format!("creating the directory of {}", f.path))(e)),
        }
        let next = open_dir_at(at, &c).map_err(io(format!("opening a directory of {}", f.path)))?;
        // SAFETY: fchmod on a descriptor we own.
        unsafe { libc::fchmod(next.as_raw_fd(), 0o755) };
        cur = Some(next);
    }
    let at = cur.as_ref().map_or(gen, |o| o.as_fd());
    let c = cstr(last)?;
    // SAFETY: valid descriptor and C string; the result is checked.
    let fd = unsafe {
        libc::openat(
            at.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    last_err(fd, ()).map_err(io(format!("creating {}", f.path)))?;
    // SAFETY: the descriptor openat just returned.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(&f.data)
        .map_err(io(format!("writing {}", f.path)))?;
    // SAFETY: fchmod on the descriptor we own, after the data is in.
    let r = unsafe { libc::fchmod(file.as_raw_fd(), f.mode & 0o7777) };
    last_err(r, ()).map_err(io(format!("setting the mode of {}", f.path)))
}

/// Writes `files` as the volume's new content in `dir` (which must exist),
/// swaps them in atomically and removes what the previous content left.
pub fn write(dir: &Path, files: &[File]) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    for f in files {
        validate_path(&f.path)?;
        if !seen.insert(f.path.as_str()) {
            return Err(Error::Path(f.path.clone(), "given twice"));
        }
    }
    // A path cannot be a file and the directory of another file at once.
    for f in files {
        let prefix = format!("{}/", f.path);
        if files.iter().any(|g| g.path.starts_with(&prefix)) {
            return Err(Error::Path(f.path.clone(), "both a file and a directory"));
        }
    }
    let root = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .map(OwnedFd::from)
            .map_err(io(format!("opening {}", dir.display())))?
    };
    let root = root.as_fd();
    let (gen_name, gen) = new_generation(root)?;
    let filled = files.iter().try_for_each(|f| create_file(gen.as_fd(), f));
    if let Err(e) = filled {
        let _ = remove_at(root, &cstr(&gen_name)?);
        return Err(e);
    }
    drop(gen);

    // The swap: a new symlink renamed over `..data`.
    let (data, tmp) = (cstr(DATA)?, cstr(DATA_TMP)?);
    remove_at(root, &tmp).map_err(io(format!("removing {DATA_TMP}")))?;
    symlink_at(&cstr(&gen_name)?, root, &tmp).map_err(io(format!("creating {DATA_TMP}")))?;
    let rename = |root: BorrowedFd| {
        // SAFETY: valid descriptors and C strings.
        let r = unsafe {
            libc::renameat(
                root.as_raw_fd(),
                tmp.as_ptr(),
                root.as_raw_fd(),
                data.as_ptr(),
            )
        };
        last_err(r, ())
    };
    if rename(root).is_err() {
        // Something other than a symlink took `..data`'s place.
        remove_at(root, &data).map_err(io(format!("removing {DATA}")))?;
        rename(root).map_err(io(format!("renaming {DATA_TMP} to {DATA}")))?;
    }

    // The names users see: one symlink per top-level element.
    let tops: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.path.split('/').next())
        .collect();
    for t in &tops {
        let name = cstr(t)?;
        let target = format!("{DATA}/{t}");
        if readlink_at(root, &name).as_deref() == Some(target.as_bytes()) {
            continue;
        }
        remove_at(root, &name).map_err(io(format!("replacing {t}")))?;
        symlink_at(&cstr(&target)?, root, &name).map_err(io(format!("linking {t}")))?;
    }

    // Old generations, and whatever else is not the current content.
    for e in entries(root).map_err(io(format!("listing {}", dir.display())))? {
        let s = e.to_string_lossy();
        let keep = s == DATA || s == gen_name.as_str() || tops.contains(s.as_ref());
        if !keep {
            remove_at(root, &e).map_err(io(format!("removing {s}")))?;
        }
    }
    Ok(())
}

/// Whether `name` is a DNS label (RFC 1123), as Kubernetes requires of
/// volume names: they become directory names on the node.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn file(path: &str, data: &str, mode: u32) -> File {
        File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn generations(dir: &Path) -> Vec<String> {
        let mut g: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        g.sort();
        g
    }

    #[test]
    fn content_goes_through_data_and_updates_swap_whole() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            &[file("color", "blue", 0o644), file("sub/key", "k1", 0o400)],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(d.join("color")).unwrap(), "blue");
        assert_eq!(std::fs::read_to_string(d.join("sub/key")).unwrap(), "k1");
        assert_eq!(
            std::fs::read_link(d.join("color")).unwrap(),
            Path::new("..data/color")
        );
        let first = generations(d);
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(
            std::fs::read_link(d.join(DATA)).unwrap(),
            Path::new(&first[0])
        );
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("color"), 0o644);
        assert_eq!(mode("sub/key"), 0o400);

        write(d, &[file("color", "green", 0o600)]).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("color")).unwrap(), "green");
        assert_eq!(mode("color"), 0o600);
        assert!(!d.join("sub").exists(), "a removed key leaves no name");
        let second = generations(d);
        assert_eq!(second.len(), 1, "the old generation is gone: {second:?}");
        assert_ne!(second, first);
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let o = outside.path();
        std::fs::write(o.join("host-file"), "host").unwrap();
        std::fs::set_permissions(o.join("host-file"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::create_dir(o.join("host-dir")).unwrap();
        std::fs::write(o.join("host-dir/key"), "host key").unwrap();
        std::fs::set_permissions(o.join("host-dir"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let d = dir.path();
        let files = [file("a", "one", 0o644), file("sub/key", "two", 0o644)];
        write(d, &files).unwrap();

        // What a container with write access could leave: the generation's
        // directory and the visible names swapped for links to the host.
        let gen = d.join(&generations(d)[0]);
        std::fs::remove_dir_all(gen.join("sub")).unwrap();
        std::os::unix::fs::symlink(o.join("host-dir"), gen.join("sub")).unwrap();
        std::fs::remove_file(d.join("a")).unwrap();
        std::os::unix::fs::symlink(o.join("host-file"), d.join("a")).unwrap();
        std::os::unix::fs::symlink(o.join("host-dir"), d.join("..data_tmp")).unwrap();
        std::os::unix::fs::symlink(o, d.join("..2000_01_01_00_00_00.1")).unwrap();

        write(
            d,
            &[file("a", "three", 0o666), file("sub/key", "four", 0o666)],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "three");
        assert_eq!(std::fs::read_to_string(d.join("sub/key")).unwrap(), "four");
        assert_eq!(
            std::fs::read_to_string(o.join("host-file")).unwrap(),
            "host"
        );
        assert_eq!(
            std::fs::read_to_string(o.join("host-dir/key")).unwrap(),
            "host key"
        );
        let mode = |p: &str| std::fs::metadata(o.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("host-file"), 0o640);
        assert_eq!(mode("host-dir"), 0o750);
        assert_eq!(
            std::fs::read_dir(o.join("host-dir")).unwrap().count(),
            1,
            "nothing was added to the host directory"
        );
        assert_eq!(generations(d).len(), 1, "{:?}", generations(d));

        // A directory planted where `..data` was is replaced, not entered.
        std::fs::remove_file(d.join(DATA)).unwrap();
        std::fs::create_dir(d.join(DATA)).unwrap();
        std::os::unix::fs::symlink(o.join("host-dir"), d.join(DATA).join("sub")).unwrap();
        write(d, &[file("sub/key", "five", 0o644)]).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("sub/key")).unwrap(), "five");
        assert_eq!(
            std::fs::read_to_string(o.join("host-dir/key")).unwrap(),
            "host key"
        );
    }

    #[test]
    fn bad_paths_and_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "..data",
            "a//b",
            "./a",
            "a/..x",
        ] {
            assert!(
                write(dir.path(), &[file(p, "x", 0o644)]).is_err(),
                "{p:?} was accepted"
            );
        }
        assert!(write(dir.path(), &[file("a", "", 0o644), file("a/b", "", 0o644)]).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(is_dns_label("config-1"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "../x", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }
}
