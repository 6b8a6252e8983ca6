//! What keeps containers from the host: volumes a container cannot turn
//! into writes on host paths, node state other host users cannot reach,
//! and the default seccomp profile, each checked from inside real busybox
//! containers and with the tools a user would use on the node.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::cluster::ControlPlane;
use harness::process::wait_for;

type Agent = harness::node::Node;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// `stat` run as the host's `nobody`.
fn stat_as_nobody(p: &Path) -> std::process::Output {
    Command::new("stat")
        .arg(p)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

/// A container that can write to its configMap volume's host directory
/// (through a hostPath mount of the node's pod state) swaps the visible
/// name, the current generation and `..data` for symlinks to a host file
/// and directory, then crashes. Writing the volume again for the restarted
/// container leaves the host file and directory exactly as they were, and
/// the new container reads the configMap's value. The container's own
/// mount of the volume is read-only.
#[test]
fn planted_symlinks_in_a_volume_never_reach_the_host() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    std::fs::write(h.join("file"), "host\n").unwrap();
    std::fs::set_permissions(h.join("file"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir(h.join("dir")).unwrap();
    std::fs::write(h.join("dir/color"), "host color\n").unwrap();
    std::fs::set_permissions(h.join("dir"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let pods = agent.state.path().join("pods");
    k.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{color: blue}}
---
apiVersion: v1
kind: Secret
metadata: {{name: token}}
data: {{t: czNjcjN0}}
---
apiVersion: v1
kind: Pod
metadata: {{name: planter}}
spec:
  nodeName: {node}
  containers:
  - name: app
    image: busybox
    command:
    - sh
    - -c
    - |
      echo "color=$(cat /config/color) token=$(cat /token/t)"
      if [ ! -e /marks/planted ]; then
        (echo x > /config/color) 2>/dev/null && echo WROTE || echo READONLY
        v=$(echo /raw/*/volumes/config)
        g=$(readlink $v/..data)
        rm $v/color && ln -s {h}/file $v/color
        rm -rf $v/$g && ln -s {h}/dir $v/$g
        rm $v/..data && ln -s {h}/dir $v/..data
        ls -la $v
        touch /marks/planted
        exit 1
      fi
      ls -l /config
      sleep 3600
    volumeMounts:
    - {{name: config, mountPath: /config}}
    - {{name: token, mountPath: /token}}
    - {{name: raw, mountPath: /raw}}
    - {{name: marks, mountPath: /marks}}
  volumes:
  - {{name: config, configMap: {{name: settings}}}}
  - {{name: token, secret: {{secretName: token}}}}
  - {{name: raw, hostPath: {{path: {pods}}}}}
  - {{name: marks, emptyDir: {{}}}}
"#,
        h = h.display(),
        pods = pods.display(),
    ));
    agent.wait(60, "planter to run again after planting", || {
        let p = k.get_json(&["pod", "planter"]);
        let cs = &p["status"]["containerStatuses"][0];
        (cs["restartCount"].as_i64() >= Some(1) && cs["state"]["running"].is_object()).then_some(())
    });
    let previous = k.run(&["logs", "planter", "--previous"]).unwrap();
    assert!(
        previous.lines().any(|l| l == "color=blue token=s3cr3t"),
        "{previous}"
    );
    assert!(previous.lines().any(|l| l == "READONLY"), "{previous}");
    assert!(
        previous.contains(&format!("..data -> {}/dir", h.display())),
        "{previous}"
    );
    let logs = agent.wait(20, "the restarted container's listing", || {
        let l = k.run(&["logs", "planter"]).ok()?;
        l.contains("color ->").then_some(l)
    });
    assert!(
        logs.lines().any(|l| l == "color=blue token=s3cr3t"),
        "{logs}"
    );
    assert!(logs.contains("color -> ..data/color"), "{logs}");

    assert_eq!(std::fs::read_to_string(h.join("file")).unwrap(), "host\n");
    assert_eq!(mode(&h.join("file")), 0o640);
    assert_eq!(mode(&h.join("dir")), 0o750);
    assert_eq!(
        std::fs::read_to_string(h.join("dir/color")).unwrap(),
        "host color\n"
    );
    let in_dir: Vec<_> = std::fs::read_dir(h.join("dir"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(in_dir, ["color"], "nothing was added to the host directory");
    let _ = k.run(&["delete", "pod", "planter", "--grace-period=1"]);
}

/// A projected volume gathers a configMap key, a secret key and a
/// downward API field under the paths its items name, with the item's
/// mode or the volume's defaultMode; a container running as user 1000 (in
/// group 0, as Kubernetes leaves it without runAsGroup) reads them through
/// the `..data` links.
#[test]
fn projected_volumes_honour_items_and_modes() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{color: blue, size: large}}
---
apiVersion: v1
kind: Secret
metadata: {{name: token}}
data: {{t: czNjcjN0}}
---
apiVersion: v1
kind: Pod
metadata: {{name: gathered}}
spec:
  nodeName: {node}
  restartPolicy: Never
  securityContext: {{runAsUser: 1000}}
  containers:
  - name: app
    image: busybox
    volumeMounts: [{{name: all, mountPath: /all}}]
    command:
    - sh
    - -c
    - |
      cd /all
      for f in conf/color secret/token name; do echo "$f $(stat -L -c %a $f) $(cat $f)"; done
      ls conf
      readlink conf
  volumes:
  - name: all
    projected:
      defaultMode: 0444
      sources:
      - configMap:
          name: settings
          items: [{{key: color, path: conf/color}}]
      - secret:
          name: token
          items: [{{key: t, path: secret/token, mode: 0440}}]
      - downwardAPI:
          items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]
"#
    ));
    let p = agent.wait(30, "gathered to finish", || {
        let p = k.get_json(&["pod", "gathered"]);
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(p)
    });
    let logs = k.run(&["logs", "gathered"]).unwrap();
    assert_eq!(p["status"]["phase"], "Succeeded", "{p}\n{logs}");
    assert_eq!(
        logs,
        "conf/color 444 blue\nsecret/token 440 s3cr3t\nname 444 gathered\ncolor\n..data/conf\n"
    );
}

/// A pod with a volume name that is not a DNS label is refused: Failed,
/// with the reason in its status and an event, and no container runs.
#[test]
fn a_volume_name_that_is_not_a_dns_label_refuses_the_pod() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: dotted}}
spec:
  nodeName: {node}
  containers:
  - name: app
    image: busybox
    command: [sleep, '3600']
    volumeMounts: [{{name: '..', mountPath: /x}}]
  volumes:
  - {{name: '..', emptyDir: {{}}}}
"#
    ));
    let p = agent.wait(30, "dotted to be refused", || {
        let p = k.get_json(&["pod", "dotted"]);
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(p["status"]["reason"], "InvalidVolume", "{p}");
    assert!(
        p["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not a DNS label"),
        "{p}"
    );
    assert!(p["status"]["containerStatuses"][0]["state"]["waiting"].is_object());
    let events = agent.wait(10, "the InvalidVolume event", || {
        let e = k.run(&["get", "events"]).ok()?;
        e.contains("InvalidVolume").then_some(e)
    });
    assert!(events.contains("not a DNS label"), "{events}");
    let _ = k.run(&["delete", "pod", "dotted", "--grace-period=0"]);
}

/// Once a pod runs, the node's state is root's: pod, container-state and
/// image-layer directories 0700, config.json and the container's bundle
/// private, so another host user (`nobody`) cannot reach a file of the
/// container's root filesystem or secret volume, even with the state
/// directory itself open to all.
#[test]
fn node_state_is_out_of_reach_of_other_host_users() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: token}}
data: {{t: czNjcjN0}}
---
apiVersion: v1
kind: Pod
metadata: {{name: quiet}}
spec:
  nodeName: {node}
  containers:
  - name: app
    image: busybox
    command: [sleep, '3600']
    volumeMounts: [{{name: token, mountPath: /token}}]
  volumes:
  - {{name: token, secret: {{secretName: token}}}}
"#
    ));
    let uid = agent.wait(30, "quiet to run", || {
        let p = k.get_json(&["pod", "quiet"]);
        (p["status"]["phase"] == "Running")
            .then(|| p["metadata"]["uid"].as_str().unwrap().to_string())
    });
    let state = agent.state.path();
    // As an operator's /var/lib/kestrel would be.
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bundle: PathBuf = state.join("pods").join(&uid).join("containers/app-0");
    for (p, want) in [
        (state.join("pods"), 0o700),
        (state.join("pods").join(&uid), 0o700),
        (bundle.clone(), 0o700),
        (bundle.join("config.json"), 0o600),
        (state.join("containers"), 0o700),
        (state.join("images/layers"), 0o700),
    ] {
        assert_eq!(mode(&p), want, "{}", p.display());
    }
    let busybox = bundle.join("rootfs/bin/busybox");
    let secret = state.join("pods").join(&uid).join("volumes/token/t");
    for p in [&busybox, &secret, &bundle.join("config.json")] {
        assert!(p.exists(), "{} exists for root", p.display());
        let out = stat_as_nobody(p);
        assert!(!out.status.success(), "nobody reached {}", p.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = k.run(&["delete", "pod", "quiet", "--grace-period=0"]);
}

/// The default profile refuses new namespaces (busybox `unshare`) with
/// EPERM while ordinary commands run; a privileged container has no
/// filter and may make them, as may one with every capability and the
/// Unconfined profile.
#[test]
fn default_seccomp_refuses_namespaces_but_not_to_privileged_containers() {
    let cp = ControlPlane::start_networked(&[]).unwrap();
    let k = cp.kubectl();
    let agent = Agent::start(&cp);
    let node = agent.name.clone();
    let script = "echo normal=$(echo hi | cat); unshare -U true; echo user=$?; unshare -n true; echo net=$?; unshare -r id -u; echo root=$?";
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: confined}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sh, -c, '{script}']
---
apiVersion: v1
kind: Pod
metadata: {{name: unconfined}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sh, -c, '{script}']
    securityContext: {{privileged: true}}
---
apiVersion: v1
kind: Pod
metadata: {{name: allcaps}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: [sh, -c, '{script}']
    securityContext: {{capabilities: {{add: [ALL]}}, seccompProfile: {{type: Unconfined}}}}
"#
    ));
    for name in ["confined", "allcaps", "unconfined"] {
        let p = wait_for(Duration::from_secs(30), || {
            let p = k.get_json(&["pod", name]);
            matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(p)
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out: {name} to finish\n{}\n{}\n--- agent log\n{}\n--- runtime helper log\n{}",
                k.get_json(&["pod", name]),
                k.run(&["get", "events"]).unwrap_or_default(),
                agent.log(),
                std::fs::read_to_string(agent.state.path().join("runtime-helper.log"))
                    .unwrap_or_default()
            )
        });
        assert_eq!(p["status"]["phase"], "Succeeded", "{p}");
    }
    let confined = k.run(&["logs", "confined"]).unwrap();
    assert!(confined.lines().any(|l| l == "normal=hi"), "{confined}");
    for line in ["user=1", "net=1", "root=1"] {
        assert!(confined.lines().any(|l| l == line), "{line} in\n{confined}");
    }
    assert!(
        confined.matches("Operation not permitted").count() >= 3,
        "{confined}"
    );
    let unconfined = k.run(&["logs", "unconfined"]).unwrap();
    for line in ["normal=hi", "user=0", "net=0", "0", "root=0"] {
        assert!(
            unconfined.lines().any(|l| l == line),
            "{line} in\n{unconfined}"
        );
    }
}
