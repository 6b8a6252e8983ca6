//! The paths measured: the node with its client and server pods behind a
//! Service, the baselines' veth pairs, and how every path grows to a
//! service count.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};

use harness::cluster::ControlPlane;
use harness::net::{veth_between, Netns};
use harness::netbench::kube_proxy;
use harness::netbench::testbed::{pod_endpoint, pod_yaml};
use harness::netbench::{check_interrupted, kube_client, Pair, IPERF_PORT, RR_PORT};
use harness::node::Node;
use kestrel_agent::services::model::{Frontend, Proto};

use crate::{BASELINE_VIP, CHANGES, IPTABLES, NFTABLES};

/// A cgroup directory removed on drop (once the clients in it are gone).
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

/// Everything the paths are made of, removed on drop in field order.
pub(crate) struct Testbed {
    // Empty once the measurements are over; it goes before the agent's
    // reset removes the subtree it is in.
    _client_cgroup: Cgroup,
    node: Node,
    cp: ControlPlane,
    /// The veth pairs of the rule-less, iptables and nftables paths.
    veths: Vec<(Netns, Netns)>,
    pub(crate) pairs: Vec<Pair>,
    /// The measured Service's ClusterIP.
    pub(crate) vip: Ipv4Addr,
}

/// A client and a server namespace on one veth pair, 10.98.`subnet`.0/24.
fn veth_pair(tag: &str, subnet: u8) -> Result<((Netns, Netns), Pair)> {
    let a = Netns::new(&format!("{tag}c"))?;
    let b = Netns::new(&format!("{tag}s"))?;
    let (in_a, in_b) = veth_between(&a, &b, tag)?;
    a.addr_up(&in_a, &format!("10.98.{subnet}.1/24"))?;
    b.addr_up(&in_b, &format!("10.98.{subnet}.2/24"))?;
    // A node has a default route; the service addresses need one to get
    // as far as the nat table.
    a.exec(&["ip", "route", "add", "default", "dev", &in_a])?;
    let server: Ipv4Addr = format!("10.98.{subnet}.2").parse()?;
    let pair = Pair::new(a.path(), b.path(), server);
    Ok(((a, b), pair))
}

pub(crate) fn build(rt: &tokio::runtime::Runtime) -> Result<Testbed> {
    eprintln!("  plain veth pairs");
    let mut veths = Vec::new();
    let mut baseline = Vec::new();
    for (tag, subnet) in [("sv", 10), ("si", 11), ("sn", 12)] {
        let (ns, pair) = veth_pair(tag, subnet)?;
        veths.push(ns);
        baseline.push(pair);
    }
    eprintln!("  control plane, one agent, a client and a server pod");
    let cp = ControlPlane::start_networked(&[])?;
    let node = Node::start(&cp);
    let k = cp.kubectl();
    let yaml = pod_yaml("client", &node.name) + &pod_yaml("server", &node.name);
    let out = k.run_stdin(&["apply", "-f", "-"], &yaml)?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (client_ns, _) = pod_endpoint(&k, "client", &node)?;
    let (server_ns, server_ip) = pod_endpoint(&k, "server", &node)?;
    let vip = rt.block_on(measured_service(&cp, server_ip))?;
    let mount = kestrel_agent::services::cgroup::v2_mount()
        .context("no cgroup v2 hierarchy: the socket programs need one")?;
    let dir =
        kestrel_agent::services::cgroup::group_dir(&mount, &node.cgroup_root).join("bench-client");
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let client_cgroup = Cgroup(dir.clone());
    // Both clients sit where a pod's processes do, under the agent's
    // socket programs: to the pod IP they look the address up and find no
    // service, as a pod's connection to another pod's address does.
    let mut direct = Pair::new(client_ns, server_ns, server_ip);
    direct.client_cgroup = Some(dir);
    let mut ours = direct.clone();
    ours.connect_ip = Some(vip);
    let mut pairs = vec![direct, ours, baseline[0].clone()];
    for mut p in baseline.drain(1..) {
        p.connect_ip = Some(BASELINE_VIP);
        pairs.push(p);
    }
    Ok(Testbed {
        node,
        cp,
        _client_cgroup: client_cgroup,
        veths,
        pairs,
        vip,
    })
}

/// The Service in front of the server pod, on the two ports the
/// measurements use, with an EndpointSlice naming the pod; returns its
/// ClusterIP.
async fn measured_service(cp: &ControlPlane, server: Ipv4Addr) -> Result<Ipv4Addr> {
    let c = kube_client(cp)?;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "measured"},
        "spec": {"ports": [
            {"name": "rr", "port": RR_PORT, "targetPort": RR_PORT},
            {"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT},
        ]},
    }))?;
    let svc = Api::<Service>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "measured-x", "labels": {"kubernetes.io/service-name": "measured"}},
        "addressType": "IPv4",
        "ports": [
            {"name": "rr", "port": RR_PORT, "protocol": "TCP"},
            {"name": "iperf", "port": IPERF_PORT, "protocol": "TCP"},
        ],
        "endpoints": [{"addresses": [server.to_string()], "conditions": {"ready": true}}],
    }))?;
    Api::<EndpointSlice>::namespaced(c, "default")
        .create(&PostParams::default(), &slice)
        .await?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service got no ClusterIP")?;
    Ok(ip.parse()?)
}

/// Adds filler Services (3 endpoints each) `from..to` through the API;
/// returns the ClusterIP of the last one.
async fn add_fillers(cp: &ControlPlane, from: usize, to: usize) -> Result<Option<Ipv4Addr>> {
    let c = kube_client(cp)?;
    let services: Api<Service> = Api::namespaced(c.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c, "default");
    let made: Vec<Result<String>> = futures::stream::iter(from..to)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let svc: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("f{i}")},
                    "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
                }))?;
                let svc = services.create(&PostParams::default(), &svc).await?;
                let ips: Vec<String> = (0..3)
                    .map(|j| {
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 160, 0, 0)) + i as u32 * 3 + j)
                            .to_string()
                    })
                    .collect();
                let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("f{i}-x"), "labels": {"kubernetes.io/service-name": format!("f{i}")}},
                    "addressType": "IPv4",
                    "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                    "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
                }))?;
                slices.create(&PostParams::default(), &slice).await?;
                svc.spec
                    .and_then(|s| s.cluster_ip)
                    .context("a Service got no ClusterIP")
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut last = None;
    for r in made {
        last = Some(r?.parse()?);
    }
    Ok(last)
}

/// Brings every path to `n` services: fillers through the API until the
/// agent has programmed the last, and the baselines' rule sets; returns
/// the seconds `iptables-restore` and `nft -f` took to load theirs.
pub(crate) fn grow(
    rt: &tokio::runtime::Runtime,
    bed: &Testbed,
    have: usize,
    n: usize,
) -> Result<(f64, f64)> {
    let t = Instant::now();
    if n > have {
        // The measured Service is one of the n.
        let last = rt.block_on(add_fillers(&bed.cp, have.max(1) - 1, n - 1))?;
        if let Some(vip) = last {
            let fe = Frontend {
                vip,
                port: 80,
                proto: Proto::Tcp,
            };
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                check_interrupted()?;
                let programmed = kestrel_agent::services::bpf::lookup(&bed.node.bpffs_dir, &fe)
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.len() == 3);
                if programmed {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the agent did not program {n} services in 300 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let ours = t.elapsed();
    let server = |p: &Pair, port: u16| kube_proxy::Service {
        vip: BASELINE_VIP,
        port,
        endpoints: vec![(p.server_ip, port)],
    };
    let ipt = &bed.pairs[IPTABLES];
    let set = kube_proxy::services(n, &[server(ipt, RR_PORT), server(ipt, IPERF_PORT)]);
    let t = Instant::now();
    load(
        &bed.veths[1].0,
        "iptables-restore",
        &kube_proxy::iptables(&set),
    )?;
    let ipt_took = t.elapsed();
    let nft = &bed.pairs[NFTABLES];
    let set = kube_proxy::services(n, &[server(nft, RR_PORT), server(nft, IPERF_PORT)]);
    let t = Instant::now();
    load(&bed.veths[2].0, "nft -f", &kube_proxy::nftables(&set))?;
    let nft_took = t.elapsed();
    eprintln!(
        "  {n} services: programmed by the agent in {:.1} s, iptables-restore {:.1} s, nft {:.1} s",
        ours.as_secs_f64(),
        ipt_took.as_secs_f64(),
        nft_took.as_secs_f64()
    );
    Ok((ipt_took.as_secs_f64(), nft_took.as_secs_f64()))
}

/// Times `CHANGES` endpoint changes of filler `f0`: each replaces its
/// slice with the third endpoint at a new address and waits until the
/// node's maps hold it; milliseconds from the API's answer, in order.
pub(crate) async fn endpoint_changes(bed: &Testbed) -> Result<Vec<f64>> {
    let c = kube_client(&bed.cp)?;
    let vip: Ipv4Addr = Api::<Service>::namespaced(c.clone(), "default")
        .get("f0")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("f0 got no ClusterIP")?
        .parse()?;
    let fe = Frontend {
        vip,
        port: 80,
        proto: Proto::Tcp,
    };
    let slices: Api<EndpointSlice> = Api::namespaced(c, "default");
    let mut lags = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        check_interrupted()?;
        let mut slice = slices.get("f0-x").await?;
        let moved = Ipv4Addr::new(10, 251, 0, k as u8 + 1);
        let third = slice
            .endpoints
            .get_mut(2)
            .context("f0's slice lost its third endpoint")?;
        third.addresses = vec![moved.to_string()];
        slices
            .replace("f0-x", &PostParams::default(), &slice)
            .await?;
        let written = Instant::now();
        let deadline = written + Duration::from_secs(30);
        loop {
            let seen = kestrel_agent::services::bpf::lookup(&bed.node.bpffs_dir, &fe)
                .ok()
                .flatten()
                .is_some_and(|b| b.len() == 3 && b.iter().any(|t| t.ip == moved));
            if seen {
                break;
            }
            if Instant::now() > deadline {
                bail!("endpoint change {k} did not reach the maps in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(written.elapsed().as_secs_f64() * 1e3);
    }
    Ok(lags)
}

/// Feeds `input` to `program` (with its arguments) inside `ns`.
fn load(ns: &Netns, program: &str, input: &str) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), input)?;
    let mut cmd: Vec<&str> = program.split_whitespace().collect();
    let path = file.path().to_string_lossy().into_owned();
    cmd.push(&path);
    ns.exec(&cmd)
        .with_context(|| format!("{program} in {}", ns.name()))?;
    Ok(())
}
