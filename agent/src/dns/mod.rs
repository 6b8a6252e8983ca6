//! Cluster DNS, served by every agent for the pods of its node.
//!
//! Pods' resolv.conf names the cluster DNS address (`--cluster-dns`, a
//! ClusterIP); the load balancer sends that address's port 53 to this
//! agent's own server on the node's address, so every query stays on its
//! node and is answered from the Services and EndpointSlices the agent
//! already follows. Names outside the cluster domain are relayed to the
//! node's own resolvers. Only the cluster's pods and nodes are answered
//! (see `access`).

pub mod access;
pub mod resolv;
pub mod wire;
pub mod zone;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub use access::Access;
pub use resolv::ClusterDns;
use zone::{Answer, Zone};

/// The zone, shared by the server and the sync loop that fills it.
pub type SharedZone = Arc<RwLock<Zone>>;

/// How long a relayed query waits for an upstream resolver.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The nameservers of a resolv.conf, except `skip` (the cluster DNS
/// itself, which must not ask itself).
pub fn upstreams(resolv_conf: &str, skip: Ipv4Addr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next())?
        })
        .filter_map(|ns| ns.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != std::net::IpAddr::V4(skip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Whether `msg` claims to be a query (QR clear): only queries get an
/// answer, so two servers never bounce errors at each other.
fn is_query(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|b| b & 0x80 == 0)
}

/// Answers DNS on `bind` over UDP and TCP until the process ends, to the
/// clients `access` allows.
pub async fn serve(
    bind: SocketAddr,
    zone: SharedZone,
    upstream: Vec<SocketAddr>,
    access: Access,
) -> std::io::Result<()> {
    let udp = UdpSocket::bind(bind).await?;
    let tcp = TcpListener::bind(bind).await?;
    tracing::info!(%bind, upstream = ?upstream, "cluster DNS listening");
    serve_on(udp, tcp, zone, upstream, access).await;
    Ok(())
}

/// Answers DNS on sockets already bound, until the process ends.
async fn serve_on(
    udp: UdpSocket,
    tcp: TcpListener,
    zone: SharedZone,
    upstream: Vec<SocketAddr>,
    access: Access,
) {
    let udp = Arc::new(udp);
    let upstream = Arc::new(upstream);
    {
        let (zone, upstream, access) = (zone.clone(), upstream.clone(), access.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, from)) = tcp.accept().await else {
                    continue;
                };
                // Dropped: the connection closes at once.
                if !access.allows(from.ip()) {
                    tracing::debug!(%from, "cluster DNS: a connection from outside the cluster");
                    continue;
                }
                let Some(slot) = access.tcp_slot() else {
                    continue;
                };
                let (zone, upstream) = (zone.clone(), upstream.clone());
                tokio::spawn(async move {
                    serve_tcp(conn, zone, upstream).await;
                    drop(slot);
                });
            }
        });
    }
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, from) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("cluster DNS: {e}");
                continue;
            }
        };
        let msg = &buf[..len];
        if !access.allows(from.ip()) {
            if is_query(msg) {
                if let Some(reply) = wire::error_for(msg, wire::RCODE_REFUSED) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
            continue;
        }
        let Some(slot) = access.udp_slot() else {
            // Too much at once: fail this one now rather than queue it.
            if is_query(msg) {
                if let Some(reply) = wire::error_for(msg, wire::RCODE_SERVFAIL) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
            continue;
        };
        let msg = msg.to_vec();
        let (udp, zone, upstream) = (udp.clone(), zone.clone(), upstream.clone());
        // Relayed queries wait on another server: never hold up the rest.
        tokio::spawn(async move {
            let reply = handle(&msg, &zone, &upstream, wire::UDP_LIMIT).await;
            drop(slot);
            if let Some(reply) = reply {
                let _ = udp.send_to(&reply, from).await;
            }
        });
    }
}

/// One TCP connection: length-prefixed queries, answered in turn.
async fn serve_tcp(mut conn: TcpStream, zone: SharedZone, upstream: Arc<Vec<SocketAddr>>) {
    loop {
        let mut len = [0u8; 2];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut len)).await;
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if conn.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(reply) = handle(&msg, &zone, &upstream, usize::from(u16::MAX)).await else {
            return;
        };
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The response to one message (None: nothing worth answering).
async fn handle(
    msg: &[u8],
    zone: &SharedZone,
    upstream: &[SocketAddr],
    limit: usize,
) -> Option<Vec<u8>> {
    let q = match wire::parse_query(msg) {
        Ok(q) => q,
        Err(wire::WireError::NotQuery) => return None,
        Err(_) => return wire::error_for(msg, wire::RCODE_FORMERR),
    };
    if !q.standard || q.question.qclass != wire::CLASS_IN {
        return Some(wire::response(
            &q,
            wire::RCODE_NOTIMP,
            false,
            &[],
            &[],
            limit,
        ));
    }
    // A poisoned lock only means a writer panicked between two whole
    // updates of a map: what is there is still a consistent zone.
    let answer = zone
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .answer(&q.question);
    let (rcode, answers, additional) = match answer {
        Answer::Found(a, add) => (wire::RCODE_OK, a, add),
        Answer::NoData => (wire::RCODE_OK, vec![], vec![]),
        Answer::NxDomain => (wire::RCODE_NXDOMAIN, vec![], vec![]),
        Answer::Outside => {
            return Some(match relay(msg, upstream).await {
                Some(reply) => reply,
                None => wire::response(&q, wire::RCODE_SERVFAIL, false, &[], &[], limit),
            });
        }
    };
    Some(wire::response(
        &q,
        rcode,
        true,
        &answers,
        &additional,
        limit,
    ))
}

/// Asks the upstream resolvers in turn; the first reply is passed on
/// unchanged.
async fn relay(msg: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let local: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.send_to(msg, server).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        if let Ok(Ok((len, from))) =
            tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv_from(&mut buf)).await
        {
            if from == *server {
                buf.truncate(len);
                return Some(buf);
            }
        }
    }
    None
}

/// Makes sure Service kube-system/kube-dns holds the cluster DNS address,
/// so the API server never hands it to another Service. Best effort: node
/// credentials may not create Services, then an administrator does.
pub async fn reserve(client: kube::Client, ip: Ipv4Addr) {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, PostParams};
    let api: Api<Service> = Api::namespaced(client, "kube-system");
    match api.get_opt("kube-dns").await {
        Ok(Some(svc)) => {
            let have = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
            if have != ip.to_string() {
                tracing::warn!(
                    "Service kube-system/kube-dns has ClusterIP {have}, not the cluster DNS address {ip}"
                );
            }
            return;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!("reading Service kube-system/kube-dns: {e}");
            return;
        }
    }
    let svc: Service = match serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "KubeDNS"}},
        "spec": {"clusterIP": ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]},
    })) {
        Ok(s) => s,
        Err(_) => return,
    };
    match api.create(&PostParams::default(), &svc).await {
        Ok(_) => tracing::info!("created Service kube-system/kube-dns at {ip}"),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => tracing::info!(
            "could not create Service kube-system/kube-dns ({e}); create it with clusterIP {ip} so no other Service takes that address"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_skip_the_cluster_dns() {
        let conf = "nameserver 10.96.0.10\nnameserver 192.0.2.53\n# nameserver 1.1.1.1\nsearch x\n";
        assert_eq!(
            upstreams(conf, Ipv4Addr::new(10, 96, 0, 10)),
            vec!["192.0.2.53:53".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn answers_over_udp_and_tcp_and_refuses_garbage() {
        use k8s_openapi::api::core::v1::Service;
        let mut z = Zone::new("cluster.local");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80}]}
        }))
        .unwrap();
        z.set("default", "web", Some(zone::record(&svc, [])));
        let zone = Arc::new(RwLock::new(z));
        let q = wire::query_bytes(42, "web.default.svc.cluster.local", wire::TYPE_A);
        let reply = handle(&q, &zone, &[], wire::UDP_LIMIT).await.unwrap();
        let (rcode, _, records) = wire::parse_response(&reply).unwrap();
        assert_eq!(rcode, wire::RCODE_OK);
        assert_eq!(records[0].data, wire::Data::A(Ipv4Addr::new(10, 96, 0, 7)));
        let q = wire::query_bytes(43, "nope.default.svc.cluster.local", wire::TYPE_A);
        let reply = handle(&q, &zone, &[], wire::UDP_LIMIT).await.unwrap();
        assert_eq!(
            wire::parse_response(&reply).unwrap().0,
            wire::RCODE_NXDOMAIN
        );
        // Outside the domain with no upstream: SERVFAIL, not silence.
        let q = wire::query_bytes(44, "example.com", wire::TYPE_A);
        let reply = handle(&q, &zone, &[], wire::UDP_LIMIT).await.unwrap();
        assert_eq!(
            wire::parse_response(&reply).unwrap().0,
            wire::RCODE_SERVFAIL
        );
        let reply = handle(&[1, 2, 3], &zone, &[], wire::UDP_LIMIT).await;
        assert!(reply.is_some_and(|r| r[3] & 0xf == wire::RCODE_FORMERR));

        // The real sockets, on loopback.
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let probe = UdpSocket::bind(addr).await.unwrap();
        let bind = probe.local_addr().unwrap();
        drop(probe);
        let loopback = Access::new(vec!["127.0.0.0/8".parse().unwrap()], 8);
        tokio::spawn(serve(bind, zone.clone(), vec![], loopback));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let client = UdpSocket::bind(addr).await.unwrap();
        let q = wire::query_bytes(45, "web.default.svc.cluster.local", wire::TYPE_A);
        client.send_to(&q, bind).await.unwrap();
        let mut buf = [0u8; 512];
        let len = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(wire::parse_response(&buf[..len]).unwrap().2.len(), 1);
        let mut tcp = TcpStream::connect(bind).await.unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        tcp.write_all(&framed).await.unwrap();
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut reply).await.unwrap();
        assert_eq!(wire::parse_response(&reply).unwrap().2.len(), 1);
    }

    /// A server on a free loopback port (UDP and TCP on the same one).
    async fn start(zone: &SharedZone, upstream: Vec<SocketAddr>, access: Access) -> SocketAddr {
        loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let bind = udp.local_addr().unwrap();
            let Ok(tcp) = TcpListener::bind(bind).await else {
                continue;
            };
            tokio::spawn(serve_on(udp, tcp, zone.clone(), upstream, access));
            return bind;
        }
    }

    /// The rcode of the answer to `q` sent from `client`, if one comes
    /// within `wait`.
    async fn ask(client: &UdpSocket, server: SocketAddr, q: &[u8], wait: Duration) -> Option<u8> {
        client.send_to(q, server).await.unwrap();
        let mut buf = [0u8; 512];
        let len = tokio::time::timeout(wait, client.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(wire::parse_response(&buf[..len]).ok()?.0)
    }

    fn web_zone() -> SharedZone {
        use k8s_openapi::api::core::v1::Service;
        let mut z = Zone::new("cluster.local");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80}]}
        }))
        .unwrap();
        z.set("default", "web", Some(zone::record(&svc, [])));
        Arc::new(RwLock::new(z))
    }

    #[tokio::test]
    async fn sources_outside_the_cluster_are_refused() {
        let zone = web_zone();
        let q = wire::query_bytes(7, "web.default.svc.cluster.local", wire::TYPE_A);
        let wait = Duration::from_secs(2);
        // The client is 127.0.0.1: outside a server that answers only the
        // pod network and a node address.
        let cluster_only = Access::new(
            vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.99.0.10/32".parse().unwrap(),
            ],
            8,
        );
        let server = start(&zone, vec![], cluster_only).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(
            ask(&client, server, &q, wait).await,
            Some(wire::RCODE_REFUSED)
        );
        // Over TCP the connection is closed without an answer.
        let mut tcp = TcpStream::connect(server).await.unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let _ = tcp.write_all(&framed).await;
        let mut len = [0u8; 2];
        let read = tokio::time::timeout(wait, tcp.read_exact(&mut len)).await;
        assert!(matches!(read, Ok(Err(_))), "{read:?}");
        // The same query from an allowed source is answered.
        let loopback = Access::new(vec!["127.0.0.1/32".parse().unwrap()], 8);
        let server = start(&zone, vec![], loopback).await;
        assert_eq!(ask(&client, server, &q, wait).await, Some(wire::RCODE_OK));
    }

    #[tokio::test]
    async fn queries_beyond_the_bound_get_servfail_at_once() {
        let zone = web_zone();
        // An upstream that never answers holds a relayed query for the
        // whole upstream timeout.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let one = Access::new(vec!["127.0.0.0/8".parse().unwrap()], 1);
        let server = start(&zone, vec![silent.local_addr().unwrap()], one).await;
        let slow = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let outside = wire::query_bytes(8, "example.com", wire::TYPE_A);
        slow.send_to(&outside, server).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The slot is taken: a second query is turned away.
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let q = wire::query_bytes(9, "web.default.svc.cluster.local", wire::TYPE_A);
        // Answered from the zone it would be OK; SERVFAIL says it was
        // turned away while the relayed one still held the slot.
        assert_eq!(
            ask(&client, server, &q, UPSTREAM_TIMEOUT).await,
            Some(wire::RCODE_SERVFAIL)
        );
        // Once the relayed query gives up, the slot is free again.
        let mut buf = [0u8; 512];
        let len = tokio::time::timeout(UPSTREAM_TIMEOUT * 2, slow.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            wire::parse_response(&buf[..len]).unwrap().0,
            wire::RCODE_SERVFAIL
        );
        assert_eq!(
            ask(&client, server, &q, Duration::from_secs(2)).await,
            Some(wire::RCODE_OK)
        );
    }
}
