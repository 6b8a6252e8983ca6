//! Pods these tests run and how they check them: a busybox HTTP server,
//! fetches and pings from inside a pod, the agent's datapath counters, and
//! the nodes' logs for a failure.

use std::time::Duration;

use harness::kubectl::Kubectl;
use harness::node::Node;
use harness::process::wait_for;
use serde_json::Value;

fn logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- agent {} log\n{}", n.name, n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pod serving HTTP on :8080 (busybox httpd) bound to `node`.
pub(crate) fn server_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: net}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']
---
"#
    )
}

/// Waits for pod `name` to run and returns its IP.
pub(crate) fn running_ip(k: &Kubectl, name: &str, nodes: &[&Node]) -> String {
    wait_for(Duration::from_secs(60), || {
        let p: Value =
            serde_json::from_str(&k.run(&["get", "pod", name, "-o", "json"]).ok()?).ok()?;
        (p["status"]["phase"] == "Running")
            .then(|| p["status"]["podIP"].as_str().map(String::from))
            .flatten()
    })
    .unwrap_or_else(|| panic!("pod {name} did not run with an IP\n{}", logs(nodes)))
}

pub(crate) fn exec(k: &Kubectl, pod: &str, cmd: &[&str]) -> Result<String, String> {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    let out = k.output(&args).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// An HTTP GET with busybox `nc` (Debian's static busybox `wget` crashes);
/// returns the body.
fn get_cmd(ip: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080"),
    ]
}

fn body(response: &str) -> Option<String> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.trim().to_string())
}

/// `pod` fetches `http://ip:8080/` and must get the page of `expect`.
pub(crate) fn http(k: &Kubectl, pod: &str, ip: &str, expect: &str, nodes: &[&Node]) {
    let cmd = get_cmd(ip);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let got = wait_for(Duration::from_secs(10), || body(&exec(k, pod, &cmd).ok()?));
    let got = got.unwrap_or_else(|| {
        panic!(
            "{pod} could not fetch http://{ip}:8080/: {:?}\n{}\n{}",
            exec(k, pod, &cmd),
            nodes.iter().map(|n| n.bpf_status()).collect::<String>(),
            logs(nodes)
        )
    });
    assert_eq!(got, format!("hello from {expect}"), "{pod} -> {ip}");
}

pub(crate) fn ping(k: &Kubectl, pod: &str, ip: &str, nodes: &[&Node]) {
    let ok = wait_for(Duration::from_secs(10), || {
        exec(k, pod, &["ping", "-c", "1", "-W", "2", ip]).ok()
    });
    assert!(
        ok.is_some(),
        "{pod} cannot ping {ip}: {:?}\n{}",
        exec(k, pod, &["ping", "-c", "1", "-W", "2", ip]),
        nodes.iter().map(|n| n.bpf_status()).collect::<String>()
    );
}

pub(crate) fn counter(node: &Node, name: &str) -> u64 {
    let status = node.bpf_status();
    status
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no counter {name} in:\n{status}"))
}

pub(crate) fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let parse = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
    let mask = u32::MAX << (32 - len.parse::<u32>().unwrap());
    parse(ip) & mask == parse(net) & mask
}
