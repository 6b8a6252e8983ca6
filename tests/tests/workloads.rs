//! User stories of the run-to-completion and per-node workloads (Jobs and
//! DaemonSets), with the real API server, etcd and kubectl 1.32.

use harness::cluster::ControlPlane;
use harness::kubectl::Kubectl;
use serde_json::Value;

fn get(k: &Kubectl, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = k.run(&a).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn a_user_creates_a_job_with_kubectl_and_sees_it_listed() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    let out = k
        .run(&[
            "create",
            "job",
            "hello",
            "--image=busybox",
            "--",
            "echo",
            "hi",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "job.batch/hello created");
    let job = get(&k, &["job", "hello"]);
    let spec = &job["spec"];
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["backoffLimit"], 6);
    assert_eq!(spec["completionMode"], "NonIndexed");
    assert_eq!(spec["manualSelector"], false);
    let uid = job["metadata"]["uid"].as_str().expect("a uid");
    assert_eq!(
        spec["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(labels["batch.kubernetes.io/job-name"], "hello");
    assert_eq!(labels["job-name"], "hello");
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");

    let table = k.run(&["get", "jobs"]).unwrap_or_else(|e| panic!("{e}"));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(row[..3], ["hello", "Running", "0/1"], "{table}");

    // `all` includes jobs, and the status subresource is writable alone.
    let all = k.run(&["get", "all"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(all.contains("job.batch/hello"), "{all}");
    let patched = k
        .output(&[
            "patch",
            "job",
            "hello",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"active":1}}"#,
        ])
        .unwrap();
    assert!(
        patched.status.success(),
        "{}",
        String::from_utf8_lossy(&patched.stderr)
    );
    assert_eq!(get(&k, &["job", "hello"])["status"]["active"], 1);

    k.run(&["delete", "job", "hello"])
        .unwrap_or_else(|e| panic!("{e}"));
    let gone = k.output(&["get", "job", "hello"]).unwrap();
    assert!(!gone.status.success(), "the job is deleted");
}

#[test]
fn a_job_that_would_restart_its_pods_forever_is_refused_naming_the_field() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    let yaml = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: forever}
spec:
  backoffLimit: -1
  template:
    spec:
      restartPolicy: Always
      containers: [{name: c, image: busybox}]
"#;
    let out = k.run_stdin(&["apply", "-f", "-"], yaml).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(err.contains("spec.template.spec.restartPolicy"), "{err}");
    assert!(err.contains("spec.backoffLimit"), "{err}");
    let listed = k.run(&["get", "jobs", "-o", "name"]).unwrap();
    assert!(listed.trim().is_empty(), "{listed}");
}
