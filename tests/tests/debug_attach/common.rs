//! The node, the web pod most tests debug or attach to, an ephemeral
//! container's status, and kubectl run for a bounded time.

use harness::kubectl::Kubectl;
use serde_json::Value;

pub(crate) type Agent = harness::node::Node;

/// A pod whose main container serves a page on localhost:8080.
pub(crate) fn web_pod(k: &Kubectl, agent: &Agent, name: &str) {
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: busybox
    command: [sh, -c, "mkdir /www; echo hello-from-web > /www/index.html; exec httpd -f -p 8080 -h /www"]
"#
    ));
    agent.wait(60, "the web pod running", || {
        let p = k.get_json(&["pod", name]);
        (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
    });
}

pub(crate) fn ephemeral_status(pod: &Value, name: &str) -> Option<Value> {
    pod["status"]["ephemeralContainerStatuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// Runs kubectl `args` for at most `secs` seconds; returns its stdout and
/// stderr.
pub(crate) fn run_for(k: &Kubectl, args: &[&str], secs: u64) -> (String, String) {
    let inner = k.command(args);
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg(secs.to_string()).arg(inner.get_program());
    cmd.args(inner.get_args());
    let out = cmd.output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
