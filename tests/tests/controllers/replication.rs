//! ReplicationControllers: spread, replacement and scaling, and what
//! deleting one does to its pods with each cascade.

use std::collections::{BTreeSet, HashSet};

use crate::common::{get, live_pods, node_of, running, Cluster, RC};

/// The seed's replication story: three replicas land on three different
/// nodes, a deleted pod is replaced, and scaling moves the count both ways.
#[test]
fn replication_controller_spreads_replaces_and_scales() {
    let c = Cluster::start(&[], &[], &[("node", 3, &[])]);
    c.k.apply(RC);
    let pods = c.wait(30, "3 running replicas", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 3 && p.iter().all(running)).then_some(p)
    });
    let nodes: BTreeSet<&str> = pods.iter().map(node_of).collect();
    assert_eq!(nodes.len(), 3, "replicas share a node: {nodes:?}");
    // Node IPAM gave every node its own podCIDR from 10.244.0.0/16.
    let cidrs = c.wait(30, "a podCIDR on every node", || {
        let n = get(&c.k, &["nodes"]);
        let cidrs: BTreeSet<String> = n["items"]
            .as_array()?
            .iter()
            .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
            .collect();
        (cidrs.len() == 3).then_some(cidrs)
    });
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("10.244.") && c.ends_with(".0/24")),
        "{cidrs:?}"
    );

    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    c.k.run(&["delete", "pod", &victim]).unwrap();
    c.wait(30, "a replacement replica", || {
        let p = live_pods(&c.k, "app=web");
        let names: HashSet<&str> = p
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        (p.len() == 3 && !names.contains(victim.as_str()) && p.iter().all(running)).then_some(())
    });

    c.k.run(&["scale", "rc", "web", "--replicas=5"]).unwrap();
    c.wait(30, "5 replicas", || {
        let rc = get(&c.k, &["rc", "web"]);
        (live_pods(&c.k, "app=web").len() == 5 && rc["status"]["readyReplicas"] == 5).then_some(())
    });
    c.k.run(&["scale", "rc", "web", "--replicas=1"]).unwrap();
    c.wait(30, "1 replica", || {
        let rc = get(&c.k, &["rc", "web"]);
        (live_pods(&c.k, "app=web").len() == 1 && rc["status"]["replicas"] == 1).then_some(())
    });
    // A node removed from the cluster: its pod is deleted (pod GC) and the
    // RC replaces it elsewhere.
    let on = node_of(&live_pods(&c.k, "app=web")[0]).to_string();
    c.k.run(&["delete", "node", &on]).unwrap();
    c.wait(30, "the replica replaced on a remaining node", || {
        let p = live_pods(&c.k, "app=web");
        (p.len() == 1 && running(&p[0]) && node_of(&p[0]) != on).then_some(())
    });
    // Deleting the RC (background cascade) takes its pod along.
    c.k.run(&["delete", "rc", "web"]).unwrap();
    c.wait(30, "the RC's pods to be garbage collected", || {
        live_pods(&c.k, "app=web").is_empty().then_some(())
    });
}

/// Deleting an owner with `--cascade=orphan` keeps its pods (without the
/// owner reference); `--cascade=foreground` removes the pods before the
/// owner itself is gone.
#[test]
fn cascading_deletion_orphan_and_foreground() {
    let c = Cluster::start(&[], &[], &[("node", 2, &[])]);
    c.k.apply(&RC.replace("replicas: 3", "replicas: 2"));
    c.wait(30, "2 replicas", || {
        (live_pods(&c.k, "app=web").len() == 2).then_some(())
    });
    c.k.run(&["delete", "rc", "web", "--cascade=orphan"])
        .unwrap();
    let orphans = c.wait(30, "pods released by the deleted RC", || {
        let p = live_pods(&c.k, "app=web");
        let released = p.iter().all(|p| {
            p["metadata"]
                .get("ownerReferences")
                .is_none_or(|r| r.as_array().is_some_and(Vec::is_empty))
        });
        (released && c.k.output(&["get", "rc", "web"]).ok()?.status.code() == Some(1)).then_some(p)
    });
    assert_eq!(orphans.len(), 2, "orphaned pods were deleted");
    // A new RC with the same selector adopts them instead of creating more.
    c.k.apply(&RC.replace("replicas: 3", "replicas: 2"));
    c.wait(30, "the orphans adopted", || {
        let p = live_pods(&c.k, "app=web");
        let adopted = p
            .iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicationController");
        (p.len() == 2 && adopted).then_some(())
    });
    let names: BTreeSet<String> = live_pods(&c.k, "app=web")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let before: BTreeSet<String> = orphans
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, before, "the RC made new pods instead of adopting");

    let out =
        c.k.output(&[
            "delete",
            "rc",
            "web",
            "--cascade=foreground",
            "--timeout=60s",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    // kubectl waited for the RC to be gone; foreground means its pods went first.
    assert!(
        live_pods(&c.k, "app=web").is_empty(),
        "pods outlived their foreground-deleted owner"
    );
}
