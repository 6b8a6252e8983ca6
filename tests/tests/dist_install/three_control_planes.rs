//! Three control planes sharing one CA and an etcd cluster over TLS.

use std::process::{Command, Output};

use harness::cluster::binary;
use harness::dist::*;

#[test]
fn three_control_planes_share_one_ca_and_lay_out_an_etcd_cluster_over_tls() {
    let peers = "192.0.2.11,192.0.2.12,192.0.2.13";
    let roots: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let root = |i: usize| roots[i].path().to_str().expect("utf-8").to_string();
    let scratch = tempfile::tempdir().expect("tempdir");
    let cp = |i: usize, extra: &[&str]| -> Output {
        let r = root(i);
        let address = format!("192.0.2.1{}", i + 1);
        let mut args = vec![
            "--root",
            &r,
            "control-plane",
            "--advertise-address",
            &address,
            "--peers",
            peers,
        ];
        args.extend_from_slice(extra);
        install(&args)
    };

    // Bad peer lists are refused before anything is written.
    let r = root(1);
    for (bad, says) in [
        ("192.0.2.11,192.0.2.13,192.0.2.14", "own address"),
        ("192.0.2.11,192.0.2.12", "give 3, 5 or 7"),
        ("192.0.2.11,192.0.2.12,192.0.2.12", "listed twice"),
        ("192.0.2.11,192.0.2.12,x", "not an IP address"),
    ] {
        let out = install(&[
            "--root",
            &r,
            "control-plane",
            "--advertise-address",
            "192.0.2.12",
            "--peers",
            bad,
        ]);
        assert!(!out.status.success(), "--peers {bad} was accepted");
        assert!(
            stderr(&out).contains(says),
            "--peers {bad}: {}",
            stderr(&out)
        );
    }
    assert!(files_under(roots[1].path()).is_empty());

    // 1. The first control plane makes the CA and its member's certificate.
    let out = cp(0, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("made the cluster CA"), "{text}");
    assert!(text.contains(&format!("--peers {peers} --ca")), "{text}");
    // A member waits for its peers, so nothing blocks on starting it.
    assert!(
        text.contains("skipped under --root: systemctl restart --no-block kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager"),
        "{text}"
    );
    let r0 = roots[0].path();
    let ca = r0.join("var/lib/kestrel/pki/ca.crt");
    let env = r0.join("etc/kestrel/etcd.env");
    assert_eq!(etcd_var(&env, "ETCD_NAME"), "etcd-192-0-2-11");
    assert_eq!(
        etcd_var(&env, "ETCD_INITIAL_CLUSTER"),
        "etcd-192-0-2-11=https://192.0.2.11:2380,etcd-192-0-2-12=https://192.0.2.12:2380,etcd-192-0-2-13=https://192.0.2.13:2380"
    );
    assert_eq!(
        etcd_var(&env, "ETCD_LISTEN_PEER_URLS"),
        "https://192.0.2.11:2380"
    );
    assert_eq!(etcd_var(&env, "ETCD_CLIENT_CERT_AUTH"), "true");
    assert_eq!(etcd_var(&env, "ETCD_PEER_CLIENT_CERT_AUTH"), "true");
    assert!(!std::fs::read_to_string(&env)
        .expect("etcd.env")
        .contains('@'));
    // etcd's certificates come from etcd's own CA, not the cluster CA that
    // signs every node's (etcd_trust.rs tries a node's against etcd).
    let etcd_ca = r0.join("var/lib/kestrel/pki/etcd/ca.crt");
    assert_ne!(
        std::fs::read(&etcd_ca).expect("etcd CA"),
        std::fs::read(&ca).expect("CA")
    );
    assert_eq!(mode(&r0.join("var/lib/kestrel/pki/etcd/ca.key")), 0o600);
    let member = openssl_cert(&r0.join("var/lib/kestrel/pki/etcd/member.crt"), &etcd_ca);
    assert!(member.contains("IP Address:192.0.2.11"), "{member}");
    assert!(member.contains("IP Address:127.0.0.1"), "{member}");
    assert!(
        member.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{member}"
    );
    assert_eq!(mode(&r0.join("var/lib/kestrel/pki/etcd/member.key")), 0o600);
    let client = openssl_cert(
        &r0.join("var/lib/kestrel/pki/apiserver-etcd-client.crt"),
        &etcd_ca,
    );
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    assert!(!client.contains("Server Authentication"), "{client}");
    assert_eq!(
        env_args(&r0.join("etc/kestrel/apiserver.env"), "APISERVER_ARGS"),
        [
            "--bind-address=0.0.0.0:6443",
            "--etcd-servers=https://192.0.2.11:2379,https://192.0.2.12:2379,https://192.0.2.13:2379",
            "--etcd-cafile=/var/lib/kestrel/pki/etcd/ca.crt",
            "--etcd-certfile=/var/lib/kestrel/pki/apiserver-etcd-client.crt",
            "--etcd-keyfile=/var/lib/kestrel/pki/apiserver-etcd-client.key",
            "--cert-dir=/var/lib/kestrel/pki",
            "--tls-san=192.0.2.11",
            "--advertise-url=https://192.0.2.11:6443",
            "--admin-kubeconfig=/etc/kestrel/admin.kubeconfig",
        ]
    );
    // The scheduler and controller-manager start with this machine's API
    // server and fail over to the others.
    for (c, var) in [
        ("scheduler", "SCHEDULER_ARGS"),
        ("controller-manager", "CONTROLLER_MANAGER_ARGS"),
    ] {
        assert_eq!(
            env_args(&r0.join(format!("etc/kestrel/{c}.env")), var),
            ["--master=https://127.0.0.1:6443,https://192.0.2.12:6443,https://192.0.2.13:6443"]
        );
    }
    // The API server and the components accept these flags.
    let args = env_args(&r0.join("etc/kestrel/apiserver.env"), "APISERVER_ARGS");
    assert_accepts(&binary("control-plane"), "apiserver", &args);

    // 2. The others get a copy of the CA. A wrong copy is refused.
    let copied = scratch.path().join("ca");
    std::fs::create_dir_all(&copied).expect("mkdir");
    let copied_s = copied.to_str().expect("utf-8").to_string();
    std::fs::copy(&ca, copied.join("ca.crt")).expect("copy");
    let out = cp(1, &["--ca", &copied_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no ca.key"), "{}", stderr(&out));
    let other = scratch.path().join("other");
    let made = Command::new(binary("control-plane"))
        .args(["ca", "--cert-dir"])
        .arg(&other)
        .status()
        .expect("control-plane ca");
    assert!(made.success());
    std::fs::copy(other.join("ca.key"), copied.join("ca.key")).expect("copy");
    let out = cp(1, &["--ca", &copied_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not the key"), "{}", stderr(&out));
    assert!(
        files_under(roots[1].path()).is_empty(),
        "a refused install wrote files"
    );

    std::fs::copy(r0.join("var/lib/kestrel/pki/ca.key"), copied.join("ca.key")).expect("copy");
    // Without etcd's CA the copy is refused too.
    let out = cp(1, &["--ca", &copied_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no etcd/ca.crt"), "{}", stderr(&out));
    std::fs::create_dir_all(copied.join("etcd")).expect("mkdir");
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(
            r0.join("var/lib/kestrel/pki/etcd").join(f),
            copied.join("etcd").join(f),
        )
        .expect("copy");
    }
    for i in [1, 2] {
        let out = cp(i, &["--ca", &copied_s]);
        assert!(out.status.success(), "{}", stderr(&out));
        let ri = roots[i].path();
        assert_eq!(
            std::fs::read(ri.join("var/lib/kestrel/pki/ca.crt")).expect("ca"),
            std::fs::read(&ca).expect("ca")
        );
        assert_eq!(mode(&ri.join("var/lib/kestrel/pki/ca.key")), 0o600);
        // Its member's certificate comes from the shared CA, for its own address.
        let member = openssl_cert(&ri.join("var/lib/kestrel/pki/etcd/member.crt"), &etcd_ca);
        assert!(
            member.contains(&format!("IP Address:192.0.2.1{}", i + 1)),
            "{member}"
        );
        assert_eq!(
            etcd_var(&ri.join("etc/kestrel/etcd.env"), "ETCD_INITIAL_CLUSTER"),
            etcd_var(&env, "ETCD_INITIAL_CLUSTER"),
            "every member is given the same cluster"
        );
    }
    // Given another cluster's CA later, a control plane refuses it.
    std::fs::copy(other.join("ca.crt"), copied.join("ca.crt")).expect("copy");
    std::fs::copy(other.join("ca.key"), copied.join("ca.key")).expect("copy");
    let out = cp(1, &["--ca", &copied_s]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another CA"), "{}", stderr(&out));

    // A member run again without --peers is refused; so is a machine with a
    // single control plane given --peers.
    let out = install(&[
        "--root",
        &root(1),
        "control-plane",
        "--advertise-address",
        "192.0.2.12",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("same --peers"), "{}", stderr(&out));
    let single = tempfile::tempdir().expect("tempdir");
    let single_root = single.path().to_str().expect("utf-8").to_string();
    let single_cp = |extra: &[&str]| -> Output {
        let mut args = vec![
            "--root",
            &single_root,
            "control-plane",
            "--advertise-address",
            "192.0.2.11",
        ];
        args.extend_from_slice(extra);
        install(&args)
    };
    assert!(single_cp(&[]).status.success());
    let out = single_cp(&["--peers", peers]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("single control plane"),
        "{}",
        stderr(&out)
    );

    // 3. A node learns every API server, this control plane's first.
    let out = install(&["--root", &root(1), "add-node", "node-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let servers = "https://192.0.2.12:6443,https://192.0.2.11:6443,https://192.0.2.13:6443";
    assert!(
        stdout(&out).contains(&format!("--node-name node-a --server {servers}")),
        "{}",
        stdout(&out)
    );
    let bundle = roots[1].path().join("etc/kestrel/nodes/node-a.kubeconfig");
    let text = std::fs::read_to_string(&bundle).expect("kubeconfig");
    assert!(text.contains("server: https://192.0.2.12:6443\n"), "{text}");
    let hash = stdout(&install(&["--root", &root(1), "ca-cert-hash"]))
        .trim()
        .to_string();
    let node = tempfile::tempdir().expect("tempdir");
    let node_root = node.path().to_str().expect("utf-8").to_string();
    let out = install(&[
        "--root",
        &node_root,
        "join",
        "--kubeconfig",
        bundle.to_str().expect("utf-8"),
        "--ca-cert-hash",
        &hash,
        "--node-name",
        "node-a",
        "--server",
        servers,
        "--skip-server-check",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agent_args = env_args(&node.path().join("etc/kestrel/agent.env"), "AGENT_ARGS");
    assert_eq!(
        agent_args,
        [
            "--kubeconfig=/etc/kestrel/agent.kubeconfig",
            "--node-name=node-a",
            "--service-cgroup=/",
            &format!("--master={servers}"),
        ]
    );
    assert_accepts(&binary("agent"), "run", &agent_args);

    // 4. etcd's unit with the member's drop-in passes systemd-analyze.
    std::fs::create_dir_all(r0.join("usr/bin")).expect("mkdir");
    std::fs::copy("/usr/bin/etcd", r0.join("usr/bin/etcd")).expect("copy etcd");
    assert!(r0
        .join("etc/systemd/system/kestrel-etcd.service.d/member.conf")
        .exists());
    verify_units(r0, &["kestrel-etcd", "kestrel-apiserver"]);
}
