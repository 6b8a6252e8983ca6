//! Bytes to frames: the frame header, each control frame's body, and the
//! peer's compressed header blocks.

use flate2::{Decompress, FlushDecompress, Status};

use super::{
    u32_at, Frame, FrameError, Headers, DICTIONARY, FLAG_FIN, FLAG_UNIDIRECTIONAL, GOAWAY, HEADERS,
    MAX_CONTROL, MAX_HEADER_BLOCK, PING, RST_STREAM, SETTINGS, SYN_REPLY, SYN_STREAM, VERSION,
    WINDOW_UPDATE,
};

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

pub(super) fn parse_headers(b: &[u8]) -> Result<Headers, FrameError> {
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
