//! One control plane installed, and a node joined to it that can act only
//! as itself.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use harness::cluster::binary;
use harness::dist::*;
use harness::kubectl::Kubectl;
use harness::ports::free_port;
use harness::process::{wait_for, Guarded};

#[test]
fn an_operator_installs_a_control_plane_and_joins_a_node_that_can_act_only_as_itself() {
    let cp = tempfile::tempdir().expect("tempdir");
    let node = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let cp_root = cp.path().to_str().expect("utf-8").to_string();
    let node_root = node.path().to_str().expect("utf-8").to_string();
    let port = free_port();
    let port_s = port.to_string();
    let control_plane = [
        "--root",
        &cp_root,
        "control-plane",
        "--advertise-address",
        "127.0.0.1",
        "--port",
        &port_s,
    ];

    // 1. The control plane's files, laid out as on a machine.
    let out = install(&control_plane);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("skipped under --root: systemctl enable kestrel-etcd kestrel-apiserver"));
    // The CA comes first, so the scheduler and controller-manager get their
    // credentials before anything starts.
    assert!(
        text.contains("made the cluster CA: /var/lib/kestrel/pki/ca.crt"),
        "{text}"
    );
    assert_eq!(mode(&cp.path().join("var/lib/kestrel/pki")), 0o700);
    assert_eq!(mode(&cp.path().join("var/lib/kestrel/pki/ca.key")), 0o600);
    for c in ["scheduler", "controller-manager"] {
        assert!(
            text.contains(&format!("written: /etc/kestrel/{c}.kubeconfig")),
            "{text}"
        );
    }
    let files = files_under(cp.path());
    for f in [
        "usr/local/bin/control-plane",
        "usr/local/bin/agent",
        "usr/local/bin/kestrel-cni",
        "etc/systemd/system/kestrel-etcd.service",
        "etc/systemd/system/kestrel-apiserver.service",
        "etc/systemd/system/kestrel-scheduler.service",
        "etc/systemd/system/kestrel-controller-manager.service",
        "etc/kestrel/etcd.env",
        "etc/kestrel/apiserver.env",
        "etc/kestrel/scheduler.env",
        "etc/kestrel/controller-manager.env",
        "etc/kestrel/apiservers",
    ] {
        assert!(files.contains(f), "{f} missing from {files:?}");
    }
    assert!(!files.contains("etc/systemd/system/kestrel-agent.service"));
    assert_eq!(
        env_args(
            &cp.path().join("etc/kestrel/apiserver.env"),
            "APISERVER_ARGS"
        ),
        [
            format!("--bind-address=0.0.0.0:{port}"),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--cert-dir=/var/lib/kestrel/pki".into(),
            "--tls-san=127.0.0.1".into(),
            format!("--advertise-url=https://127.0.0.1:{port}"),
            "--admin-kubeconfig=/etc/kestrel/admin.kubeconfig".into(),
        ]
    );

    // 2. What systemd would start: etcd from etcd.env, and the API server
    // from its binary and APISERVER_ARGS, which makes the CA on first start.
    let (_etcd, etcd_url) = start_etcd(
        &cp.path().join("etc/kestrel/etcd.env"),
        &scratch.path().join("etcd"),
    );
    let mut apiserver = start_apiserver(cp.path(), &etcd_url, port);
    let admin = cp.path().join("etc/kestrel/admin.kubeconfig");
    wait_ready(&mut apiserver, &admin);
    let ca = cp.path().join("var/lib/kestrel/pki/ca.crt");
    assert!(ca.exists());

    // 3. Run again: nothing changes, and the credentials made before the
    // API server ever ran are accepted by it.
    let out = install(&control_plane);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        !text.contains("installed:") && !text.contains("kept:") && !text.contains("written:"),
        "{text}"
    );
    assert_eq!(mode(&admin), 0o600, "the admin kubeconfig holds a key");
    for c in ["scheduler", "controller-manager"] {
        let kc = cp.path().join(format!("etc/kestrel/{c}.kubeconfig"));
        assert_eq!(mode(&kc), 0o600);
        let k = Kubectl::new(&kc).expect("kubectl");
        k.run(&["get", "nodes"])
            .unwrap_or_else(|e| panic!("{c}'s credentials: {e:#}"));
        // Its own least-privilege user, not an admin.
        assert_eq!(
            k.run(&[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}"
            ])
            .unwrap()
            .trim(),
            format!("system:kube-{c}")
        );
        let out = k
            .output(&[
                "create",
                "clusterrolebinding",
                "x",
                "--clusterrole=cluster-admin",
                "--user=x",
            ])
            .unwrap();
        assert!(!out.status.success(), "the {c} granted a role");
    }

    // 3b. An older install made the scheduler an admin: running the
    // installer again replaces that kubeconfig with its own user's.
    let scheduler_kc = cp.path().join("etc/kestrel/scheduler.kubeconfig");
    let status = Command::new(binary("control-plane"))
        .arg("kubeconfig")
        .arg(format!(
            "--cert-dir={}",
            cp.path().join("var/lib/kestrel/pki").display()
        ))
        .args(["--user=system:kube-scheduler", "--group=system:masters"])
        .arg(format!("--server=https://127.0.0.1:{port}"))
        .arg("--out")
        .arg(&scheduler_kc)
        .status()
        .unwrap();
    assert!(status.success());
    let out = install(&control_plane);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("replacing /etc/kestrel/scheduler.kubeconfig")
            && text.contains("written: /etc/kestrel/scheduler.kubeconfig")
            && !text.contains("written: /etc/kestrel/controller-manager.kubeconfig"),
        "{text}"
    );
    let out = Kubectl::new(&scheduler_kc)
        .expect("kubectl")
        .output(&["get", "secrets", "-A"])
        .unwrap();
    assert!(
        !out.status.success(),
        "the replaced scheduler kubeconfig reads Secrets"
    );

    // 4. The node's credentials, and the hash the operator carries to the node.
    let out = install(&["--root", &cp_root, "add-node", "node-a"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let hash = text
        .split_whitespace()
        .skip_while(|w| *w != "--ca-cert-hash")
        .nth(1)
        .expect("add-node prints the join command")
        .to_string();
    assert_eq!(hash, openssl_ca_hash(&ca));
    let out = install(&["--root", &cp_root, "ca-cert-hash"]);
    assert_eq!(stdout(&out).trim(), hash);
    let bundle_path = cp.path().join("etc/kestrel/nodes/node-a.kubeconfig");
    assert_eq!(mode(&bundle_path), 0o600);
    let bundle = std::fs::read_to_string(&bundle_path).expect("node kubeconfig");
    // What the operator copied to the node.
    let copied = scratch.path().join("node-a.kubeconfig");
    std::fs::write(&copied, &bundle).expect("write");
    let copied_s = copied.to_str().expect("utf-8").to_string();

    // 5. Joins that must be refused, each before anything is installed.
    let join = |kubeconfig: &str, hash: &str, name: &str, extra: &[&str]| -> Output {
        let mut args = vec![
            "--root",
            &node_root,
            "join",
            "--kubeconfig",
            kubeconfig,
            "--ca-cert-hash",
            hash,
            "--node-name",
            name,
            "--node-ip",
            "192.0.2.11",
        ];
        args.extend_from_slice(extra);
        install(&args)
    };
    let mut wrong_hash = hash.clone();
    let last = wrong_hash.pop().expect("non-empty");
    wrong_hash.push(if last == '0' { '1' } else { '0' });
    let out = join(&copied_s, &wrong_hash, "node-a", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not the cluster's"),
        "{}",
        stderr(&out)
    );

    let out = join(&copied_s, &hash, "node-b", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not for this node"),
        "{}",
        stderr(&out)
    );

    // The admin's certificate is signed by the same CA but is no node's.
    let admin_creds = scratch.path().join("admin-as-node.kubeconfig");
    std::fs::write(
        &admin_creds,
        swap_client_credentials(&bundle, &std::fs::read_to_string(&admin).expect("admin")),
    )
    .expect("write");
    let out = join(admin_creds.to_str().expect("utf-8"), &hash, "node-a", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("kubernetes-admin"),
        "{}",
        stderr(&out)
    );

    // Another cluster's API server (its own CA) is not trusted.
    let other_port = free_port();
    let other_pki = scratch.path().join("other-pki");
    let mut other = Guarded::spawn(
        "other apiserver",
        Command::new(binary("control-plane"))
            .arg("apiserver")
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address=127.0.0.1:{other_port}"))
            .arg("--cert-dir")
            .arg(&other_pki)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start");
    let other_url = format!("https://127.0.0.1:{other_port}");
    let up = wait_for(Duration::from_secs(30), || {
        if !other.is_running() {
            return Some(false);
        }
        Command::new("curl")
            .args(["-skf", &format!("{other_url}/readyz")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(true)
    });
    assert_eq!(up, Some(true), "the other API server did not start");
    let out = join(&copied_s, &hash, "node-a", &["--server", &other_url]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not prove"), "{}", stderr(&out));
    drop(other);
    assert!(
        files_under(node.path()).is_empty(),
        "a refused join installed files"
    );

    // 6. The join that succeeds.
    let out = join(&copied_s, &hash, "node-a", &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("CA matches {hash}")), "{text}");
    assert!(text.contains("credentials are for node node-a"), "{text}");
    assert!(text.contains("accepts node node-a"), "{text}");
    assert!(
        text.contains("skipped under --root: systemctl enable kestrel-agent"),
        "{text}"
    );
    let files = files_under(node.path());
    for f in [
        "usr/local/bin/agent",
        "etc/systemd/system/kestrel-agent.service",
        "etc/kestrel/agent.env",
        "etc/kestrel/agent.kubeconfig",
    ] {
        assert!(files.contains(f), "{f} missing from {files:?}");
    }
    assert!(!files
        .iter()
        .any(|f| f.contains("apiserver") || f.contains("etcd")));
    let agent_kubeconfig = node.path().join("etc/kestrel/agent.kubeconfig");
    assert_eq!(mode(&agent_kubeconfig), 0o600);
    assert_eq!(
        std::fs::read_to_string(&agent_kubeconfig).expect("read"),
        bundle
    );
    let agent_args = env_args(&node.path().join("etc/kestrel/agent.env"), "AGENT_ARGS");
    assert_eq!(
        agent_args,
        [
            "--kubeconfig=/etc/kestrel/agent.kubeconfig",
            "--node-name=node-a",
            "--service-cgroup=/",
            "--node-ip=192.0.2.11"
        ]
    );
    // The agent accepts these flags.
    assert_accepts(&node.path().join("usr/local/bin/agent"), "run", &agent_args);

    // A second join changes nothing.
    let out = join(&copied_s, &hash, "node-a", &[]);
    assert!(out.status.success());
    assert!(!stdout(&out).contains("installed:"), "{}", stdout(&out));

    // 7. The node's credentials act as node-a and nothing more: it may
    // change its own Node but not another's.
    let admin_kubectl = Kubectl::new(&admin).expect("kubectl");
    let out = kubectl_create(&admin_kubectl, &node_manifest("node-b"));
    assert!(out.status.success(), "{}", stderr(&out));
    let as_node = Kubectl::new(&agent_kubeconfig).expect("kubectl");
    let out = kubectl_create(&as_node, &node_manifest("node-a"));
    assert!(
        out.status.success(),
        "node-a creating its Node: {}",
        stderr(&out)
    );
    as_node
        .run(&["label", "node", "node-a", "kestrel.test/own=yes"])
        .expect("node-a labels its own Node");
    let out = as_node
        .output(&["label", "node", "node-b", "kestrel.test/other=yes"])
        .expect("kubectl");
    assert!(!out.status.success(), "node-a changed node-b's Node");
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));

    // 8. Every installed unit passes systemd-analyze verify (ExecStart
    // binaries included: etcd comes from this machine's etcd-server).
    std::fs::create_dir_all(cp.path().join("usr/bin")).expect("mkdir");
    std::fs::copy("/usr/bin/etcd", cp.path().join("usr/bin/etcd")).expect("copy etcd");
    verify_units(
        cp.path(),
        &[
            "kestrel-etcd",
            "kestrel-apiserver",
            "kestrel-scheduler",
            "kestrel-controller-manager",
        ],
    );
    verify_units(node.path(), &["kestrel-agent"]);
}
