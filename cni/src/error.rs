//! The plugin's errors and their CNI codes.

use std::io;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// Errors, each with its CNI error code ([`Error::code`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Code 1.
    #[error("CNI version {requested:?} is not supported (supported: {supported})")]
    IncompatibleVersion {
        requested: String,
        supported: String,
    },
    /// Code 2.
    #[error("unsupported field {field}: {reason}")]
    UnsupportedField { field: String, reason: String },
    /// Code 3: the pod's namespace is gone, so there is nothing to wire or
    /// to clean up.
    #[error("network namespace {} does not exist: {source}", path.display())]
    NoSuchNetns { path: PathBuf, source: io::Error },
    /// Code 4: a bad or missing attachment parameter, named after the CNI
    /// environment variable that carries it.
    #[error("invalid {name}: {reason}")]
    InvalidArgument { name: String, reason: String },
    /// Code 5: a file or netlink operation failed.
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    /// Code 6.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },
    /// Code 7.
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// Code 11: another process held the lease store for too long.
    #[error("{0}; try again later")]
    Busy(String),
    /// Code 50.
    #[error("the plugin cannot add pods now: {0}")]
    NotAvailable(String),
    /// Code 100: every address of the pod CIDR is leased.
    #[error("no free address in {subnet}: all {size} pod addresses are leased")]
    Exhausted { subnet: Ipv4Net, size: u32 },
    /// Code 101: CHECK found the kernel state different from what ADD built.
    #[error("{0}")]
    CheckFailed(String),
}

impl Error {
    /// The CNI error code: 1 to 99 as the CNI specification defines them,
    /// 100 and up specific to this plugin.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => 1,
            Error::UnsupportedField { .. } => 2,
            Error::NoSuchNetns { .. } => 3,
            Error::InvalidArgument { .. } => 4,
            Error::Io { .. } => 5,
            Error::Decode { .. } => 6,
            Error::InvalidConfig { .. } => 7,
            Error::Busy(_) => 11,
            Error::NotAvailable(_) => 50,
            Error::Exhausted { .. } => 100,
            Error::CheckFailed(_) => 101,
        }
    }
}

pub(crate) fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        op: op.into(),
        source,
    }
}

pub(crate) fn check_failed(msg: impl Into<String>) -> Error {
    Error::CheckFailed(msg.into())
}
