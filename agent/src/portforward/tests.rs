//! The port-forward session driven by a client made of the same framing,
//! against echo servers on loopback.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::TcpListener;

use super::session;
use super::spdy::{Decoder, Encoder, Frame};

/// A SPDY client on one end of an in-memory connection.
struct Client {
    read: ReadHalf<DuplexStream>,
    write: WriteHalf<DuplexStream>,
    enc: Encoder,
    dec: Decoder,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, f: Frame) {
        let mut wire = Vec::new();
        self.enc.encode(&f, &mut wire).unwrap();
        self.write.write_all(&wire).await.unwrap();
    }

    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, n)) = self.dec.decode(&self.buf).unwrap() {
                self.buf.drain(..n);
                return Some(f);
            }
            let mut chunk = vec![0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(10), self.read.read(&mut chunk))
                .await
                .expect("a frame within 10 s")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame if one comes within `wait`.
    async fn within(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }

    async fn open(&mut self, id: u32, kind: &str, port: u16, request: &str) {
        self.send(Frame::SynStream {
            stream_id: id,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), request.into()),
            ],
        })
        .await;
    }
}

/// Echo servers that first say which port they are.
async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("port {port}\n").as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

fn start() -> Client {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let dial: session::Dial = Arc::new(|port| {
        Box::pin(async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("dial tcp4 127.0.0.1:{port}: {e}"))
        })
    });
    let (r, w) = tokio::io::split(theirs);
    tokio::spawn(session::serve(r, w, dial));
    let (read, write) = tokio::io::split(ours);
    Client {
        read,
        write,
        enc: Encoder::new().unwrap(),
        dec: Decoder::new(),
        buf: Vec::new(),
    }
}

#[tokio::test]
async fn bytes_go_both_ways_and_each_side_closes_on_its_own() {
    let port = echo_server().await;
    let mut c = start();
    c.open(1, "error", port, "0").await;
    c.open(3, "data", port, "0").await;
    c.send(Frame::Ping { id: 1 }).await;
    // 3 MiB out in 16 KiB frames, well past any 64 KiB window: the client,
    // like spdystream, never sends WINDOW_UPDATE.
    let payload: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let (mut replies, mut pong, mut back, mut data_fin, mut error_fin) =
        (0, false, Vec::new(), false, false);
    let mut updates = 0u64;
    let mut sent = 0;
    while sent < payload.len() {
        let end = (sent + 16384).min(payload.len());
        c.send(Frame::Data {
            stream_id: 3,
            fin: end == payload.len(),
            data: payload[sent..end].to_vec(),
        })
        .await;
        sent = end;
    }
    while !(data_fin && error_fin) {
        match c
            .next()
            .await
            .expect("the session ends only after both streams")
        {
            Frame::SynReply { .. } => replies += 1,
            Frame::Ping { id: 1 } => pong = true,
            Frame::Data {
                stream_id: 3,
                fin,
                data,
            } => {
                back.extend_from_slice(&data);
                data_fin |= fin;
            }
            Frame::Data {
                stream_id: 1,
                fin,
                data,
            } => {
                assert!(data.is_empty(), "{}", String::from_utf8_lossy(&data));
                error_fin |= fin;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if stream_id == 3 {
                    updates += delta as u64;
                }
            }
            f => panic!("unexpected {f:?}"),
        }
    }
    assert_eq!(replies, 2);
    assert!(pong);
    let greeting = format!("port {port}\n");
    assert_eq!(&back[..greeting.len()], greeting.as_bytes());
    assert!(back[greeting.len()..] == payload[..], "the echo is intact");
    // Window given back for what reached the pod, in halves of 64 KiB.
    assert!(updates > (3 << 20) - 65536, "{updates}");
}

#[tokio::test]
async fn a_refused_port_is_reported_on_the_error_stream() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = start();
    c.open(1, "error", closed, "7").await;
    c.open(3, "data", closed, "7").await;
    let mut text = String::new();
    let mut fins = 0;
    while fins < 2 {
        match c.next().await.unwrap() {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if stream_id == 1 {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
                fins += fin as u32;
            }
            Frame::SynReply { .. } => {}
            f => panic!("unexpected {f:?}"),
        }
    }
    assert!(text.contains(&format!("127.0.0.1:{closed}")), "{text}");
}

#[tokio::test]
async fn bad_streams_are_reset_and_bad_frames_end_the_connection() {
    let port = echo_server().await;
    let mut c = start();
    // No port header.
    c.send(Frame::SynStream {
        stream_id: 1,
        associated: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: vec![("streamtype".into(), "data".into())],
    })
    .await;
    assert!(matches!(
        c.next().await,
        Some(Frame::RstStream { stream_id: 1, .. })
    ));
    // An even stream id is the server's to use.
    c.open(4, "data", port, "1").await;
    assert!(matches!(
        c.next().await,
        Some(Frame::RstStream { stream_id: 4, .. })
    ));
    // Two pings show the connection still serves.
    c.send(Frame::Ping { id: 3 }).await;
    assert_eq!(c.next().await, Some(Frame::Ping { id: 3 }));
    // SPDY/2 is a protocol error: GOAWAY, then the end.
    c.write
        .write_all(&[0x80, 0x02, 0, 1, 0, 0, 0, 0])
        .await
        .unwrap();
    let Some(Frame::GoAway { status, .. }) = c.next().await else {
        panic!("no GOAWAY")
    };
    assert_eq!(status, super::spdy::goaway::PROTOCOL_ERROR);
    assert_eq!(c.next().await, None);
}

#[tokio::test]
async fn a_peer_that_keeps_windows_gets_no_more_than_it_allows() {
    let port = echo_server().await;
    let mut c = start();
    // SETTINGS of the initial window: this client keeps windows.
    c.send(Frame::Settings {
        clear: false,
        entries: vec![(0, super::spdy::SETTINGS_INITIAL_WINDOW, 65536)],
    })
    .await;
    c.open(1, "error", port, "0").await;
    c.open(3, "data", port, "0").await;
    let payload = vec![42u8; 200_000];
    c.send(Frame::Data {
        stream_id: 3,
        fin: true,
        data: payload.clone(),
    })
    .await;
    let mut back = Vec::new();
    // Until the window is spent.
    while back.len() < 65536 {
        match c.next().await.unwrap() {
            Frame::Data {
                stream_id: 3, data, ..
            } => back.extend_from_slice(&data),
            Frame::SynReply { .. } | Frame::WindowUpdate { .. } => {}
            f => panic!("unexpected {f:?}"),
        }
    }
    assert_eq!(back.len(), 65536, "exactly the window");
    // Nothing more until the client gives window back.
    while let Some(f) = c.within(Duration::from_millis(300)).await {
        assert!(
            !matches!(f, Frame::Data { stream_id: 3, .. }),
            "data past the window: {f:?}"
        );
    }
    for stream_id in [0, 3] {
        c.send(Frame::WindowUpdate {
            stream_id,
            delta: 1 << 20,
        })
        .await;
    }
    let mut fin = false;
    while !fin {
        if let Frame::Data {
            stream_id: 3,
            data,
            fin: f,
        } = c.next().await.unwrap()
        {
            back.extend_from_slice(&data);
            fin = f;
        }
    }
    let greeting = format!("port {port}\n");
    assert_eq!(back.len(), greeting.len() + payload.len());
}

#[tokio::test]
async fn finished_forwards_make_room_for_new_ones() {
    let port = echo_server().await;
    let mut c = start();
    // More forwarded connections, one after the other, than one client
    // connection may hold at once.
    for i in 0..1100u32 {
        let (error, data) = (4 * i + 1, 4 * i + 3);
        let request = i.to_string();
        c.open(error, "error", port, &request).await;
        c.open(data, "data", port, &request).await;
        c.send(Frame::Data {
            stream_id: data,
            fin: true,
            data: b"x".to_vec(),
        })
        .await;
        let mut fins = 0;
        while fins < 2 {
            match c.next().await.unwrap() {
                Frame::Data { fin, .. } => fins += fin as u32,
                Frame::SynReply { .. } | Frame::WindowUpdate { .. } => {}
                f => panic!("connection {i}: unexpected {f:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_data_stream_without_its_error_stream_queues_only_so_much() {
    let port = echo_server().await;
    let mut c = start();
    c.open(1, "data", port, "0").await;
    for _ in 0..100 {
        c.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: vec![0; 1024],
        })
        .await;
    }
    loop {
        match c.next().await.unwrap() {
            Frame::RstStream { stream_id: 1, .. } => break,
            Frame::SynReply { .. } | Frame::WindowUpdate { .. } => {}
            f => panic!("unexpected {f:?}"),
        }
    }
    // The connection still serves.
    c.send(Frame::Ping { id: 5 }).await;
    loop {
        match c.next().await.unwrap() {
            Frame::Ping { id: 5 } => break,
            Frame::WindowUpdate { .. } => {}
            f => panic!("unexpected {f:?}"),
        }
    }
}

#[tokio::test]
async fn a_session_window_past_its_limit_ends_the_connection() {
    let mut c = start();
    c.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 0x7fff_ffff,
    })
    .await;
    assert!(matches!(c.next().await, Some(Frame::GoAway { .. })));
    assert_eq!(c.next().await, None);
}
