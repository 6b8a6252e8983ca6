//! User stories of the run-to-completion and per-node workloads (Jobs and
//! DaemonSets), with the real API server, etcd and kubectl 1.32.

use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::hollow::HollowCluster as Cluster;
use harness::kubectl::Kubectl;
use harness::process::wait_for;
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

/// `kubectl wait` for a job condition, failing with what explains why not.
fn wait_job(c: &Cluster, job: &str, condition: &str, secs: u64) {
    let out =
        c.k.output(&[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("job/{job}"),
            &format!("--timeout={secs}s"),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n--- job\n{}\n--- pods\n{}\n--- controller-manager\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.k.run(&["get", "job", job, "-o", "yaml"])
            .unwrap_or_default(),
        c.k.run(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
        c.cp.log("controller-manager"),
    );
}

fn pods_of(c: &Cluster, job: &str) -> Vec<Value> {
    get(
        &c.k,
        &["pods", "-l", &format!("batch.kubernetes.io/job-name={job}")],
    )["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn job_yaml(name: &str, extra_spec: &str, exit_code: i32) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra_spec}
  template:
    metadata:
      annotations: {{hollow.kestrel.dev/exit-code: "{exit_code}"}}
    spec:
      restartPolicy: Never
      containers: [{{name: work, image: busybox}}]
"#
    )
}

#[test]
fn a_job_of_five_completions_two_at_a_time_completes_and_kubectl_wait_returns() {
    let c = Cluster::start(3);
    c.k.apply(&job_yaml("batch5", "  completions: 5\n  parallelism: 2", 0));
    wait_job(&c, "batch5", "complete", 90);
    let job = get(&c.k, &["job", "batch5"]);
    assert_eq!(job["status"]["succeeded"], 5, "{job}");
    assert!(job["status"]["completionTime"].is_string(), "{job}");
    let pods = pods_of(&c, "batch5");
    assert_eq!(pods.len(), 5, "exactly five pods ran");
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert!(
            p["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "counted pods keep no tracking finalizer: {p}"
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Job");
    }
    let table = c.k.run(&["get", "job", "batch5"]).unwrap();
    assert!(
        table.contains("Complete") && table.contains("5/5"),
        "{table}"
    );

    // Deleting the job takes its pods with it.
    c.k.run(&["delete", "job", "batch5"]).unwrap();
    let gone = wait_for(Duration::from_secs(30), || {
        pods_of(&c, "batch5").is_empty().then_some(())
    });
    assert!(gone.is_some(), "pods outlived their job");
}

#[test]
fn a_job_whose_pods_fail_gives_up_after_its_backoff_limit() {
    let c = Cluster::start(1);
    c.k.apply(&job_yaml("doomed", "  backoffLimit: 1", 1));
    wait_job(&c, "doomed", "failed", 90);
    let job = get(&c.k, &["job", "doomed"]);
    let failed = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{job}");
    assert_eq!(
        job["status"]["failed"], 2,
        "the first try and one retry: {job}"
    );
    assert_eq!(pods_of(&c, "doomed").len(), 2);
}

#[test]
fn an_indexed_job_runs_each_index_once() {
    let c = Cluster::start(2);
    c.k.apply(&job_yaml(
        "indexed",
        "  completions: 4\n  parallelism: 2\n  completionMode: Indexed",
        0,
    ));
    wait_job(&c, "indexed", "complete", 90);
    let job = get(&c.k, &["job", "indexed"]);
    assert_eq!(job["status"]["completedIndexes"], "0-3", "{job}");
    let mut indexes: Vec<String> = pods_of(&c, "indexed")
        .iter()
        .map(|p| {
            let i = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            assert_eq!(p["spec"]["hostname"], format!("indexed-{i}"));
            let env = &p["spec"]["containers"][0]["env"];
            assert!(
                env.as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["name"] == "JOB_COMPLETION_INDEX" && e["value"] == i.as_str()),
                "{env}"
            );
            i
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2", "3"]);
}

/// A `podFailurePolicy` with one rule, indented for [`job_yaml`].
fn failure_policy(action: &str, exit_code: i32) -> String {
    format!(
        "  podFailurePolicy:\n    rules:\n    - action: {action}\n      \
         onExitCodes: {{containerName: work, operator: In, values: [{exit_code}]}}"
    )
}

#[test]
fn a_pod_failure_policy_fails_a_job_on_one_exit_code_and_ignores_another() {
    let c = Cluster::start(1);

    // A rule the server cannot honour is refused, naming the field.
    let bad = job_yaml("bad", &failure_policy("FailIndex", 0), 1)
        .replace("restartPolicy: Never", "restartPolicy: OnFailure");
    let out = c.k.run_stdin(&["apply", "-f", "-"], &bad).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {err}");
    for field in [
        "spec.template.spec.restartPolicy",
        "spec.podFailurePolicy.rules[0].action",
        "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
    ] {
        assert!(err.contains(field), "{field} not named: {err}");
    }

    // Exit code 42 fails the Job at once, though six retries were allowed.
    let fatal = format!("  backoffLimit: 6\n{}", failure_policy("FailJob", 42));
    c.k.apply(&job_yaml("fatal", &fatal, 42));
    wait_job(&c, "fatal", "failed", 60);
    let job = get(&c.k, &["job", "fatal"]);
    let failed = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed" && c["status"] == "True")
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed["reason"], "PodFailurePolicy", "{job}");
    let pods = pods_of(&c, "fatal");
    assert_eq!(pods.len(), 1, "no retry after a FailJob verdict");
    let pod = pods[0]["metadata"]["name"].as_str().unwrap_or("?");
    let message = failed["message"].as_str().unwrap_or("");
    assert!(
        message.contains(pod) && message.contains("exit code 42") && message.contains("index 0"),
        "the message names the pod and the rule: {message}"
    );
    assert_eq!(job["status"]["failed"], 1, "{job}");

    // Exit code 3 is ignored: the pods keep being replaced, well past a
    // backoffLimit of 1, and none counts as a failure.
    let flaky = format!("  backoffLimit: 1\n{}", failure_policy("Ignore", 3));
    c.k.apply(&job_yaml("flaky", &flaky, 3));
    let failed_pods = |c: &Cluster| {
        pods_of(c, "flaky")
            .iter()
            .filter(|p| p["status"]["phase"] == "Failed")
            .count()
    };
    let retried = wait_for(Duration::from_secs(60), || {
        (failed_pods(&c) >= 4).then_some(())
    });
    assert!(
        retried.is_some(),
        "ignored failures were not replaced: {} failed pods\n{}",
        failed_pods(&c),
        c.k.run(&["get", "job", "flaky", "-o", "yaml"])
            .unwrap_or_default()
    );
    let job = get(&c.k, &["job", "flaky"]);
    let conditions = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !conditions.iter().any(|c| c["type"] == "Failed"),
        "the job did not fail: {job}"
    );
    assert!(
        job["status"]["failed"].as_i64().unwrap_or(0) == 0,
        "ignored failures are not counted: {job}"
    );
    c.k.run(&["delete", "job", "flaky"]).unwrap();
}

fn daemonset_yaml(name: &str, image: &str, extra_pod_spec: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{extra_pod_spec}
      containers: [{{name: agent, image: "{image}"}}]
"#
    )
}

/// What the DaemonSet story checks on its cluster.
trait Daemons {
    fn daemon_nodes(&self, ds: &str) -> Vec<String>;
    fn wait_daemon_nodes(&self, ds: &str, want: &[&str]);
    fn rollout(&self, args: &[&str]) -> String;
}

impl Daemons for Cluster {
    /// The nodes the DaemonSet's pods are bound to, sorted, once every
    /// pod is Running.
    fn daemon_nodes(&self, ds: &str) -> Vec<String> {
        let pods = get(&self.k, &["pods", "-l", &format!("app={ds}")]);
        let mut nodes: Vec<String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
            .collect();
        nodes.sort();
        nodes
    }

    fn wait_daemon_nodes(&self, ds: &str, want: &[&str]) {
        let ok = wait_for(Duration::from_secs(60), || {
            (self.daemon_nodes(ds) == want).then_some(())
        });
        assert!(
            ok.is_some(),
            "{ds} should run on {want:?}, runs on {:?}\n{}\n--- controller-manager\n{}",
            self.daemon_nodes(ds),
            self.k
                .run(&["get", "pods", "-o", "wide"])
                .unwrap_or_default(),
            self.cp.log("controller-manager"),
        );
    }

    fn rollout(&self, args: &[&str]) -> String {
        let mut a = vec!["rollout"];
        a.extend_from_slice(args);
        let out = self.k.output(&a).unwrap();
        assert!(
            out.status.success(),
            "kubectl {a:?}: {}\n--- controller-manager\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.cp.log("controller-manager"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn a_daemonset_runs_on_every_node_follows_new_ones_and_rolls_back_with_kubectl() {
    let c = Cluster::start(2);
    c.k.run(&["taint", "node", "hollow-1", "dedicated=db:NoSchedule"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.k.apply(&daemonset_yaml("agent", "busybox", ""));
    c.k.apply(&daemonset_yaml(
        "tolerant",
        "busybox",
        "      tolerations: [{key: dedicated, operator: Exists}]",
    ));
    c.k.apply(&daemonset_yaml(
        "picky",
        "busybox",
        "      nodeSelector: {disk: ssd}",
    ));
    // The taint keeps `agent` off hollow-1; the toleration lets `tolerant` on.
    c.wait_daemon_nodes("agent", &["hollow-0"]);
    c.wait_daemon_nodes("tolerant", &["hollow-0", "hollow-1"]);
    assert!(c.daemon_nodes("picky").is_empty());
    c.k.run(&["label", "node", "hollow-0", "disk=ssd"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait_daemon_nodes("picky", &["hollow-0"]);

    // A node that joins later gets the daemon too.
    let _later =
        c.cp.component(
            "hollow-later",
            &[
                "hollow-nodes",
                "--name-prefix",
                "hollow",
                "--start-index",
                "2",
                "--count",
                "1",
                "--lease-interval-seconds",
                "1",
            ],
        )
        .unwrap();
    c.wait_daemon_nodes("tolerant", &["hollow-0", "hollow-1", "hollow-2"]);
    c.wait_daemon_nodes("agent", &["hollow-0", "hollow-2"]);
    let out = c.rollout(&["status", "ds/tolerant", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let table = c.k.run(&["get", "ds", "tolerant"]).unwrap();
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..6], ["tolerant", "3", "3", "3", "3", "3"], "{table}");

    // A new template rolls out node by node and becomes revision 2.
    c.k.run(&["set", "image", "ds/tolerant", "agent=busybox:2"])
        .unwrap_or_else(|e| panic!("{e}"));
    let out = c.rollout(&["status", "ds/tolerant", "--timeout=90s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let images = |c: &Cluster| -> Vec<String> {
        get(&c.k, &["pods", "-l", "app=tolerant"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(images(&c), ["busybox:2"; 3]);
    let history = c.rollout(&["history", "ds/tolerant"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    // Undo goes back to the first template, which becomes revision 3.
    c.rollout(&["undo", "ds/tolerant"]);
    let out = c.rollout(&["status", "ds/tolerant", "--timeout=90s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let ds = get(&c.k, &["ds", "tolerant"]);
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox"
    );
    assert_eq!(images(&c), ["busybox"; 3]);
    let history = c.rollout(&["history", "ds/tolerant"]);
    assert!(
        history.contains("\n2 ") && history.contains("\n3 "),
        "{history}"
    );

    // Deleting the DaemonSet takes its pods and revisions with it.
    c.k.run(&["delete", "ds", "tolerant"]).unwrap();
    let gone = wait_for(Duration::from_secs(30), || {
        let pods = get(&c.k, &["pods", "-l", "app=tolerant"]);
        let revs = get(&c.k, &["controllerrevisions", "-l", "app=tolerant"]);
        (pods["items"].as_array().is_none_or(Vec::is_empty)
            && revs["items"].as_array().is_none_or(Vec::is_empty))
        .then_some(())
    });
    assert!(gone.is_some(), "pods or revisions outlived their DaemonSet");
}
