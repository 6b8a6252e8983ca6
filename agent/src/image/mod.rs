//! The node's image store: content-addressed blobs, each layer unpacked once
//! into a plain directory (stacked later as overlayfs lowerdirs), and an
//! `index.json` naming the images. The store directory is itself an OCI image
//! layout (plus `layers/` and `tmp/`), so standard tools can read it.
//!
//! All operations are blocking; async callers use `spawn_blocking`.

mod archive;
pub mod build;
mod oci;
pub mod pull;
pub mod push;
mod store;
mod unpack;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

pub use store::{ImageStore, Ingest};
pub use unpack::unpack_layer;

/// An image ready to run: the layer directories to stack and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The normalized reference it was resolved by.
    pub reference: String,
    /// Digest of the manifest (what Kubernetes shows as the image's repo digest).
    pub digest: String,
    /// Digest of the config (the image ID, as `crictl images` shows it).
    pub id: String,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// The parts of the image config that decide how a container starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// One named image as `list` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub reference: String,
    pub digest: String,
    /// Manifest, config and (compressed) layer blobs, in bytes.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "image archive {} has neither index.json nor manifest.json; \
         expected an OCI image layout or a `docker save` tarball",
        archive.display()
    )]
    UnknownArchive { archive: PathBuf },
    #[error("image archive {}: {reason}", archive.display())]
    BadArchive { archive: PathBuf, reason: String },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error(
        "blob {expected} is corrupt: its content hashes to {actual}; fetch or import it again"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error(
        "layer {layer} unpacks to diff_id {actual} but the image config says {expected}; \
         the image is corrupt"
    )]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("layer {layer}: cannot unpack {entry:?}: {reason}")]
    LayerEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("{what} is compressed with {compression}, which this agent cannot unpack; use gzip or plain tar")]
    UnsupportedCompression {
        what: String,
        compression: &'static str,
    },
    #[error(
        "blob {0} is not in the image store; store it before committing a manifest that uses it"
    )]
    MissingBlob(String),
    #[error("{what} {digest} is not valid: {reason}")]
    BadDocument {
        what: &'static str,
        digest: String,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    BadBusybox { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path an I/O error happened on.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The hex part of a `sha256:` digest, checked so that it is safe as a file name.
pub(crate) fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(Error::InvalidDigest(digest.to_string())),
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Normalizes an image reference the way Kubernetes and containerd do:
/// `busybox` -> `docker.io/library/busybox:latest`,
/// `registry.local:5000/x/y:1` unchanged, `name@sha256:...` kept by digest.
pub fn normalize(reference: &str) -> String {
    let reference = reference.trim();
    // A bare image ID is already as specific as it gets.
    if reference.starts_with("sha256:") {
        return reference.to_string();
    }
    let (named, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match named[last_slash..].rfind(':') {
        Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
        None => (named, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_string())
        }
        _ => ("docker.io", name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

/// The repository part of a normalized reference (no tag, no digest).
pub(crate) fn repository(normalized: &str) -> &str {
    let named = normalized.split('@').next().unwrap_or(normalized);
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    match named[last_slash..].rfind(':') {
        Some(i) => &named[..last_slash + i],
        None => named,
    }
}
