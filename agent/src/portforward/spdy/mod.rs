//! SPDY/3.1 framing, as Kubernetes' streaming clients speak it (the
//! moby/spdystream dialect): control and data frames, header blocks
//! compressed by one zlib stream per direction that starts from the
//! SPDY/3 dictionary, and the flow-control windows of SPDY/3.1.
//!
//! Everything here is pure: bytes in, frames out, and back. A frame that
//! cannot be what it claims is an error, never a panic.

mod decode;
mod encode;
mod window;

pub use decode::Decoder;
pub use encode::Encoder;
pub use window::{RecvWindow, SendWindows, WindowOverflow};

/// The only version spoken.
pub const VERSION: u16 = 3;
/// The zlib preset dictionary of SPDY/3 header blocks (its section 2.6.10.1).
const DICTIONARY: &[u8] = include_bytes!("spdy3-dictionary.bin");
/// Each stream's and the session's window until SETTINGS says otherwise.
pub const INITIAL_WINDOW: u32 = 64 * 1024;
/// The largest a window may grow to.
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// The largest control frame accepted; header blocks of streaming clients
/// are a few hundred bytes.
const MAX_CONTROL: usize = 1 << 20;
/// The largest header block accepted once decompressed.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The length field's limit, and so the largest data frame.
pub const MAX_DATA: usize = (1 << 24) - 1;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// SETTINGS_INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW: u32 = 7;

/// RST_STREAM status codes used here.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// Header names and values, names in lower case.
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (the first, if it repeats).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One SPDY frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// A control frame of a type this side does not know; SPDY says to
    /// ignore it.
    Unknown {
        kind: u16,
    },
}

/// Why bytes are not a valid frame, or a frame cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY version {0} is not supported (only 3)")]
    UnsupportedVersion(u16),
    #[error("a {kind} frame of {len} bytes is longer than allowed")]
    TooLong { kind: &'static str, len: usize },
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
    #[error(transparent)]
    FlowControl(#[from] WindowOverflow),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests;
