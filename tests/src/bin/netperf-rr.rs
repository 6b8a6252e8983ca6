//! `netperf-rr`: request/response rates over TCP, as netperf's TCP_RR and
//! TCP_CRR tests define them, for `bench-net`.
//!
//! `server --listen ADDR` answers every byte it reads with one byte, one
//! connection at a time (the client is a single sequential loop, so a
//! second connection never waits). `client --connect ADDR --mode rr` sends
//! a 1-byte request and waits for the 1-byte response on one connection,
//! over and over; `--mode crr` opens a connection for each transaction and
//! closes it after the response. The client prints one JSON line with the
//! count and the rate (and, for `crr`, the median and 99th percentile of
//! the connect() calls; for `rr`, of the transactions). Both stop by
//! themselves: the client after
//! `--duration`, the server after `--max-seconds`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "netperf-rr",
    about = "TCP request/response (TCP_RR) and connect/request/response/close (TCP_CRR) rates"
)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Answer each byte with one byte.
    Server {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Exit after this many seconds whatever happens.
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
    /// Send 1-byte requests and count the responses.
    Client {
        /// The server's address.
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, value_enum, default_value_t = Mode::Rr)]
        mode: Mode,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// One connection, request/response in a loop.
    Rr,
    /// Connect, request/response, close, in a loop.
    Crr,
}

/// How long either side waits for a byte before deciding the peer is gone.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn serve(listen: SocketAddr, max_seconds: u64) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
    // A watchdog rather than a deadline check in the loop: accept blocks.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_seconds));
        std::process::exit(0);
    });
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf) {
                // The client closed: the server closes too, so the
                // TIME_WAIT state stays on the client side, as with netperf.
                Ok(0) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// One request and its response on `conn`.
fn transact(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(b"x")?;
    let mut b = [0u8; 1];
    conn.read_exact(&mut b)
}

fn open(addr: SocketAddr) -> Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

fn client(addr: SocketAddr, mode: Mode, duration: f64) -> Result<()> {
    if !(duration > 0.0 && duration <= 3600.0) {
        bail!("--duration must be in (0, 3600] seconds");
    }
    let run = Duration::from_secs_f64(duration);
    let mut count: u64 = 0;
    // How long each connect() took (TCP_CRR): the first packet of a flow
    // is the one that pays for finding the service.
    let mut connects: Vec<Duration> = Vec::new();
    // How long each transaction took (TCP_RR): the tail shows what the
    // rate's average hides.
    let mut transactions: Vec<Duration> = Vec::new();
    let start = Instant::now();
    match mode {
        Mode::Rr => {
            let mut conn = open(addr)?;
            while start.elapsed() < run {
                let t = Instant::now();
                transact(&mut conn).context("request/response")?;
                transactions.push(t.elapsed());
                count += 1;
            }
        }
        Mode::Crr => {
            while start.elapsed() < run {
                let t = Instant::now();
                let mut conn = open(addr)?;
                connects.push(t.elapsed());
                transact(&mut conn).context("request/response")?;
                count += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    connects.sort();
    transactions.sort();
    let quantile = |v: &[Duration], q: f64| -> Option<f64> {
        let i = ((v.len() as f64 * q) as usize).min(v.len().checked_sub(1)?);
        Some(v[i].as_secs_f64() * 1e6)
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": format!("{mode:?}").to_lowercase(),
            "transactions": count,
            "seconds": secs,
            "per_second": count as f64 / secs,
            "connect_p50_us": quantile(&connects, 0.5),
            "connect_p99_us": quantile(&connects, 0.99),
            "rr_p50_us": quantile(&transactions, 0.5),
            "rr_p99_us": quantile(&transactions, 0.99),
        })
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let result = match args.role {
        Role::Server {
            listen,
            max_seconds,
        } => serve(listen, max_seconds),
        Role::Client {
            connect,
            mode,
            duration,
        } => client(connect, mode, duration),
    };
    if let Err(e) = result {
        eprintln!("netperf-rr: {e:#}");
        std::process::exit(1);
    }
}
