//! The server pod of the port-forward tests: `echo-probe PORT...` listens
//! on each TCP port, greets every connection with `port PORT\n`, echoes
//! what it reads and, once the client has shut its side, shuts its own.
//!
//! Built with std only and linked statically, so it runs from a hostPath
//! volume in the busybox image.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

fn main() {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|p| p.parse().expect("a port number"))
        .collect();
    if ports.is_empty() {
        eprintln!("usage: echo-probe PORT...");
        std::process::exit(2);
    }
    let threads: Vec<_> = ports
        .into_iter()
        .map(|port| {
            let l = TcpListener::bind(("127.0.0.1", port)).expect("bind");
            println!("listening on 127.0.0.1:{port}");
            std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    std::thread::spawn(move || echo(conn, port));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn echo(mut conn: TcpStream, port: u16) {
    if conn.write_all(format!("port {port}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}
