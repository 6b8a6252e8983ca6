//! `install.sh` for real: Debian machines booted by systemd-nspawn in
//! network namespaces of the test, where it installs packages' units and
//! systemd starts them; one control plane and a node, and three control
//! planes that keep serving when one machine dies.

use std::time::Duration;

use harness::dist::*;
use harness::nspawn::{debian_rootfs, m, Machine};
use harness::process::wait_for;

#[test]
fn install_sh_provisions_a_control_plane_and_a_node_for_real_under_systemd() {
    harness::require_root("containers and network namespaces");
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let base = debian_rootfs();
    step("root file system ready");
    let dir = tempfile::Builder::new()
        .prefix("kestrel-machines-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    // Two machines on one link of their own; nothing reaches the host's
    // interfaces.
    let cp_net = harness::net::Netns::new("cp").expect("netns");
    let node_net = harness::net::Netns::new("nd").expect("netns");
    let (cp_if, node_if) = harness::net::veth_between(&cp_net, &node_net, "v").expect("veth");
    cp_net.addr_up(&cp_if, "10.88.0.1/24").expect("address");
    node_net.addr_up(&node_if, "10.88.0.2/24").expect("address");

    let cp = Machine::boot(&base, dir.path(), "kcp", &cp_net);
    let node = Machine::boot(&base, dir.path(), "knode", &node_net);

    step("machines booted");
    // The control plane, as an operator runs it.
    let text = cp.run("/opt/kestrel/install.sh control-plane --advertise-address 10.88.0.1");
    assert!(
        text.contains("control plane: https://10.88.0.1:6443"),
        "{text}"
    );
    let units = "kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager";
    let active = |m: &Machine, units: &str| -> bool {
        m.sh(&format!("systemctl is-active --quiet {units}"))
            .status
            .success()
    };
    assert!(
        active(&cp, units),
        "{}",
        cp.run(&format!("systemctl status --no-pager {units} || true"))
    );
    assert!(
        !active(&cp, "etcd"),
        "Debian's own etcd.service was left running"
    );
    step("control plane installed");
    let kubectl = "/usr/local/lib/kubectl --kubeconfig /etc/kestrel/admin.kubeconfig";
    // Both components hold their Leases, with their own certificates.
    let leases = wait_for(Duration::from_secs(30), || {
        let out = cp.sh(&format!("{kubectl} get leases -n kube-system -o name"));
        let text = stdout(&out);
        (text.contains("kube-scheduler") && text.contains("kube-controller-manager")).then_some(())
    });
    assert!(
        leases.is_some(),
        "the scheduler and controller-manager did not take their leases"
    );
    step("leases held");
    // Running it again changes nothing and leaves everything running.
    let text = cp.run("/opt/kestrel/install.sh control-plane --advertise-address 10.88.0.1");
    assert!(
        !text.contains("installed:") && !text.contains("written:"),
        "{text}"
    );
    assert!(active(&cp, units));

    step("second run done");
    // The node's credentials travel as a file (here: through the test), the
    // hash as text.
    cp.run("/opt/kestrel/install.sh add-node knode && cp /etc/kestrel/nodes/knode.kubeconfig /root/xfer/");
    let hash = cp
        .run("/opt/kestrel/install.sh ca-cert-hash")
        .trim()
        .to_string();
    std::fs::copy(
        cp.xfer.join("knode.kubeconfig"),
        node.xfer.join("knode.kubeconfig"),
    )
    .expect("copy the credentials");
    // The node's name defaults to its host name.
    let text = node.run(&format!(
        "/opt/kestrel/install.sh join --kubeconfig /root/xfer/knode.kubeconfig --ca-cert-hash {hash} --node-ip 10.88.0.2"
    ));
    assert!(text.contains("accepts node knode"), "{text}");
    assert!(node
        .run("cat /etc/kestrel/agent.env")
        .contains("--node-name=knode"));

    step("node joined");
    // The unit started the agent, which registered the Node with the
    // installed credentials. It then stops: the container may not load eBPF
    // programs.
    let registered = wait_for(Duration::from_secs(30), || {
        cp.sh(&format!("{kubectl} get node knode"))
            .status
            .success()
            .then_some(())
    });
    assert!(
        registered.is_some(),
        "kestrel-agent did not register knode: {}",
        node.run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    // As a node without pods it keeps running: status and Lease are the
    // real thing.
    node.run(
        "sed -i 's/^AGENT_ARGS=\"\\(.*\\)\"$/AGENT_ARGS=\"\\1 --no-pods\"/' /etc/kestrel/agent.env \
         && systemctl restart kestrel-agent",
    );
    let restarts = || node.run("systemctl show -p NRestarts --value kestrel-agent");
    let before = restarts();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        active(&node, "kestrel-agent") && restarts() == before,
        "kestrel-agent does not stay up: {}",
        node.run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    let ready = wait_for(Duration::from_secs(60), || {
        let out = cp.sh(&format!(
            "{kubectl} get node knode -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}} {{.spec.podCIDR}}' \
             && {kubectl} get lease -n kube-node-lease knode -o name"
        ));
        let text = stdout(&out);
        (text.starts_with("True 10.244.") && text.contains("lease")).then_some(text)
    });
    assert!(
        ready.is_some(),
        "knode did not become Ready with a pod CIDR and a Lease: {}",
        node.run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    step("node Ready");
}

#[test]
fn install_sh_provisions_three_control_planes_that_keep_serving_when_one_machine_dies() {
    harness::require_root("containers and network namespaces");
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let base = debian_rootfs();
    let dir = tempfile::Builder::new()
        .prefix("kestrel-machines-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    // Four machines on one switch of their own; nothing reaches the host's
    // interfaces.
    let switch = harness::net::Segment::new().expect("segment");
    let names = ["kcp1", "kcp2", "kcp3", "knode"];
    let addresses = ["10.88.0.1", "10.88.0.2", "10.88.0.3", "10.88.0.10"];
    let nets: Vec<harness::net::Netns> = names
        .iter()
        .zip(addresses)
        .map(|(name, address)| {
            let net = harness::net::Netns::new(&name[1..]).expect("netns");
            let link = switch.attach(&net).expect("attach");
            net.addr_up(&link, &format!("{address}/24"))
                .expect("address");
            net
        })
        .collect();
    let mut machines: Vec<Option<Machine>> = std::thread::scope(|s| {
        let booting: Vec<_> = names
            .iter()
            .zip(&nets)
            .map(|(name, net)| s.spawn(|| Machine::boot(&base, dir.path(), name, net)))
            .collect();
        booting
            .into_iter()
            .map(|b| Some(b.join().expect("boot")))
            .collect()
    });
    step("machines booted");
    let peers = addresses[..3].join(",");
    let units = "kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager";
    let kubectl = "/usr/local/lib/kubectl --kubeconfig /etc/kestrel/admin.kubeconfig";

    // The first control plane makes the CA; its etcd member waits for a
    // majority, so its API server is not up yet.
    let text = m(&machines, 0).run(&format!(
        "/opt/kestrel/install.sh control-plane --advertise-address 10.88.0.1 --peers {peers}"
    ));
    assert!(text.contains("etcd waits for a majority"), "{text}");
    m(&machines, 0).run("mkdir -p /root/xfer/ca/etcd && cp /var/lib/kestrel/pki/ca.crt /var/lib/kestrel/pki/ca.key /root/xfer/ca/ && cp /var/lib/kestrel/pki/etcd/ca.crt /var/lib/kestrel/pki/etcd/ca.key /root/xfer/ca/etcd/");
    step("first control plane installed");
    for i in [1, 2] {
        let to = m(&machines, i).xfer.join("ca");
        std::fs::create_dir_all(to.join("etcd")).expect("mkdir");
        for f in ["ca.crt", "ca.key", "etcd/ca.crt", "etcd/ca.key"] {
            std::fs::copy(m(&machines, 0).xfer.join("ca").join(f), to.join(f))
                .expect("copy the CA");
        }
        // From the second on, etcd has a majority and the API server answers.
        let text = m(&machines, i).run(&format!(
            "/opt/kestrel/install.sh control-plane --advertise-address {} --peers {peers} --ca /root/xfer/ca",
            addresses[i]
        ));
        assert!(
            text.contains(&format!("control plane: https://{}:6443", addresses[i])),
            "{text}"
        );
        assert!(!text.contains("etcd waits"), "{text}");
        step(&format!("control plane {} installed", i + 1));
    }
    let all_active = wait_for(Duration::from_secs(60), || {
        (0..3)
            .all(|i| {
                m(&machines, i)
                    .sh(&format!("systemctl is-active --quiet {units}"))
                    .status
                    .success()
            })
            .then_some(())
    });
    assert!(
        all_active.is_some(),
        "{}",
        m(&machines, 0).run(&format!("systemctl status --no-pager {units} || true"))
    );
    // Every API server sees the three members and both leaders.
    let healthy = |m: &Machine, want: &[&str]| -> Option<String> {
        let out = m.sh(&format!(
            "{kubectl} get cs -o jsonpath='{{range .items[*]}}{{.metadata.name}}={{.conditions[0].status}} {{end}}'"
        ));
        let text = stdout(&out);
        want.iter().all(|w| text.contains(w)).then_some(text)
    };
    let everything = [
        "etcd-0=True",
        "etcd-1=True",
        "etcd-2=True",
        "scheduler=True",
        "controller-manager=True",
    ];
    for i in 0..3 {
        let ok = wait_for(Duration::from_secs(60), || {
            healthy(m(&machines, i), &everything)
        });
        assert!(
            ok.is_some(),
            "kcp{}: {}",
            i + 1,
            stdout(&m(&machines, i).sh(&format!("{kubectl} get cs")))
        );
    }
    step("three control planes healthy");
    // Service default/kubernetes leads to the three API servers.
    let api_endpoints = |m: &Machine| -> String {
        stdout(&m.sh(&format!(
            "{kubectl} get endpoints kubernetes -o jsonpath='{{.subsets[*].addresses[*].ip}}'"
        )))
        .trim()
        .to_string()
    };
    let all_three = wait_for(Duration::from_secs(60), || {
        (api_endpoints(m(&machines, 0)) == "10.88.0.1 10.88.0.2 10.88.0.3").then_some(())
    });
    assert!(all_three.is_some(), "{}", api_endpoints(m(&machines, 0)));

    // A node joins with every API server.
    let text = m(&machines, 0).run(
        "/opt/kestrel/install.sh add-node knode && cp /etc/kestrel/nodes/knode.kubeconfig /root/xfer/",
    );
    let join = text
        .lines()
        .find(|l| l.contains("install.sh join"))
        .expect("add-node prints the join command")
        .trim()
        .to_string();
    assert!(
        join.ends_with(
            "--server https://10.88.0.1:6443,https://10.88.0.2:6443,https://10.88.0.3:6443"
        ),
        "{join}"
    );
    std::fs::copy(
        m(&machines, 0).xfer.join("knode.kubeconfig"),
        m(&machines, 3).xfer.join("knode.kubeconfig"),
    )
    .expect("copy the credentials");
    let text = m(&machines, 3).run(&format!(
        "cd /root/xfer && /opt/kestrel/{} --node-ip 10.88.0.10",
        join.trim_start_matches("./")
    ));
    for a in &addresses[..3] {
        assert!(
            text.contains(&format!(
                "the API server at https://{a}:6443 accepts node knode"
            )),
            "{text}"
        );
    }
    // The container may not load eBPF programs: a node without pods, whose
    // status and Lease are the real thing.
    m(&machines, 3).run(
        "sed -i 's/^AGENT_ARGS=\"\\(.*\\)\"$/AGENT_ARGS=\"\\1 --no-pods\"/' /etc/kestrel/agent.env \
         && systemctl restart kestrel-agent",
    );
    let renewed = |m: &Machine| -> Option<String> {
        let out = m.sh(&format!(
            "{kubectl} get lease -n kube-node-lease knode -o jsonpath='{{.spec.renewTime}}'"
        ));
        let t = stdout(&out).trim().to_string();
        (out.status.success() && !t.is_empty()).then_some(t)
    };
    let ready = wait_for(Duration::from_secs(60), || {
        let out = m(&machines, 1).sh(&format!(
            "{kubectl} get node knode -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"
        ));
        (stdout(&out) == "True").then_some(())
    });
    assert!(
        ready.is_some(),
        "knode is not Ready: {}",
        m(&machines, 3).run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    step("node Ready");

    // Both leaders move to kcp1: the others' stop (and give up their
    // Leases), then come back as standbys.
    let holder = |m: &Machine, lease: &str| -> String {
        stdout(&m.sh(&format!(
            "{kubectl} get lease -n kube-system {lease} -o jsonpath='{{.spec.holderIdentity}} {{.spec.renewTime}}'"
        )))
    };
    let leaders = "kestrel-scheduler kestrel-controller-manager";
    for i in [1, 2] {
        m(&machines, i).run(&format!("systemctl stop {leaders}"));
    }
    let on_kcp1 = wait_for(Duration::from_secs(60), || {
        ["kube-scheduler", "kube-controller-manager"]
            .iter()
            .all(|l| holder(m(&machines, 0), l).starts_with("kcp1"))
            .then_some(())
    });
    assert!(
        on_kcp1.is_some(),
        "{} / {}",
        holder(m(&machines, 0), "kube-scheduler"),
        holder(m(&machines, 0), "kube-controller-manager")
    );
    for i in [1, 2] {
        m(&machines, i).run(&format!("systemctl start {leaders}"));
    }
    step("kcp1 leads");

    // The first control plane's machine dies: its etcd member, its API
    // server (the node's first choice) and both leaders.
    m(&machines, 0).run(&format!(
        "{kubectl} create configmap before-the-loss --from-literal=k=v"
    ));
    let before = renewed(m(&machines, 1)).expect("knode's Lease");
    drop(machines[0].take());
    step("kcp1 killed");
    let survivor = m(&machines, 1);
    // Writes go on through the others, and are seen by both.
    let created = wait_for(Duration::from_secs(30), || {
        survivor
            .sh(&format!(
                "{kubectl} create configmap after-the-loss --from-literal=k=v"
            ))
            .status
            .success()
            .then_some(())
    });
    assert!(
        created.is_some(),
        "no write after losing one of three control planes"
    );
    let both = m(&machines, 2).run(&format!("{kubectl} get configmaps -o name"));
    assert!(
        both.contains("configmap/before-the-loss") && both.contains("configmap/after-the-loss"),
        "{both}"
    );
    // The node's agent moves to another API server and renews its Lease.
    let moved = wait_for(Duration::from_secs(60), || {
        renewed(survivor).filter(|t| *t != before)
    });
    assert!(
        moved.is_some(),
        "knode's Lease was not renewed after kcp1 died: {}",
        m(&machines, 3).run("journalctl -u kestrel-agent --no-pager | tail -n 20")
    );
    // The standbys take the Leases over.
    let taken = wait_for(Duration::from_secs(90), || {
        ["kube-scheduler", "kube-controller-manager"]
            .iter()
            .all(|l| {
                let h = holder(survivor, l);
                h.starts_with("kcp2") || h.starts_with("kcp3")
            })
            .then_some(())
    });
    assert!(
        taken.is_some(),
        "the leaders did not move off kcp1: {} / {}",
        holder(survivor, "kube-scheduler"),
        holder(survivor, "kube-controller-manager")
    );
    step("leaders moved");
    // ...and act: a Deployment made now gets its pods, bound to the node.
    survivor.run(&format!(
        "{kubectl} create deployment web --image=registry.invalid/web:1 --replicas=2"
    ));
    let bound = wait_for(Duration::from_secs(60), || {
        let out = survivor.sh(&format!(
            "{kubectl} get pods -l app=web -o jsonpath='{{range .items[*]}}{{.spec.nodeName}} {{end}}'"
        ));
        (stdout(&out).trim() == "knode knode").then_some(())
    });
    assert!(
        bound.is_some(),
        "{}",
        stdout(&survivor.sh(&format!("{kubectl} get deploy,rs,pods -o wide")))
    );
    // The lost member shows; the leaders are held by the remaining machines.
    let after = wait_for(Duration::from_secs(60), || {
        healthy(
            survivor,
            &[
                "etcd-0=False",
                "etcd-1=True",
                "etcd-2=True",
                "scheduler=True",
                "controller-manager=True",
            ],
        )
    });
    assert!(
        after.is_some(),
        "{}",
        stdout(&survivor.sh(&format!("{kubectl} get cs")))
    );
    let node_ready = survivor.run(&format!(
        "{kubectl} get node knode -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"
    ));
    assert_eq!(node_ready, "True");
    // The dead API server's announcement expires.
    let two = wait_for(Duration::from_secs(90), || {
        (api_endpoints(survivor) == "10.88.0.2 10.88.0.3").then_some(())
    });
    assert!(
        two.is_some(),
        "{}\n--- kcp2\n{}\n--- kcp3\n{}",
        api_endpoints(survivor),
        survivor.run("journalctl -u kestrel-apiserver --no-pager | tail -n 30"),
        m(&machines, 2).run("journalctl -u kestrel-apiserver --no-pager | tail -n 30")
    );
    step("cluster serving without kcp1");
}
