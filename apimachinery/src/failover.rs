//! Client-side failover between API servers. A client of a highly
//! available control plane (an agent, a scheduler) is given every API
//! server's URL; it talks to a TCP relay on its own loopback that forwards
//! each new connection to the API server it used last, or to the next one
//! that accepts when that one does not. TLS passes through untouched, so
//! the client verifies the API server as before (every serving certificate
//! names 127.0.0.1).
//!
//! A connection ends when its API server goes away (the kernel resets it
//! when the process dies, keepalives notice a vanished host), and the
//! client's reconnect then lands on a live server. Connections are sticky
//! to one server so watches and their follow-up requests see the same
//! cache.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long one API server gets to accept a connection before the next
/// one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle time before keepalive probes, and their interval: a host that
/// vanished without a reset is noticed within about 20 s.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// One API server: `host:port` to dial and the URL it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub scheme: String,
    pub authority: String,
}

/// Parses `https://host:port` (or `http://`; the port defaults to the
/// scheme's) into what the relay dials.
pub fn parse_server(url: &str) -> Result<Server, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (want https://HOST:PORT)"))?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        other => return Err(format!("{url:?}: scheme {other:?} is not http or https")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} has no host"));
    }
    // The text after the last colon is a port unless that colon sits
    // inside a bracketed IPv6 host.
    let has_port = match authority.rsplit_once(':') {
        Some((host, _)) if host.starts_with('[') && !host.ends_with(']') => false,
        Some((_, port)) => {
            port.parse::<u16>()
                .map_err(|_| format!("{url:?}: port {port:?} is not a number"))?;
            true
        }
        None => false,
    };
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    Ok(Server {
        scheme: scheme.to_string(),
        authority,
    })
}

/// Which API server new connections go to first, shared by the relay's
/// connections.
struct Shared {
    servers: Vec<Server>,
    preferred: AtomicUsize,
}

/// A running relay; it lives as long as the runtime it was started on.
pub struct Relay {
    /// The loopback address clients connect to.
    pub local: SocketAddr,
    /// The URL clients use: the servers' scheme on `local`.
    pub url: String,
}

/// Starts a relay on 127.0.0.1 (a free port) in front of `urls`, which
/// must share a scheme.
pub async fn start(urls: &[String]) -> Result<Relay, String> {
    let servers = urls
        .iter()
        .map(|u| parse_server(u))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = servers.first() else {
        return Err("no API server given".into());
    };
    if let Some(other) = servers.iter().find(|s| s.scheme != first.scheme) {
        return Err(format!(
            "API servers mix {} and {}: give one scheme",
            first.scheme, other.scheme
        ));
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("binding the API server relay: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("the API server relay's address: {e}"))?;
    let url = format!("{}://{local}", first.scheme);
    let shared = Arc::new(Shared {
        servers,
        preferred: AtomicUsize::new(0),
    });
    tokio::spawn(serve(listener, shared));
    Ok(Relay { local, url })
}

/// The URL a client should use for `urls`: none for none, the URL itself
/// for one, and a relay's for several.
pub async fn client_url(urls: &[String]) -> Result<Option<String>, String> {
    match urls {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        several => Ok(Some(start(several).await?.url)),
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((inbound, _)) => {
                tokio::spawn(relay(inbound, shared.clone()));
            }
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "API server relay: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Dials the preferred server, then the others in order, and copies bytes
/// both ways until either side closes.
async fn relay(mut inbound: TcpStream, shared: Arc<Shared>) {
    let _ = inbound.set_nodelay(true);
    let Some(mut outbound) = dial(&shared).await else {
        tracing::warn!(
            servers = ?shared.servers.iter().map(|s| &s.authority).collect::<Vec<_>>(),
            "no API server accepts connections"
        );
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}

async fn dial(shared: &Shared) -> Option<TcpStream> {
    let n = shared.servers.len();
    let start = shared.preferred.load(Ordering::Relaxed) % n;
    for k in 0..n {
        let i = (start + k) % n;
        let server = &shared.servers[i];
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&server.authority)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE)
                    .with_interval(KEEPALIVE);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                if i != start
                    && shared
                        .preferred
                        .compare_exchange(start, i, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        from = %shared.servers[start].authority,
                        to = %server.authority,
                        "API server failover"
                    );
                }
                return Some(stream);
            }
            Ok(Err(e)) => {
                tracing::debug!(server = %server.authority, error = %e, "API server refused")
            }
            Err(_) => tracing::debug!(server = %server.authority, "API server did not answer"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn server_urls_parse() {
        let s = parse_server("https://10.0.0.1:6443").unwrap();
        assert_eq!(
            (s.scheme.as_str(), s.authority.as_str()),
            ("https", "10.0.0.1:6443")
        );
        assert_eq!(
            parse_server("https://cp.example/").unwrap().authority,
            "cp.example:443"
        );
        assert_eq!(parse_server("http://[::1]").unwrap().authority, "[::1]:80");
        assert_eq!(
            parse_server("http://[::1]:8080").unwrap().authority,
            "[::1]:8080"
        );
        assert!(parse_server("10.0.0.1:6443").is_err());
        assert!(parse_server("ftp://x:1").is_err());
        assert!(parse_server("https://x:port").is_err());
    }

    /// An echo server that prefixes what it sends back with `tag`.
    async fn tagged_echo(tag: &'static [u8]) -> (String, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(tag).await.is_err() {
                            return;
                        }
                        let _ = s.write_all(&buf[..n]).await;
                    }
                });
            }
        });
        (url, task)
    }

    async fn round_trip(relay: &Relay) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(relay.local).await.ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut buf = vec![0u8; 5];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn connections_fail_over_to_the_next_server_and_stay_there() {
        let (a, a_task) = tagged_echo(b"a").await;
        let (b, _b_task) = tagged_echo(b"b").await;
        let relay = start(&[a, b]).await.unwrap();
        assert!(relay.url.starts_with("http://127.0.0.1:"));
        assert_eq!(round_trip(&relay).await.unwrap(), b"aping");
        // The first server goes away: its port refuses from now on.
        a_task.abort();
        let _ = a_task.await;
        assert_eq!(round_trip(&relay).await.unwrap(), b"bping");
        assert_eq!(round_trip(&relay).await.unwrap(), b"bping");
    }

    #[tokio::test]
    async fn no_live_server_closes_the_connection() {
        // A port nobody listens on: bind, note, close.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let relay = start(&[dead]).await.unwrap();
        assert_eq!(round_trip(&relay).await, None);
    }

    #[tokio::test]
    async fn mixed_schemes_are_refused() {
        let err = start(&["http://a:1".into(), "https://b:2".into()])
            .await
            .err()
            .unwrap();
        assert!(err.contains("mix"), "{err}");
    }
}
