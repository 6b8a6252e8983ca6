//! SPDY/3.1 framing, as Kubernetes' streaming clients speak it (the
//! moby/spdystream dialect): control and data frames, header blocks
//! compressed by one zlib stream per direction that starts from the
//! SPDY/3 dictionary, and the flow-control windows of SPDY/3.1.
//!
//! Everything here is pure: bytes in, frames out, and back. A frame that
//! cannot be what it claims is an error, never a panic.

use std::collections::HashMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

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

/// Reads frames, keeping the peer's header decompression stream.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    /// The first frame in `buf` and how many bytes it took, or None when
    /// all of it has not arrived yet.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let len = (u32_at(buf, 4) & 0x00ff_ffff) as usize;
        let control = buf[0] & 0x80 != 0;
        if control {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            if len > MAX_CONTROL {
                return Err(FrameError::TooLong {
                    kind: "control",
                    len,
                });
            }
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let body = &buf[8..8 + len];
        let fin = flags & FLAG_FIN != 0;
        let frame = if !control {
            Frame::Data {
                stream_id: u32_at(buf, 0) & 0x7fff_ffff,
                fin,
                data: body.to_vec(),
            }
        } else {
            let kind = u16::from_be_bytes([buf[2], buf[3]]);
            self.control(kind, flags, body)?
        };
        Ok(Some((frame, 8 + len)))
    }

    fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> Result<Frame, FrameError> {
        let fin = flags & FLAG_FIN != 0;
        let need = |n: usize, name: &'static str| {
            if body.len() < n {
                Err(FrameError::Malformed(name))
            } else {
                Ok(())
            }
        };
        Ok(match kind {
            SYN_STREAM => {
                need(10, "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id: u32_at(body, 0) & 0x7fff_ffff,
                    associated: u32_at(body, 4) & 0x7fff_ffff,
                    priority: body[8] >> 5,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.header_block(&body[10..])?,
                }
            }
            SYN_REPLY => {
                need(4, "SYN_REPLY")?;
                Frame::SynReply {
                    stream_id: u32_at(body, 0) & 0x7fff_ffff,
                    fin,
                    headers: self.header_block(&body[4..])?,
                }
            }
            HEADERS => {
                need(4, "HEADERS")?;
                Frame::Headers {
                    stream_id: u32_at(body, 0) & 0x7fff_ffff,
                    fin,
                    headers: self.header_block(&body[4..])?,
                }
            }
            RST_STREAM => {
                if body.len() != 8 {
                    return Err(FrameError::Malformed("RST_STREAM"));
                }
                Frame::RstStream {
                    stream_id: u32_at(body, 0) & 0x7fff_ffff,
                    status: u32_at(body, 4),
                }
            }
            SETTINGS => {
                need(4, "SETTINGS")?;
                let n = u32_at(body, 0) as usize;
                if n.checked_mul(8).and_then(|m| m.checked_add(4)) != Some(body.len()) {
                    return Err(FrameError::Malformed("SETTINGS"));
                }
                let entries = (0..n)
                    .map(|i| {
                        let at = 4 + i * 8;
                        (
                            body[at],
                            u32_at(body, at) & 0x00ff_ffff,
                            u32_at(body, at + 4),
                        )
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & 0x01 != 0,
                    entries,
                }
            }
            PING => {
                if body.len() != 4 {
                    return Err(FrameError::Malformed("PING"));
                }
                Frame::Ping {
                    id: u32_at(body, 0),
                }
            }
            GOAWAY => {
                need(4, "GOAWAY")?;
                Frame::GoAway {
                    last_good: u32_at(body, 0) & 0x7fff_ffff,
                    status: if body.len() >= 8 { u32_at(body, 4) } else { 0 },
                }
            }
            WINDOW_UPDATE => {
                if body.len() != 8 {
                    return Err(FrameError::Malformed("WINDOW_UPDATE"));
                }
                Frame::WindowUpdate {
                    stream_id: u32_at(body, 0) & 0x7fff_ffff,
                    delta: u32_at(body, 4) & 0x7fff_ffff,
                }
            }
            kind => Frame::Unknown { kind },
        })
    }

    /// Decompresses one header block (the peer flushed its zlib stream
    /// at the block's end) and parses it.
    fn header_block(&mut self, input: &[u8]) -> Result<Headers, FrameError> {
        let bad = |e: String| FrameError::HeaderBlock(e);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let res = self
                .inflate
                .decompress(&input[pos..], &mut chunk, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - in0) as usize;
            let made = (self.inflate.total_out() - out0) as usize;
            pos += used;
            out.extend_from_slice(&chunk[..made]);
            if out.len() > MAX_HEADER_BLOCK {
                return Err(bad("too large once decompressed".into()));
            }
            match res {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| bad(e.to_string()))?;
                }
                Err(e) => return Err(bad(e.to_string())),
                Ok(Status::StreamEnd) => break,
                Ok(_) if pos >= input.len() && made < chunk.len() => break,
                Ok(_) if used == 0 && made == 0 => break,
                Ok(_) => {}
            }
        }
        parse_headers(&out)
    }
}

fn parse_headers(b: &[u8]) -> Result<Headers, FrameError> {
    let bad = |m: &str| FrameError::HeaderBlock(m.to_string());
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], FrameError> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= b.len())
            .ok_or_else(|| bad("truncated"))?;
        let s = &b[at..end];
        at = end;
        Ok(s)
    };
    let count = u32_at(take(4)?, 0) as usize;
    // Each pair needs at least eight bytes of lengths.
    if count > b.len() / 8 {
        return Err(bad("more pairs than bytes"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = u32_at(take(4)?, 0) as usize;
        let name = String::from_utf8(take(n)?.to_vec()).map_err(|_| bad("name not UTF-8"))?;
        let n = u32_at(take(4)?, 0) as usize;
        let value = String::from_utf8(take(n)?.to_vec()).map_err(|_| bad("value not UTF-8"))?;
        if name.is_empty() {
            return Err(bad("empty header name"));
        }
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

/// Writes frames, keeping this side's header compression stream.
pub struct Encoder {
    deflate: Compress,
}

impl Encoder {
    pub fn new() -> Result<Self, FrameError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .map_err(|e| FrameError::HeaderBlock(e.to_string()))?;
        Ok(Self { deflate })
    }

    /// Appends `frame`, encoded, to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&((flags as u32) << 24 | body.len() as u32).to_be_bytes());
            out.extend_from_slice(body);
        };
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data {
                stream_id,
                fin: f,
                data,
            } => {
                if data.len() > MAX_DATA {
                    return Err(FrameError::TooLong {
                        kind: "data",
                        len: data.len(),
                    });
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&((fin(*f) as u32) << 24 | data.len() as u32).to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated,
                priority,
                fin: f,
                unidirectional,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x07) << 5);
                body.push(0);
                body.extend(self.header_block(headers)?);
                let flags = fin(*f)
                    | if *unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                control(out, SYN_STREAM, flags, &body);
            }
            Frame::SynReply {
                stream_id,
                fin: f,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin: f,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend(self.header_block(headers)?);
                control(out, kind, fin(*f), &body);
            }
            Frame::RstStream { stream_id, status } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, RST_STREAM, 0, &body);
            }
            Frame::Settings { clear, entries } => {
                let mut body = (entries.len() as u32).to_be_bytes().to_vec();
                for (flags, id, value) in entries {
                    body.extend_from_slice(
                        &((*flags as u32) << 24 | (id & 0x00ff_ffff)).to_be_bytes(),
                    );
                    body.extend_from_slice(&value.to_be_bytes());
                }
                control(out, SETTINGS, if *clear { 1 } else { 0 }, &body);
            }
            Frame::Ping { id } => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut body = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, GOAWAY, 0, &body);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, WINDOW_UPDATE, 0, &body);
            }
            Frame::Unknown { kind } => control(out, *kind, 0, &[]),
        }
        Ok(())
    }

    /// The header block, compressed and flushed so the peer can read it
    /// whole.
    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            plain.extend_from_slice(&(name.len() as u32).to_be_bytes());
            plain.extend_from_slice(name.as_bytes());
            plain.extend_from_slice(&(value.len() as u32).to_be_bytes());
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let in0 = self.deflate.total_in();
            self.deflate
                .compress_vec(&plain[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::HeaderBlock(e.to_string()))?;
            pos += (self.deflate.total_in() - in0) as usize;
            // Room left over means the flush is complete.
            if pos >= plain.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Why a peer broke flow control.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a WINDOW_UPDATE would take the window of stream {0} past 2^31-1")]
pub struct WindowOverflow(pub u32);

/// What the peer lets this side send: a window per stream and one for
/// the session (stream 0).
///
/// The windows are enforced only once the peer has shown it keeps them,
/// by a WINDOW_UPDATE or a SETTINGS of the initial window. spdystream,
/// which kubectl and every Go client use, never sends either and never
/// checks them; holding to 64 KiB with it would stall every transfer.
#[derive(Debug)]
pub struct SendWindows {
    initial: i64,
    session: i64,
    streams: HashMap<u32, i64>,
    enforced: bool,
}

impl Default for SendWindows {
    fn default() -> Self {
        Self {
            initial: INITIAL_WINDOW as i64,
            session: INITIAL_WINDOW as i64,
            streams: HashMap::new(),
            enforced: false,
        }
    }
}

impl SendWindows {
    /// Whether the peer has taken part in flow control.
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// A new stream starts with the current initial window.
    pub fn open(&mut self, stream_id: u32) {
        self.streams.insert(stream_id, self.initial);
    }

    pub fn close(&mut self, stream_id: u32) {
        self.streams.remove(&stream_id);
    }

    /// A WINDOW_UPDATE (stream 0 is the session). Updates for streams
    /// that are gone are ignored, as SPDY allows them to cross.
    pub fn update(&mut self, stream_id: u32, delta: u32) -> Result<(), WindowOverflow> {
        self.enforced = true;
        let w = if stream_id == 0 {
            &mut self.session
        } else {
            match self.streams.get_mut(&stream_id) {
                Some(w) => w,
                None => return Ok(()),
            }
        };
        if *w + delta as i64 > MAX_WINDOW {
            return Err(WindowOverflow(stream_id));
        }
        *w += delta as i64;
        Ok(())
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE: every open stream's window moves by
    /// the difference, and may go below zero.
    pub fn set_initial(&mut self, size: u32) {
        self.enforced = true;
        let size = (size as i64).min(MAX_WINDOW);
        let diff = size - self.initial;
        self.initial = size;
        for w in self.streams.values_mut() {
            *w += diff;
        }
    }

    /// How much of `want` bytes may go out on `stream_id` now, taken from
    /// its window and the session's: all of it while the peer does not
    /// keep windows, nothing when a window is spent.
    pub fn grant(&mut self, stream_id: u32, want: usize) -> usize {
        if !self.enforced {
            return want;
        }
        let Some(w) = self.streams.get_mut(&stream_id) else {
            return 0;
        };
        let n = (want as i64).min(*w).min(self.session).max(0);
        *w -= n;
        self.session -= n;
        n as usize
    }
}

/// What this side has taken in but not yet given back as window.
#[derive(Debug, Default)]
pub struct RecvWindow {
    unacked: u32,
}

impl RecvWindow {
    /// Records `n` bytes consumed; the WINDOW_UPDATE delta to send once
    /// half the window is used up.
    pub fn consumed(&mut self, n: usize) -> Option<u32> {
        self.unacked = self.unacked.saturating_add(n.min(u32::MAX as usize) as u32);
        if self.unacked >= INITIAL_WINDOW / 2 {
            Some(std::mem::take(&mut self.unacked))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests;
