//! User stories of the API server driven by the python `kubernetes` client
//! from PyPI, installed by `cargo xtask setup` into a venv.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::{wait_for, Guarded};
use serde_json::Value;

/// Creates a namespace and a labelled pod, lists it by label, watches it from
/// the list's resourceVersion while relabelling and deleting it, and prints
/// one JSON summary line. Any failed check raises, so python exits non-zero.
const SCRIPT: &str = r#"
import json, queue, sys, threading

import kubernetes
from kubernetes import client, watch

cfg = client.Configuration()
cfg.host = sys.argv[1]
v1 = client.CoreV1Api(client.ApiClient(cfg))

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
created = v1.create_namespaced_pod(
    "py",
    client.V1Pod(
        metadata=client.V1ObjectMeta(name="hello", labels={"app": "hello"}),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="hello", image="registry.local/busybox:1")]
        ),
    ),
)
assert created.metadata.name == "hello", created.metadata
assert created.metadata.uid, "the server sets a uid"

listed = v1.list_namespaced_pod("py", label_selector="app=hello")
names = [p.metadata.name for p in listed.items]
assert names == ["hello"], names
rv = listed.metadata.resource_version
assert rv, "the list carries a resourceVersion"
none = v1.list_namespaced_pod("py", label_selector="app=other")
assert none.items == [], none.items

events = queue.Queue()
w = watch.Watch()

def watcher():
    try:
        for ev in w.stream(
            v1.list_namespaced_pod,
            "py",
            resource_version=rv,
            timeout_seconds=20,
            _request_timeout=30,
        ):
            obj = ev["object"]
            events.put((ev["type"], obj.metadata.name, dict(obj.metadata.labels or {})))
            if ev["type"] == "DELETED":
                w.stop()
    except Exception as e:
        events.put(("ERROR", repr(e), {}))
    events.put(("END", None, {}))

t = threading.Thread(target=watcher, daemon=True)
t.start()

patched = v1.patch_namespaced_pod("hello", "py", {"metadata": {"labels": {"seen": "yes"}}})
assert patched.metadata.labels == {"app": "hello", "seen": "yes"}, patched.metadata.labels

def next_event():
    try:
        return events.get(timeout=25)
    except queue.Empty:
        raise AssertionError("no watch event within 25s")

seen = []
ev = next_event()
seen.append(ev)
assert ev[0] == "MODIFIED" and ev[1] == "hello", seen
assert ev[2].get("seen") == "yes", seen

v1.delete_namespaced_pod("hello", "py")
while seen[-1][0] not in ("DELETED", "END", "ERROR"):
    seen.append(next_event())
assert seen[-1][0] == "DELETED" and seen[-1][1] == "hello", seen
t.join(timeout=25)
assert not t.is_alive(), "the watch ends after w.stop()"

left = v1.list_namespaced_pod("py")
assert left.items == [], [p.metadata.name for p in left.items]

print(json.dumps({
    "client": kubernetes.__version__,
    "listed": names,
    "events": [[typ, name, labels] for typ, name, labels in seen],
    "left": len(left.items),
}))
"#;

/// The venv `cargo xtask setup` creates; its python has `kubernetes`.
fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/kestrel/python/bin/python")
}

/// A python user lists, creates, relabels, watches and deletes pods with the
/// official `kubernetes` client (CoreV1Api and watch.Watch) against our API
/// server.
#[test]
fn python_client_lists_creates_and_watches_pods() {
    let python = venv_python();
    let ready = Command::new(&python)
        .args(["-c", "import kubernetes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ready,
        "{} cannot import the python `kubernetes` client: run `cargo xtask setup`",
        python.display()
    );

    let cp = ControlPlane::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("client.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut py = Guarded::spawn(
        "python",
        Command::new(&python)
            .arg(&script)
            .arg(cp.url())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    )
    .unwrap();
    let status = wait_for(Duration::from_secs(60), || {
        py.child.try_wait().ok().flatten()
    });
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("the python client did not finish in 60s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        status.success(),
        "python client failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}\napiserver log:\n{}",
        cp.apiserver_log()
    );

    let line = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stdout}\n{stderr}"));
    eprintln!("python client summary: {summary}");
    assert_eq!(summary["listed"], serde_json::json!(["hello"]), "{summary}");
    let events = summary["events"].as_array().expect("events");
    assert_eq!(
        events.first(),
        Some(&serde_json::json!(["MODIFIED", "hello", {"app": "hello", "seen": "yes"}])),
        "{summary}"
    );
    assert_eq!(events.last().unwrap()[0], "DELETED", "{summary}");
    assert_eq!(events.last().unwrap()[1], "hello", "{summary}");
    assert_eq!(summary["left"], 0, "{summary}");
    assert!(summary["client"].is_string(), "{summary}");
}
