//! High availability: three API servers over a three-member etcd, two
//! schedulers and two controller-managers keep serving while the leading
//! controller-manager, an API server and an etcd member are killed and
//! left dead, and the lost members serve again when they return.

use std::collections::BTreeMap;

use harness::kubectl::Kubectl;

use crate::common::{
    client, condition, lost_configmaps, name, running_and_ready, three_spread_replicas, Cluster,
    StopOnDrop, WEB,
};

/// The pid in the identity holding the Lease `name` in kube-system
/// (identities are `host_pid`), once one holds it.
fn lease_holder_pid(c: &Cluster, name: &str) -> Option<u32> {
    let lease = c.get(&["lease", "-n", "kube-system", name]);
    lease["spec"]["holderIdentity"]
        .as_str()?
        .rsplit_once('_')?
        .1
        .parse()
        .ok()
}

/// When each node's Lease was last renewed, by node name.
fn node_lease_renewals(c: &Cluster) -> BTreeMap<String, String> {
    c.get(&["leases", "-n", "kube-node-lease"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|l| {
            (
                name(l),
                l["spec"]["renewTime"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// High availability: three API servers over a three-member etcd, two
/// schedulers and two controller-managers. While a client keeps creating
/// ConfigMaps, trying the next API server whenever one fails it, the
/// leading controller-manager, the API server every component and agent
/// prefers, and an etcd member are killed in turn and left dead. After
/// each loss the cluster still does its work (a deleted replica is
/// replaced, nodes keep renewing their leases, a scale-up runs and the
/// Service balances over the new replica), and no acknowledged write is
/// lost.
#[test]
fn ha_control_plane_keeps_serving_without_its_leading_controller_manager_an_apiserver_or_an_etcd_member(
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let mut c = Cluster::start_ha();
    c.apply(&(WEB.to_string() + &client("probe", &c.nodes[0].name)));
    let pods = three_spread_replicas(&c);
    let vip = c.get(&["svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.balanced_over("probe", &vip, &pods.iter().map(name).collect());
    c.step("HA control plane: 3 replicas behind the Service");

    let urls = c.cp.urls();
    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    let failed_over = Mutex::new(0usize);
    let writer_k: Vec<Kubectl> = urls.iter().map(|u| c.cp.kubectl().with_server(u)).collect();
    std::thread::scope(|s| {
        let (stop, acknowledged, failed_over) = (&stop, &acknowledged, &failed_over);
        // The writer: a client that knows every API server and moves to the
        // next one when a create fails, as an HA-aware client does.
        s.spawn(move || {
            let (mut i, mut server) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{i}");
                i += 1;
                let out =
                    writer_k[server].output(&["create", "configmap", &name, "--from-literal=k=v"]);
                match out {
                    Ok(o) if o.status.success() => acknowledged.lock().unwrap().push(name),
                    _ => {
                        server = (server + 1) % writer_k.len();
                        *failed_over.lock().unwrap() += 1;
                    }
                }
            }
        });
        let _stop_writer = StopOnDrop(stop);
        let acked = || acknowledged.lock().unwrap().len();

        // 1. The leading controller-manager.
        let leader = c.wait(30, "a controller-manager leads", || {
            lease_holder_pid(&c, "kube-controller-manager")
        });
        let (dead, successor) = if c.cm.pid() == leader {
            (&mut c.cm, c.standby[0].pid())
        } else {
            (&mut c.standby[0], c.cm.pid())
        };
        assert!(
            dead.pid() == leader,
            "the lease names pid {leader}, which no controller-manager has"
        );
        dead.kill();
        c.step(&format!("leading controller-manager (pid {leader}) killed"));
        c.wait(30, "the standby controller-manager leads", || {
            (lease_holder_pid(&c, "kube-controller-manager") == Some(successor)).then_some(())
        });
        let doomed = name(&pods[0]);
        c.k.run(&["delete", "pod", &doomed, "--wait=false"])
            .unwrap();
        c.wait(90, "the deleted replica replaced by the new leader", || {
            let p = c.live_pods("app=web");
            (p.len() == 3
                && p.iter().all(running_and_ready)
                && !p.iter().any(|p| name(p) == doomed))
            .then_some(())
        });
        c.step("the standby took over and replaced a deleted replica");

        // 2. The API server every relay tries first.
        let before = node_lease_renewals(&c);
        c.cp.kill_apiserver_at(0);
        c.k = c.cp.kubectl().with_server(&urls[1]);
        c.step("API server 0 killed");
        c.wait(
            30,
            "every node renewing its Lease through another API server",
            || {
                let now = node_lease_renewals(&c);
                (now.len() == 3
                    && now
                        .iter()
                        .all(|(n, t)| before.get(n).is_some_and(|b| t > b)))
                .then_some(())
            },
        );
        c.k.run(&["scale", "rc", "web", "--replicas=4"]).unwrap();
        let four = c.wait(90, "a 4th replica running", || {
            let p = c.live_pods("app=web");
            (p.len() == 4 && p.iter().all(running_and_ready)).then_some(p)
        });
        c.balanced_over("probe", &vip, &four.iter().map(name).collect());
        let nodes = c.get(&["nodes"]);
        for n in nodes["items"].as_array().unwrap() {
            assert_eq!(
                condition(n, "Ready"),
                "True",
                "{} after the API server died",
                name(n)
            );
        }
        c.step("without API server 0: leases renewed, scaled to 4, Service balanced over 4");

        // 3. An etcd member (the cluster keeps its quorum of two).
        let written = acked();
        c.cp.etcd.kill();
        c.step("etcd member 0 killed");
        let cs = c.k.run(&["get", "cs", "--no-headers"]).unwrap();
        let health: BTreeMap<&str, &str> = cs
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?, f.next()?))
            })
            .collect();
        for (member, want) in [
            ("etcd-0", "Unhealthy"),
            ("etcd-1", "Healthy"),
            ("etcd-2", "Healthy"),
        ] {
            assert_eq!(health.get(member), Some(&want), "kubectl get cs:\n{cs}");
        }
        c.wait(60, "writes acknowledged after the etcd member died", || {
            (acked() >= written + 10).then_some(())
        });
        c.k.run(&["scale", "rc", "web", "--replicas=3"]).unwrap();
        c.wait(90, "back to 3 replicas", || {
            let p = c.live_pods("app=web");
            (p.len() == 3 && p.iter().all(running_and_ready)).then_some(())
        });
        c.step("without etcd member 0: writes go on, scaled back to 3");
        stop.store(true, Ordering::Relaxed);
    });

    let acknowledged = acknowledged.into_inner().unwrap();
    let lost = lost_configmaps(&c, &acknowledged);
    c.step(&format!(
        "{} ConfigMaps acknowledged, {} creates failed over to another API server, {} lost",
        acknowledged.len(),
        failed_over.into_inner().unwrap(),
        lost.len()
    ));
    assert!(
        acknowledged.len() > 20,
        "the writer hardly wrote: {acknowledged:?}"
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");

    // The lost members return and serve again: the etcd member rejoins
    // its cluster with its data, the API server answers reads.
    c.cp.etcd.restart().expect("the etcd member rejoins");
    c.cp.start_apiserver_at(0).expect("API server 0 restarts");
    let back = c.cp.kubectl().with_server(&urls[0]);
    let listed = back.run(&["get", "configmaps", "-o", "name"]).unwrap();
    assert!(
        acknowledged
            .iter()
            .all(|n| listed.contains(&format!("configmap/{n}\n"))),
        "the restarted API server lists every acknowledged ConfigMap"
    );
    c.step("etcd member 0 and API server 0 back; every ConfigMap listed through it");
}
