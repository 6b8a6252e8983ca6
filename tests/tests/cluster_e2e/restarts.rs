//! Upgrade safety: each component killed and started again in turn loses
//! no acknowledged write and no running replica.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    client, lost_configmaps, name, running_and_ready, three_spread_replicas, Cluster, StopOnDrop,
    WEB,
};

/// What a pod is, for telling a kept pod from a replacement or a restart:
/// (uid, container id, restart count) by pod name.
fn identities(pods: &[Value]) -> BTreeMap<String, (String, String, u64)> {
    pods.iter()
        .map(|p| {
            let cs = &p["status"]["containerStatuses"][0];
            (
                name(p),
                (
                    p["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    cs["containerID"].as_str().unwrap_or_default().to_string(),
                    cs["restartCount"].as_u64().unwrap_or(u64::MAX),
                ),
            )
        })
        .collect()
}

/// Upgrade safety: etcd, the API server, the scheduler, the
/// controller-manager and one agent are each killed (SIGKILL) and started
/// again in turn, while a ReplicationController runs behind a Service and a
/// client keeps creating ConfigMaps. No acknowledged write is lost, no
/// replica is replaced or restarted, the Service keeps balancing over the
/// same replicas, and afterwards the cluster still acts (a scale-up runs).
#[test]
fn restarting_any_one_component_loses_no_object_and_no_running_pod() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let mut c = Cluster::start(&[], &[]);
    c.apply(&(WEB.to_string() + &client("probe", &c.nodes[0].name)));
    let pods = three_spread_replicas(&c);
    let before = identities(&pods);
    let names: BTreeSet<String> = before.keys().cloned().collect();
    let vip = c.get(&["svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.balanced_over("probe", &vip, &names);
    c.step("3 replicas behind the Service");

    let stop = AtomicBool::new(false);
    let acknowledged = Mutex::new(Vec::new());
    let refused = Mutex::new(0usize);
    let writer_k = c.cp.kubectl();
    std::thread::scope(|s| {
        // The writer: one ConfigMap after another; a create that kubectl
        // reports as done must survive whatever restarts next.
        let (stop, acknowledged, refused) = (&stop, &acknowledged, &refused);
        let writer = s.spawn(move || {
            let k = writer_k;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{i}");
                i += 1;
                let out = k.output(&["create", "configmap", &name, "--from-literal=k=v"]);
                match out {
                    Ok(o) if o.status.success() => acknowledged.lock().unwrap().push(name),
                    _ => *refused.lock().unwrap() += 1,
                }
            }
        });
        let _stop_writer = StopOnDrop(stop);
        for component in [
            "etcd",
            "apiserver",
            "scheduler",
            "controller-manager",
            "agent",
        ] {
            std::thread::sleep(Duration::from_secs(2));
            match component {
                "etcd" => c.cp.etcd.restart().expect("etcd restarts"),
                "apiserver" => {
                    c.cp.kill_apiserver();
                    c.cp.start_apiserver().expect("the API server restarts");
                }
                "scheduler" => {
                    c.scheduler.kill();
                    c.scheduler = c.cp.component("scheduler", &["scheduler"]).unwrap();
                }
                "controller-manager" => {
                    c.cm.kill();
                    c.cm =
                        c.cp.component(
                            "controller-manager",
                            &["controller-manager", "--allocate-node-cidrs=false"],
                        )
                        .unwrap();
                }
                _ => {
                    let n = &mut c.nodes[1];
                    if let Some(p) = n.proc.as_mut() {
                        p.kill();
                    }
                    n.launch();
                }
            }
            c.step(&format!("{component} restarted"));
            // Back to work: the replicas are the same ones, running, not
            // restarted, and the Service still reaches all three.
            c.wait(
                60,
                &format!("the same 3 replicas after {component}"),
                || {
                    let now = c.live_pods("app=web");
                    (now.iter().all(running_and_ready) && identities(&now) == before).then_some(())
                },
            );
            c.balanced_over("probe", &vip, &names);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });

    let acknowledged = acknowledged.into_inner().unwrap();
    let lost = lost_configmaps(&c, &acknowledged);
    c.step(&format!(
        "{} ConfigMaps acknowledged, {} refused while a component was down, {} lost",
        acknowledged.len(),
        refused.into_inner().unwrap(),
        lost.len()
    ));
    assert!(
        acknowledged.len() > 20,
        "the writer hardly wrote: {acknowledged:?}"
    );
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");

    // Still a working cluster: the restarted scheduler and
    // controller-manager scale the RC up.
    c.k.run(&["scale", "rc", "web", "--replicas=4"]).unwrap();
    let now = c.wait(90, "a 4th replica running", || {
        let p = c.live_pods("app=web");
        (p.len() == 4 && p.iter().all(running_and_ready)).then_some(p)
    });
    let kept: BTreeMap<_, _> = identities(&now)
        .into_iter()
        .filter(|(n, _)| before.contains_key(n))
        .collect();
    assert_eq!(kept, before, "the first 3 replicas were left alone");
}
