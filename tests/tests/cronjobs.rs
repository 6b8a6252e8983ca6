//! User stories of CronJobs with the real API server, etcd and kubectl:
//! created and listed as kubectl prints them, refused naming the field,
//! and run on the minute on a cluster of hollow nodes, where
//! `concurrencyPolicy` and the history limits are seen to act.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::cluster::ControlPlane;
use harness::hollow::HollowCluster;
use harness::process::wait_for;
use serde_json::Value;

const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

fn cronjob_yaml(name: &str, policy: &str, exit_annotation: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
  schedule: "* * * * *"
  concurrencyPolicy: {policy}
{extra}
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {{{exit_annotation}}}
        spec:
          restartPolicy: Never
          containers: [{{name: tick, image: busybox}}]
"#
    )
}

/// The cron job's Jobs, oldest first by scheduled time, without those being deleted.
fn jobs_of(c: &HollowCluster, cronjob: &str) -> Vec<Value> {
    let jobs = c.k.get_json(&["jobs"]);
    let mut out: Vec<Value> = jobs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
        .filter(|j| {
            j["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["kind"] == "CronJob" && r["name"] == cronjob)
        })
        .cloned()
        .collect();
    out.sort_by_key(|j| j["metadata"]["annotations"][SCHEDULED_AT].to_string());
    out
}

fn name(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch of an RFC 3339 time in whole UTC seconds, as the API writes them.
fn unix_of(rfc3339: &str) -> i64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s"])
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a time: {rfc3339}"))
}

fn explain(c: &HollowCluster) -> String {
    format!(
        "--- cronjobs\n{}\n--- jobs\n{}\n--- controller-manager\n{}",
        c.k.run(&["get", "cronjobs", "-o", "yaml"])
            .unwrap_or_default(),
        c.k.run(&["get", "jobs", "-o", "wide"]).unwrap_or_default(),
        c.cp.log("controller-manager"),
    )
}

#[test]
fn a_user_creates_a_cronjob_with_kubectl_and_sees_it_listed() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    let out = k
        .run(&[
            "create",
            "cronjob",
            "hello",
            "--image=busybox",
            "--schedule=*/5 * * * *",
            "--",
            "echo",
            "hi",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "cronjob.batch/hello created");
    let cj = k.get_json(&["cj", "hello"]);
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
    assert_eq!(cj["spec"]["suspend"], false);

    let table = k
        .run(&["get", "cronjobs"])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    let header: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"],
        "{table}"
    );
    let row = lines.next().unwrap_or("");
    assert!(
        row.starts_with("hello") && row.contains("*/5 * * * *") && row.contains("<none>"),
        "{table}"
    );
    let all = k.run(&["get", "all"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(all.contains("cronjob.batch/hello"), "{all}");

    // A Job made by hand from the template, as `kubectl create job --from` does.
    let out = k
        .run(&["create", "job", "hello-now", "--from=cronjob/hello"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "job.batch/hello-now created");
    let job = k.get_json(&["job", "hello-now"]);
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox"
    );
}

#[test]
fn a_malformed_cronjob_is_refused_naming_each_field() {
    let cp = ControlPlane::start().expect("control plane starts");
    let k = cp.kubectl();
    let yaml = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: broken}
spec:
  schedule: "61 * * * *"
  timeZone: Mars/Olympus
  concurrencyPolicy: Sometimes
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Always
          containers: [{name: c, image: busybox}]
"#;
    let out = k.run_stdin(&["apply", "-f", "-"], yaml).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    for field in [
        "spec.schedule",
        "spec.timeZone",
        "spec.concurrencyPolicy",
        "spec.jobTemplate.spec.template.spec.restartPolicy",
    ] {
        assert!(err.contains(field), "{field} is not named: {err}");
    }
    assert!(err.contains("minute value 61"), "{err}");
    let listed = k.run(&["get", "cronjobs", "-o", "name"]).unwrap();
    assert!(listed.trim().is_empty(), "{listed}");
}

#[test]
fn forbid_skips_a_run_while_one_is_active_and_replace_swaps_it() {
    let c = HollowCluster::start(1);
    // No exit-code annotation: the hollow node keeps its pods running.
    c.k.apply(&cronjob_yaml("ticker", "Forbid", "", ""));
    let first = wait_for(Duration::from_secs(90), || {
        jobs_of(&c, "ticker").into_iter().next()
    })
    .unwrap_or_else(|| panic!("no Job within 90 s\n{}", explain(&c)));
    let scheduled = first["metadata"]["annotations"][SCHEDULED_AT]
        .as_str()
        .unwrap_or_else(|| panic!("no scheduled time: {first}"))
        .to_string();
    let at = unix_of(&scheduled);
    assert_eq!(at % 60, 0, "scheduled on the minute: {scheduled}");
    assert_eq!(name(&first), format!("ticker-{}", at / 60));
    let active = wait_for(Duration::from_secs(20), || {
        let cj = c.k.get_json(&["cronjob", "ticker"]);
        (cj["status"]["active"][0]["name"] == name(&first)).then_some(cj)
    })
    .unwrap_or_else(|| panic!("status.active does not list the Job\n{}", explain(&c)));
    assert_eq!(active["status"]["lastScheduleTime"], scheduled);

    // The next minute passes while the first Job still runs: no second Job.
    let after_next = at + 60 + 20;
    while unix_now() < after_next {
        std::thread::sleep(Duration::from_secs(2));
    }
    let jobs = jobs_of(&c, "ticker");
    assert_eq!(
        jobs.iter().map(name).collect::<Vec<_>>(),
        [name(&first)],
        "Forbid ran a second Job\n{}",
        explain(&c)
    );

    // Replace: at the next time, the running Job makes way for a new one.
    c.k.run(&[
        "patch",
        "cronjob",
        "ticker",
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrencyPolicy":"Replace"}}"#,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let replaced = wait_for(Duration::from_secs(90), || {
        let jobs = jobs_of(&c, "ticker");
        (jobs.len() == 1 && name(&jobs[0]) != name(&first)).then_some(())
    });
    assert!(
        replaced.is_some(),
        "Replace did not swap the Job\n{}",
        explain(&c)
    );

    // Deleting the cron job takes its Jobs with it.
    c.k.run(&["delete", "cronjob", "ticker"])
        .unwrap_or_else(|e| panic!("{e}"));
    let gone = wait_for(Duration::from_secs(60), || {
        jobs_of(&c, "ticker").is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "Jobs outlived their cron job\n{}",
        explain(&c)
    );
}

#[test]
fn finished_jobs_beyond_the_history_limit_are_deleted() {
    let c = HollowCluster::start(1);
    c.k.apply(&cronjob_yaml(
        "tidy",
        "Allow",
        r#"hollow.kestrel.dev/exit-code: "0""#,
        "  successfulJobsHistoryLimit: 1",
    ));
    let first = wait_for(Duration::from_secs(90), || {
        jobs_of(&c, "tidy").into_iter().next().map(|j| name(&j))
    })
    .unwrap_or_else(|| panic!("no Job within 90 s\n{}", explain(&c)));
    // One minute later the second run completes and the first is dropped.
    let kept = wait_for(Duration::from_secs(150), || {
        let jobs = jobs_of(&c, "tidy");
        let cj = c.k.get_json(&["cronjob", "tidy"]);
        let done = jobs.len() == 1
            && name(&jobs[0]) != first
            && jobs[0]["status"]["succeeded"] == 1
            && cj["status"]["lastSuccessfulTime"].is_string();
        done.then_some(())
    });
    assert!(
        kept.is_some(),
        "history not trimmed to one\n{}",
        explain(&c)
    );
}
