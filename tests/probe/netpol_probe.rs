//! The server and client pods run in the network-policy tests, like
//! upstream's agnhost: `serve PORT...` answers TCP and UDP on each port;
//! `connect TIMEOUT_MS PROTO:IP:PORT[@SOURCE_PORT]...` tries every target
//! at once and prints one character per target in order, `.` where an
//! answer came back and `X` where none did. A UDP target with a source port
//! is the same flow every time it is probed. A `syn` target (TCP) counts a
//! completed handshake as the answer, for servers that wait for the client
//! to speak first.
//!
//! Built with std only and linked statically, so it runs from a hostPath
//! volume in the busybox image, which has no UDP server of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("connect") => connect(&args[1..]),
        _ => {
            eprintln!("usage: netpol-probe serve PORT... | connect TIMEOUT_MS PROTO:IP:PORT...");
            std::process::exit(2);
        }
    }
}

fn serve(ports: &[String]) {
    let mut threads = Vec::new();
    for port in ports {
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| fail(&format!("bad port {port:?}")));
        let tcp = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| fail(&e.to_string()));
        let udp = UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| fail(&e.to_string()));
        threads.push(std::thread::spawn(move || {
            for conn in tcp.incoming().flatten() {
                let _ = (&conn).write_all(b"ok\n");
            }
        }));
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(b"ok\n", peer);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
}

fn connect(args: &[String]) {
    let timeout = args
        .first()
        .and_then(|t| t.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| fail("the first argument is the timeout in ms"));
    let probes: Vec<_> = args[1..]
        .iter()
        .map(|t| {
            let (proto, addr) = t.split_once(':').unwrap_or_else(|| fail(t));
            let (addr, sport) = match addr.split_once('@') {
                Some((a, p)) => (a, p.parse().unwrap_or_else(|_| fail(t))),
                None => (addr, 0),
            };
            let addr: SocketAddr = addr.parse().unwrap_or_else(|_| fail(t));
            let proto = proto.to_string();
            std::thread::spawn(move || match proto.as_str() {
                "tcp" => tcp(addr, timeout),
                "syn" => TcpStream::connect_timeout(&addr, timeout).is_ok(),
                "udp" => udp(addr, sport, timeout),
                _ => false,
            })
        })
        .collect();
    let row: String = probes
        .into_iter()
        .map(|p| if p.join().unwrap_or(false) { '.' } else { 'X' })
        .collect();
    println!("{row}");
}

fn tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 8];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

fn udp(addr: SocketAddr, sport: u16, timeout: Duration) -> bool {
    let Ok(s) = UdpSocket::bind(("0.0.0.0", sport)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    // A lost datagram is not a denial: ask three times within the timeout.
    let mut buf = [0u8; 8];
    for _ in 0..3 {
        if s.send_to(b"?", addr).is_err() {
            return false;
        }
        let _ = s.set_read_timeout(Some(timeout / 3));
        if matches!(s.recv_from(&mut buf), Ok((n, from)) if n > 0 && from == addr) {
            return true;
        }
    }
    false
}

fn fail(what: &str) -> ! {
    eprintln!("netpol-probe: {what}");
    std::process::exit(2)
}
