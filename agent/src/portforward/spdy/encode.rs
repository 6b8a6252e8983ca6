//! Frames to bytes, with this side's compressed header blocks.

use flate2::{Compress, Compression, FlushCompress};

use super::{
    Frame, FrameError, Headers, DICTIONARY, FLAG_FIN, FLAG_UNIDIRECTIONAL, GOAWAY, HEADERS,
    MAX_DATA, PING, RST_STREAM, SETTINGS, SYN_REPLY, SYN_STREAM, VERSION, WINDOW_UPDATE,
};

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
