//! Unpacks one layer tarball into a directory that works as an overlayfs
//! lowerdir: OCI whiteouts become overlay whiteouts, so stacking the layer
//! directories gives the image's filesystem without ever merging them.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

use super::{Error, IoContext, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Feeds everything read through a hash, so the diff_id comes out of the
/// same single pass that unpacks the layer.
pub(super) struct HashingReader<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

/// Opens a possibly compressed tar stream; compression is told by magic
/// bytes because `docker save` archives do not record media types.
pub(super) fn decompressed(path: &Path, what: &str) -> Result<Box<dyn Read>> {
    let file = File::open(path).at(path)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let head = reader.fill_buf().at(path)?;
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)));
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz"
    } else if head.starts_with(b"BZh") {
        "bzip2"
    } else {
        return Ok(Box::new(reader));
    };
    Err(Error::UnsupportedCompression {
        what: what.to_string(),
        compression,
    })
}

/// Whether the file starts with the gzip magic.
pub(super) fn is_gzip(path: &Path) -> Result<bool> {
    let mut head = [0u8; 2];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .at(path)?;
    Ok(n == 2 && head == [0x1f, 0x8b])
}

/// Unpacks the layer blob at `blob` into `dest` (which must not exist yet)
/// and returns the diff_id: the sha256 of the uncompressed tar.
pub fn unpack_layer(blob: &Path, dest: &Path, layer: &str) -> Result<String> {
    let mut hashing = HashingReader::new(decompressed(blob, &format!("layer {layer}"))?);
    fs::DirBuilder::new().mode(0o755).create(dest).at(dest)?;
    let fail = |entry: &Path, reason: String| Error::LayerEntry {
        layer: layer.to_string(),
        entry: entry.display().to_string(),
        reason,
    };

    let mut archive = tar::Archive::new(&mut hashing);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    // xattrs are applied below, filtered: an image must not be able to set
    // trusted.overlay.* (redirects, metacopy) on the lowerdirs.
    archive.set_unpack_xattrs(false);
    let entries = archive
        .entries()
        .map_err(|e| fail(Path::new(""), e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(Path::new(""), e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| fail(Path::new(""), e.to_string()))?
            .into_owned();
        let rel = relative(&raw).map_err(|reason| fail(&raw, reason.to_string()))?;
        let (Some(name), parent) = (rel.file_name(), rel.parent().unwrap_or(Path::new(""))) else {
            // The layer root itself ("./"): the lowerdir's own mode does not matter.
            continue;
        };
        let name = name.to_string_lossy().into_owned();

        if name == OPAQUE_MARKER {
            let dir = ensure_dir(dest, parent).map_err(|r| fail(&raw, r))?;
            set_xattr(&dir, "trusted.overlay.opaque", b"y").at(&dir)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            // `.wh..wh.*` other than the opaque marker is aufs bookkeeping.
            if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() {
                continue;
            }
            let path = ensure_dir(dest, parent)
                .map_err(|r| fail(&raw, r))?
                .join(hidden);
            // A whiteout only hides lower layers; a same-layer entry stays.
            if fs::symlink_metadata(&path).is_err() {
                mknod(&path, libc::S_IFCHR, 0, 0).at(&path)?;
            }
            continue;
        }

        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            // tar would write these as regular files.
            let path = ensure_dir(dest, parent)
                .map_err(|r| fail(&raw, r))?
                .join(&name);
            unpack_special(&entry, &path).map_err(|e| fail(&raw, e.to_string()))?;
            continue;
        }

        let xattrs = allowed_xattrs(&mut entry);
        // unpack_in refuses to write through symlinks leading out of `dest`
        // and hardlinks to files outside it.
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(fail(&raw, "path leaves the layer".into())),
            Err(e) => return Err(fail(&raw, chain(&e))),
        }
        if !xattrs.is_empty() && kind != EntryType::Symlink {
            let path = dest.join(&rel);
            for (key, value) in xattrs {
                set_xattr(&path, &key, &value).at(&path)?;
            }
        }
    }
    // The tar end marker may be followed by padding that is part of the diff_id.
    io::copy(&mut hashing, &mut io::sink()).at(blob)?;
    Ok(hashing.digest())
}

/// tar wraps the OS error as a source that `Display` leaves out.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The entry's path inside the layer; `..` and absolute paths are refused
/// outright rather than silently skipped or re-rooted.
pub(super) fn relative(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("path is absolute"),
        }
    }
    Ok(rel)
}

/// Creates the directories of `rel` under `root` without following any
/// symlink, so whiteouts and device nodes cannot land outside the layer.
fn ensure_dir(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    for c in rel.components() {
        path.push(c);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} is not a directory (a symlink or file in this layer)",
                    path.display()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .mode(0o755)
                .create(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(path)
}

fn unpack_special<R: Read>(entry: &tar::Entry<'_, R>, path: &Path) -> io::Result<()> {
    let header = entry.header();
    let mode = header.mode()? & 0o7777;
    let kind = match header.entry_type() {
        EntryType::Char => libc::S_IFCHR,
        EntryType::Block => libc::S_IFBLK,
        _ => libc::S_IFIFO,
    };
    // Only devices have numbers: Python's tarfile leaves the fields blank
    // for a FIFO, which tar reads as an error.
    let (major, minor) = if kind == libc::S_IFIFO {
        (0, 0)
    } else {
        (
            header.device_major()?.unwrap_or(0),
            header.device_minor()?.unwrap_or(0),
        )
    };
    if let Ok(m) = fs::symlink_metadata(path) {
        if m.is_dir() {
            fs::remove_dir_all(path)?;
        } else {
            fs::remove_file(path)?;
        }
    }
    mknod(path, kind, major, minor)?;
    let uid = u32::try_from(header.uid()?).unwrap_or(u32::MAX);
    let gid = u32::try_from(header.gid()?).unwrap_or(u32::MAX);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    // mknod's mode is filtered by the umask; set the exact one afterwards.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

fn allowed_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(|e| e.ok())
        .filter_map(|e| {
            let key = e.key().ok()?.strip_prefix("SCHILY.xattr.")?;
            (key.starts_with("security.") || key.starts_with("user."))
                .then(|| (key.to_string(), e.value_bytes().to_vec()))
        })
        .collect()
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn set_xattr(path: &Path, key: &str, value: &[u8]) -> io::Result<()> {
    let c = cstring(path)?;
    let k = CString::new(key)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated and `value` outlives the call.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
