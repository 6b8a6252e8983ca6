//! `kubectl debug`: an ephemeral container in the pod's namespaces, its
//! status, and what may not change once it is added.

use harness::cluster::ControlPlane;
use serde_json::Value;

use crate::common::{ephemeral_status, web_pod, Agent};

/// `kubectl debug` adds an ephemeral container that runs in the pod's
/// network namespace (and, with --target, sees the target's processes),
/// is reported in ephemeralContainerStatuses, and is never restarted;
/// existing ephemeral containers cannot be changed, and the pod itself
/// cannot be updated to add one.
#[test]
fn kubectl_debug_adds_an_ephemeral_container() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let mut agent = Agent::start(&cp);
    web_pod(&k, &agent, "web");

    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=dbg",
            "--",
            "sleep",
            "300",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl debug: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = agent.wait(60, "the debug container running", || {
        let p = k.get_json(&["pod", "web"]);
        ephemeral_status(&p, "dbg")?["state"]["running"]
            .is_object()
            .then_some(p)
    });
    let status = ephemeral_status(&pod, "dbg").unwrap();
    assert_eq!(status["image"], "busybox", "{status}");
    assert!(
        status["containerID"]
            .as_str()
            .is_some_and(|c| c.starts_with("libcontainer://")),
        "{status}"
    );
    assert_eq!(pod["spec"]["ephemeralContainers"][0]["name"], "dbg");
    // Its status is not the pod's: still Running and Ready.
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        pod["status"]["containerStatuses"].as_array().unwrap().len(),
        1
    );

    // The pod's network: its address, and the main container on localhost.
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let addrs = k
        .run(&["exec", "web", "-c", "dbg", "--", "ip", "-4", "addr"])
        .unwrap();
    assert!(
        addrs.contains(&format!("inet {ip}/")),
        "{ip} not in {addrs}"
    );
    let page = k
        .run(&[
            "exec",
            "web",
            "-c",
            "dbg",
            "--",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/",
        ])
        .unwrap();
    assert_eq!(page, "hello-from-web\n");
    // Its own processes only, without a target.
    let ps = k
        .run(&["exec", "web", "-c", "dbg", "--", "ps", "-o", "args"])
        .unwrap();
    assert!(!ps.contains("httpd"), "{ps}");

    // With --target it shares the target's process namespace.
    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=peek",
            "--target=web",
            "--",
            "sleep",
            "300",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait(60, "the targeted debug container running", || {
        let p = k.get_json(&["pod", "web"]);
        ephemeral_status(&p, "peek")?["state"]["running"]
            .is_object()
            .then_some(())
    });
    let ps = k
        .run(&["exec", "web", "-c", "peek", "--", "ps", "-o", "args"])
        .unwrap();
    assert!(ps.contains("httpd -f -p 8080"), "{ps}");

    // An ephemeral container that ends stays ended.
    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=once",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = agent.wait(60, "the short debug container to end", || {
        let p = k.get_json(&["pod", "web"]);
        ephemeral_status(&p, "once")?["state"]["terminated"]
            .is_object()
            .then_some(p)
    });
    let once = ephemeral_status(&done, "once").unwrap();
    assert_eq!(once["state"]["terminated"]["exitCode"], 3, "{once}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = ephemeral_status(&k.get_json(&["pod", "web"]), "once").unwrap();
    assert_eq!(later["restartCount"], 0, "{later}");
    assert!(later["state"]["terminated"].is_object(), "{later}");

    // A restarted agent adopts the running ephemeral container and does
    // not run the ended one again.
    let dbg_id =
        ephemeral_status(&k.get_json(&["pod", "web"]), "dbg").unwrap()["containerID"].clone();
    agent.proc.as_mut().unwrap().kill();
    std::thread::sleep(std::time::Duration::from_millis(500));
    agent.launch();
    agent.wait(30, "the restarted agent to adopt the containers", || {
        (agent.log().matches("adopted running container").count() >= 3).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = k.get_json(&["pod", "web"]);
    let dbg = ephemeral_status(&after, "dbg").unwrap();
    assert_eq!(dbg["containerID"], dbg_id, "{dbg}");
    assert!(dbg["state"]["running"].is_object(), "{dbg}");
    let once = ephemeral_status(&after, "once").unwrap();
    assert!(once["state"]["terminated"].is_object(), "{once}");
    assert_eq!(once["restartCount"], 0, "{once}");
    assert_eq!(after["status"]["phase"], "Running");

    // Changing an existing ephemeral container through the subresource is
    // refused, naming the field.
    let mut pod = k.get_json(&["pod", "web"]);
    pod["spec"]["ephemeralContainers"][0]["image"] = Value::from("busybox:other");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = k
        .output(&[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/web/ephemeralcontainers",
            "-f",
            file.to_str().unwrap(),
        ])
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is invalid"), "{err}");
    assert!(err.contains("spec.ephemeralContainers"), "{err}");
    assert!(err.contains("may not be changed"), "{err}");
    // Nor may one have ports.
    let mut pod = k.get_json(&["pod", "web"]);
    pod["spec"]["ephemeralContainers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "porty", "image": "busybox", "ports": [{"containerPort": 80}]}));
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = k
        .output(&[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/web/ephemeralcontainers",
            "-f",
            file.to_str().unwrap(),
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("spec.ephemeralContainers[3].ports"), "{err}");
    // A name already in use is refused.
    let out = k
        .output(&[
            "debug",
            "pod/web",
            "--image=busybox",
            "--container=web",
            "--",
            "true",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Duplicate value"), "{err}");
    // The pod itself may not add ephemeral containers.
    let out = k
        .output(&[
            "patch",
            "pod",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"sneaky","image":"busybox"}}]"#,
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("spec: Forbidden"), "{err}");
}
