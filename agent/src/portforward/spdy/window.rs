//! SPDY/3.1 flow control: what this side may send, and what it owes the
//! peer as window.

use std::collections::HashMap;

use super::{INITIAL_WINDOW, MAX_WINDOW};

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
