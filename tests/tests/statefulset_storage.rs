//! A StatefulSet on two real nodes, as a database's manifest uses one:
//! each member gets a local-path volume on the node it lands on and a
//! stable DNS name through the headless Service, and a deleted member
//! comes back with the same name, the same DNS name and the data it wrote,
//! which also outlives a restart of its node's agent.

use std::time::Duration;

use harness::networked::NetCluster;
use harness::process::wait_for;

struct Cluster(NetCluster);

impl std::ops::Deref for Cluster {
    type Target = NetCluster;
    fn deref(&self) -> &NetCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut NetCluster {
        &mut self.0
    }
}

impl Cluster {
    fn start(nodes: usize) -> Self {
        Self(NetCluster::start(nodes))
    }

    fn logs(&self) -> String {
        format!(
            "{}--- pods\n{}\n--- claims\n{}",
            self.0.logs(30),
            self.k
                .run(&["get", "pods", "-o", "wide"])
                .unwrap_or_default(),
            self.k.run(&["get", "pvc,pv"]).unwrap_or_default()
        )
    }

    /// `phase uid podIP nodeName` of `pod`, once it runs and is ready.
    fn running(&self, pod: &str) -> Option<(String, String, String)> {
        let out = self
            .k
            .run(&[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.phase} {.metadata.uid} {.status.podIP} {.spec.nodeName} {.status.containerStatuses[0].ready}",
            ])
            .ok()?;
        let f: Vec<&str> = out.split_whitespace().collect();
        (f.len() == 5 && f[0] == "Running" && f[4] == "true")
            .then(|| (f[1].to_string(), f[2].to_string(), f[3].to_string()))
    }

    fn exec(&self, pod: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.k.run(&args)
    }
}

const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: main
        image: busybox
        command: [sh, -c, 'hostname >> /data/starts && exec httpd -f -p 80 -h /data']
        readinessProbe:
          exec: {command: [cat, /data/starts]}
          periodSeconds: 1
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 16Mi}}
"#;

#[test]
fn a_deleted_member_returns_with_its_name_dns_name_and_data() {
    let mut c = Cluster::start(2);
    c.k.apply(MANIFEST);
    let mut members = Vec::new();
    for i in 0..3 {
        let pod = format!("web-{i}");
        let got = wait_for(Duration::from_secs(180), || c.running(&pod))
            .unwrap_or_else(|| panic!("{pod} did not become ready\n{}", c.logs()));
        members.push(got);
    }
    for i in 0..3 {
        let phase =
            c.k.run(&[
                "get",
                "pvc",
                &format!("data-web-{i}"),
                "-o",
                "jsonpath={.status.phase}",
            ])
            .unwrap_or_default();
        assert_eq!(phase, "Bound", "claim of web-{i}\n{}", c.logs());
    }

    // Stable DNS: web-1.web.default.svc.cluster.local from web-0.
    let name = "web-1.web.default.svc.cluster.local";
    let resolves_to = |ip: &str| {
        wait_for(Duration::from_secs(30), || {
            let out = c.exec("web-0", &["nslookup", name]).ok()?;
            out.contains(&format!("Address: {ip}")).then_some(out)
        })
    };
    let (uid, ip, node) = members[1].clone();
    assert!(
        resolves_to(&ip).is_some(),
        "{name} does not resolve to web-1's address {ip}:\n{}",
        c.exec("web-0", &["nslookup", name])
            .unwrap_or_else(|e| e.to_string())
    );

    // web-1 writes to its volume, then is deleted.
    c.exec(
        "web-1",
        &["sh", "-c", "echo kept-across-restarts > /data/marker"],
    )
    .unwrap();
    c.k.run(&["delete", "pod", "web-1", "--wait=false"])
        .unwrap();
    let back = wait_for(Duration::from_secs(180), || {
        c.running("web-1").filter(|(u, _, _)| *u != uid)
    })
    .unwrap_or_else(|| panic!("web-1 did not come back\n{}", c.logs()));
    let (_, new_ip, new_node) = back;
    assert_eq!(
        new_node, node,
        "a member whose local volume is on {node} moved to {new_node}"
    );
    let marker = c.exec("web-1", &["cat", "/data/marker"]).unwrap();
    assert_eq!(marker.trim(), "kept-across-restarts");
    let starts = c.exec("web-1", &["cat", "/data/starts"]).unwrap();
    assert_eq!(
        starts.lines().filter(|l| l.trim() == "web-1").count(),
        2,
        "the volume did not see both starts of web-1: {starts:?}"
    );
    assert!(
        resolves_to(&new_ip).is_some(),
        "{name} does not follow web-1 to its new address {new_ip}"
    );
    // The node's agent restarts: the member keeps running with its data.
    let at = c
        .nodes
        .iter()
        .position(|n| n.name == node)
        .expect("web-1's node is one of ours");
    c.nodes[at].proc = None;
    c.nodes[at].launch();
    let after = wait_for(Duration::from_secs(120), || {
        let out = c.exec("web-1", &["cat", "/data/marker"]).ok()?;
        (out.trim() == "kept-across-restarts").then_some(())
    });
    assert!(
        after.is_some(),
        "web-1's data is gone after its agent restarted\n{}",
        c.logs()
    );

    // Another member's volume is its own.
    let other = c.exec("web-0", &["cat", "/data/starts"]).unwrap();
    assert_eq!(other.trim(), "web-0", "web-0's volume: {other:?}");
}
