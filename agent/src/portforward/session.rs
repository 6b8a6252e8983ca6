//! One port-forward connection: Kubernetes' `portforward.k8s.io` protocol
//! over SPDY. For each forwarded connection the client opens two streams
//! with the same `requestid` and `port` headers, `streamtype: error` and
//! `streamtype: data`; this side connects to the port and copies bytes
//! between the socket and the data stream, each direction closed on its
//! own, and reports a failure as text on the error stream, which it closes
//! once the forwarded connection is over.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::{AbortHandle, JoinSet};

use super::spdy::{self, Decoder, Encoder, Frame, FrameError, RecvWindow, SendWindows};

/// Connects to a port of the pod, or says why it cannot.
pub type Dial = Arc<
    dyn Fn(u16) -> Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>> + Send + Sync,
>;

/// The most read from a pod socket into one data frame.
const CHUNK: usize = 32 * 1024;
/// Data frames queued towards one pod socket before reading the
/// connection waits for it.
const QUEUE: usize = 16;
/// Forwarded connections, open or half-open, one client connection may
/// have at once; streams beyond are refused.
const MAX_FORWARDS: usize = 1024;
/// How long the first stream of a forwarded connection waits for the
/// second, as kubelet's stream creation timeout.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// The send windows, shared by the tasks that send data.
#[derive(Default)]
struct Flow {
    windows: Mutex<SendWindows>,
    changed: Notify,
}

impl Flow {
    fn with<T>(&self, f: impl FnOnce(&mut SendWindows) -> T) -> T {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut w);
        drop(w);
        self.changed.notify_waiters();
        out
    }

    /// Waits until some of `want` bytes may be sent on `stream_id`.
    async fn grant(&self, stream_id: u32, want: usize) -> usize {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self
                .windows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .grant(stream_id, want);
            if n > 0 {
                return n;
            }
            notified.await;
        }
    }
}

/// A forwarded connection whose two streams have not both arrived.
struct Pending {
    port: u16,
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Vec<u8>>)>,
    since: Instant,
}

struct Conn {
    out: mpsc::Sender<Frame>,
    flow: Arc<Flow>,
    received: Arc<Mutex<RecvWindow>>,
    dial: Dial,
    last_id: u32,
    going_away: bool,
    pending: HashMap<String, Pending>,
    /// Where the client's bytes on each open data stream go.
    inbound: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    /// The task serving each stream, by both of its stream ids.
    tasks: HashMap<u32, AbortHandle>,
    /// The two stream ids of each task.
    streams_of: HashMap<tokio::task::Id, [u32; 2]>,
    running: JoinSet<()>,
}

/// Serves one connection until the client goes away. `Err` is a client
/// that broke the protocol; it has been sent a GOAWAY.
pub async fn serve<R, W>(mut read: R, write: W, dial: Dial) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, frames) = mpsc::channel(64);
    let writer = tokio::spawn(write_frames(write, frames));
    let mut conn = Conn {
        out,
        flow: Arc::default(),
        received: Arc::default(),
        dial,
        last_id: 0,
        going_away: false,
        pending: HashMap::new(),
        inbound: HashMap::new(),
        tasks: HashMap::new(),
        streams_of: HashMap::new(),
        running: JoinSet::new(),
    };
    let mut decoder = Decoder::new();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let result = 'conn: loop {
        let mut at = 0;
        loop {
            match decoder.decode(&buf[at..]) {
                Ok(Some((frame, n))) => {
                    at += n;
                    if let Err(e) = conn.handle(frame).await {
                        break 'conn Err(e);
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn Err(e),
            }
        }
        buf.drain(..at);
        buf.reserve(64 * 1024);
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break Ok(()),
            Ok(_) => {}
        }
        conn.reap();
    };
    if let Err(e) = &result {
        let _ = conn
            .out
            .send(Frame::GoAway {
                last_good: conn.last_id,
                status: spdy::goaway::PROTOCOL_ERROR,
            })
            .await;
        tracing::warn!("port-forward: closing the connection: {e}");
    }
    // Aborts every forwarder: the client is gone.
    drop(conn);
    // A client that stopped reading does not hold the writer for ever.
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
    result
}

async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut frames: mpsc::Receiver<Frame>) {
    let Ok(mut encoder) = Encoder::new() else {
        return;
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(f) = frames.recv().await {
        buf.clear();
        if encoder.encode(&f, &mut buf).is_err() {
            return;
        }
        while buf.len() < 256 * 1024 {
            match frames.try_recv() {
                Ok(f) => {
                    if encoder.encode(&f, &mut buf).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

impl Conn {
    async fn send(&self, f: Frame) {
        let _ = self.out.send(f).await;
    }

    async fn reset(&self, stream_id: u32, status: u32) {
        self.send(Frame::RstStream { stream_id, status }).await;
    }

    /// Forgets the forwarders that have finished.
    fn reap(&mut self) {
        while let Some(done) = self.running.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            for stream_id in self.streams_of.remove(&id).into_iter().flatten() {
                self.tasks.remove(&stream_id);
                self.inbound.remove(&stream_id);
            }
        }
    }

    /// Refuses the streams of forwarded connections whose other half did
    /// not come in time.
    async fn expire(&mut self) {
        let stale: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() > PAIR_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            for stream_id in p.error.into_iter().chain(p.data.map(|d| d.0)) {
                self.reset(stream_id, spdy::rst::REFUSED_STREAM).await;
                self.forget(stream_id);
            }
        }
    }

    /// Ends a stream's forwarder, if it has one, and forgets the stream.
    fn forget(&mut self, stream_id: u32) {
        self.inbound.remove(&stream_id);
        if let Some(t) = self.tasks.remove(&stream_id) {
            t.abort();
        }
        self.flow.with(|w| w.close(stream_id));
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), FrameError> {
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => self.open(stream_id, &headers).await?,
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let len = data.len();
                let paired = self.tasks.contains_key(&stream_id);
                match self.inbound.get(&stream_id) {
                    // Before its error stream comes, a data stream may
                    // queue only so much: reading waits for no one then.
                    Some(tx) if !paired && !data.is_empty() => {
                        if tx.try_send(data).is_err() {
                            self.reset(stream_id, spdy::rst::FLOW_CONTROL_ERROR).await;
                            self.forget(stream_id);
                            self.pending
                                .retain(|_, p| p.data.as_ref().map(|d| d.0) != Some(stream_id));
                            self.give_back(0, len).await;
                        }
                    }
                    Some(tx) if !data.is_empty() => {
                        if tx.send(data).await.is_err() {
                            // The pod side is gone; what follows is dropped.
                            self.inbound.remove(&stream_id);
                            self.give_back(0, len).await;
                        }
                    }
                    _ => self.give_back(0, len).await,
                }
                if fin {
                    // The client sends no more: the pod's socket is
                    // shut for writing once the queue drains.
                    self.inbound.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => self.forget(stream_id),
            Frame::Settings { entries, .. } => {
                for (_, id, value) in entries {
                    if id == spdy::SETTINGS_INITIAL_WINDOW {
                        self.flow.with(|w| w.set_initial(value));
                    }
                }
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if let Err(e) = self.flow.with(|w| w.update(stream_id, delta)) {
                    if stream_id == 0 {
                        return Err(e.into());
                    }
                    self.reset(stream_id, spdy::rst::FLOW_CONTROL_ERROR).await;
                    self.forget(stream_id);
                }
            }
            Frame::Ping { id } => self.send(Frame::Ping { id }).await,
            Frame::GoAway { .. } => self.going_away = true,
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    /// Gives back window for bytes that reached no pod.
    async fn give_back(&self, stream_id: u32, n: usize) {
        let delta = self
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .consumed(n);
        if let Some(delta) = delta {
            self.send(Frame::WindowUpdate { stream_id, delta }).await;
        }
    }

    async fn open(&mut self, stream_id: u32, headers: &spdy::Headers) -> Result<(), FrameError> {
        // The client's streams are odd and increasing.
        if stream_id.is_multiple_of(2) || stream_id <= self.last_id {
            self.reset(stream_id, spdy::rst::PROTOCOL_ERROR).await;
            return Ok(());
        }
        self.last_id = stream_id;
        self.reap();
        self.expire().await;
        if self.going_away || self.pending.len() + self.tasks.len() / 2 >= MAX_FORWARDS {
            self.reset(stream_id, spdy::rst::REFUSED_STREAM).await;
            return Ok(());
        }
        let kind = spdy::header(headers, "streamtype").unwrap_or_default();
        let port = spdy::header(headers, "port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        // Old clients name no request; their error stream comes first and
        // the data stream right after it.
        let request = match spdy::header(headers, "requestid") {
            Some(r) => r.to_string(),
            None if kind == "data" => stream_id.saturating_sub(2).to_string(),
            None => stream_id.to_string(),
        };
        let (Some(port), "error" | "data") = (port, kind) else {
            tracing::debug!("port-forward: refusing stream {stream_id}: {headers:?}");
            self.reset(stream_id, spdy::rst::PROTOCOL_ERROR).await;
            return Ok(());
        };
        let pending = self
            .pending
            .entry(request.clone())
            .or_insert_with(|| Pending {
                port: 0,
                error: None,
                data: None,
                since: Instant::now(),
            });
        let taken = match kind {
            "error" => pending.error.is_some(),
            _ => pending.data.is_some(),
        };
        if taken || (pending.port != 0 && pending.port != port) {
            self.reset(stream_id, spdy::rst::PROTOCOL_ERROR).await;
            return Ok(());
        }
        pending.port = port;
        if kind == "error" {
            pending.error = Some(stream_id);
        } else {
            let (tx, rx) = mpsc::channel(QUEUE);
            pending.data = Some((stream_id, rx));
            self.inbound.insert(stream_id, tx);
        }
        self.flow.with(|w| w.open(stream_id));
        self.send(Frame::SynReply {
            stream_id,
            fin: false,
            headers: vec![],
        })
        .await;
        let complete = self
            .pending
            .get(&request)
            .is_some_and(|p| p.error.is_some() && p.data.is_some());
        if !complete {
            return Ok(());
        }
        if let Some(Pending {
            port,
            error: Some(error),
            data: Some((data, rx)),
            ..
        }) = self.pending.remove(&request)
        {
            let job = Forward {
                port,
                data,
                error,
                out: self.out.clone(),
                flow: self.flow.clone(),
                received: self.received.clone(),
                dial: self.dial.clone(),
            };
            let handle = self.running.spawn(job.run(rx));
            self.streams_of.insert(handle.id(), [data, error]);
            self.tasks.insert(data, handle.clone());
            self.tasks.insert(error, handle);
        }
        Ok(())
    }
}

/// One forwarded connection.
struct Forward {
    port: u16,
    data: u32,
    error: u32,
    out: mpsc::Sender<Frame>,
    flow: Arc<Flow>,
    received: Arc<Mutex<RecvWindow>>,
    dial: Dial,
}

impl Forward {
    async fn send(&self, f: Frame) -> Result<(), ()> {
        self.out.send(f).await.map_err(|_| ())
    }

    async fn run(self, mut from_client: mpsc::Receiver<Vec<u8>>) {
        let socket = match (self.dial)(self.port).await {
            Ok(s) => s,
            Err(why) => {
                drop(from_client);
                let _ = self.fail(&why).await;
                let _ = self.finish(self.error).await;
                let _ = self.finish(self.data).await;
                self.close();
                return;
            }
        };
        let _ = socket.set_nodelay(true);
        let (mut from_pod, mut to_pod) = socket.into_split();
        let upstream = async {
            let mut window = RecvWindow::default();
            let mut result = Ok(());
            while let Some(chunk) = from_client.recv().await {
                if let Err(e) = to_pod.write_all(&chunk).await {
                    result = Err(format!("writing to port {}: {e}", self.port));
                    break;
                }
                if let Some(delta) = window.consumed(chunk.len()) {
                    let _ = self
                        .send(Frame::WindowUpdate {
                            stream_id: self.data,
                            delta,
                        })
                        .await;
                }
                let session = self
                    .received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .consumed(chunk.len());
                if let Some(delta) = session {
                    let _ = self
                        .send(Frame::WindowUpdate {
                            stream_id: 0,
                            delta,
                        })
                        .await;
                }
            }
            drop(from_client);
            let _ = to_pod.shutdown().await;
            result
        };
        let downstream = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match from_pod.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => return Err(format!("reading from port {}: {e}", self.port)),
                };
                let mut at = 0;
                while at < n {
                    let granted = self.flow.grant(self.data, n - at).await;
                    let data = buf[at..at + granted].to_vec();
                    at += granted;
                    self.send(Frame::Data {
                        stream_id: self.data,
                        fin: false,
                        data,
                    })
                    .await
                    .map_err(|_| "the connection closed".to_string())?;
                }
            }
            let _ = self.finish(self.data).await;
            Ok(())
        };
        let (up, down) = tokio::join!(upstream, downstream);
        if let Some(why) = up.err().or(down.err()) {
            let _ = self.fail(&why).await;
        }
        let _ = self.finish(self.error).await;
        self.close();
    }

    /// Tells the client why on the error stream.
    async fn fail(&self, why: &str) -> Result<(), ()> {
        self.send(Frame::Data {
            stream_id: self.error,
            fin: false,
            data: why.as_bytes().to_vec(),
        })
        .await
    }

    /// Closes this side of a stream.
    async fn finish(&self, stream_id: u32) -> Result<(), ()> {
        self.send(Frame::Data {
            stream_id,
            fin: true,
            data: vec![],
        })
        .await
    }

    fn close(&self) {
        self.flow.with(|w| {
            w.close(self.data);
            w.close(self.error);
        });
    }
}
