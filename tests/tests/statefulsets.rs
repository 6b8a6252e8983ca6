//! User stories of StatefulSets, with the real API server, etcd, scheduler,
//! controller-manager, kubectl 1.32 and hollow nodes: members come up in
//! order with stable names and claims, come back as themselves, scale down
//! from the top, and roll updates from the highest ordinal down.

use std::time::Duration;

use harness::hollow::HollowCluster;
use harness::process::wait_for;
use serde_json::Value;

/// Two hollow nodes that keep local-path volumes (as a real agent
/// announces), with the components running as their own users.
struct Cluster(HollowCluster);

impl std::ops::Deref for Cluster {
    type Target = HollowCluster;
    fn deref(&self) -> &HollowCluster {
        &self.0
    }
}

impl Cluster {
    fn start() -> Self {
        let h = HollowCluster::start(2);
        for node in ["hollow-0", "hollow-1"] {
            let dir = format!("kestrel.io/local-path-dir=/var/lib/kestrel-test/{node}/storage");
            h.k.run(&["annotate", "node", node, &dir])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        Cluster(h)
    }

    /// What explains a failure: the pods, claims and the controller's log.
    fn explain(&self) -> String {
        format!(
            "--- pods\n{}\n--- pvc\n{}\n--- sts\n{}\n--- controller-manager\n{}",
            self.k
                .run(&["get", "pods", "-o", "wide", "--show-labels"])
                .unwrap_or_default(),
            self.k.run(&["get", "pvc"]).unwrap_or_default(),
            self.k
                .run(&["get", "sts", "-o", "yaml"])
                .unwrap_or_default(),
            self.cp.log("controller-manager"),
        )
    }

    fn pods(&self) -> Vec<Value> {
        let mut pods: Vec<Value> = self.k.get_json(&["pods", "-l", "app=web"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        pods.sort_by_key(name);
        pods
    }

    /// The names of the live (not terminating) members.
    fn live(&self) -> Vec<String> {
        self.pods()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(name)
            .collect()
    }

    fn pod(&self, name: &str) -> Value {
        self.k.get_json(&["pod", name])
    }

    /// The member by that name, if there is one now: between a deleted
    /// member's removal and its replacement there is none.
    fn member(&self, name: &str) -> Option<Value> {
        let out = self.k.run(&["get", "pod", name, "-o", "json"]).ok()?;
        serde_json::from_str(&out).ok()
    }

    fn wait(&self, what: &str, secs: u64, mut check: impl FnMut() -> bool) {
        let ok = wait_for(Duration::from_secs(secs), || check().then_some(()));
        assert!(ok.is_some(), "{what}\n{}", self.explain());
    }

    fn rollout_status(&self) -> String {
        let out = self
            .k
            .output(&["rollout", "status", "statefulset/web", "--timeout=90s"])
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl rollout status: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.explain()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Each live member's image, by name.
    fn images(&self) -> Vec<(String, String)> {
        self.pods()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| (name(p), image(p)))
            .collect()
    }
}

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn image(p: &Value) -> String {
    p["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn running_and_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// An RFC 3339 time to the second, which orders as text.
fn seconds(t: &str) -> String {
    t.chars().take(19).collect()
}

fn ready_since(p: &Value) -> String {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or("")
        .to_string()
}

const MANIFEST: &str = r#"
apiVersion: v1
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
      nodeSelector: {stateful: "yes"}
      containers:
      - name: c
        image: busybox
        volumeMounts: [{name: www, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: www}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

#[test]
fn a_statefulset_keeps_its_members_names_and_claims_in_order() {
    let c = Cluster::start();
    c.k.apply(MANIFEST);

    // No node takes the members yet, so web-0 stays Pending: web-1 must
    // not appear, even once the controller has seen web-0 (status).
    c.wait("web-0 should be created and counted", 30, || {
        let sts = c.k.get_json(&["sts", "web"]);
        sts["status"]["replicas"] == 1 && sts["status"]["observedGeneration"] == 1
    });
    assert_eq!(c.live(), ["web-0"], "{}", c.explain());
    assert_eq!(c.pod("web-0")["status"]["phase"], "Pending");
    let claim = c.k.get_json(&["pvc", "www-web-0"]);
    assert!(
        claim["metadata"]["ownerReferences"].is_null(),
        "claims are retained by default: {claim}"
    );

    // Once nodes admit them, the members come up one after another.
    for node in ["hollow-0", "hollow-1"] {
        c.k.run(&["label", "node", node, "stateful=yes", "v=1"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = c.rollout_status();
    assert!(out.contains("complete"), "{out}");
    let pods = c.pods();
    assert_eq!(
        pods.iter().map(name).collect::<Vec<_>>(),
        ["web-0", "web-1", "web-2"]
    );
    assert!(pods.iter().all(running_and_ready), "{}", c.explain());
    // Each member was made only after the one below was Ready.
    for pair in pods.windows(2) {
        let created = seconds(
            pair[1]["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or(""),
        );
        assert!(
            created >= seconds(&ready_since(&pair[0])),
            "{} created at {created}, before {} was Ready at {}",
            name(&pair[1]),
            name(&pair[0]),
            ready_since(&pair[0])
        );
    }

    // Stable identity: host name, subdomain, labels, one claim each, Bound.
    let mut volumes = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let n = format!("web-{i}");
        assert_eq!(p["spec"]["hostname"], n.as_str());
        assert_eq!(p["spec"]["subdomain"], "web");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            n.as_str()
        );
        assert_eq!(
            p["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            i.to_string()
        );
        assert!(p["metadata"]["labels"]["controller-revision-hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("web-")));
        let claim = format!("www-web-{i}");
        assert_eq!(
            p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            claim.as_str()
        );
        let mut pvc = Value::Null;
        c.wait(&format!("{claim} should be Bound"), 30, || {
            pvc = c.k.get_json(&["pvc", &claim]);
            pvc["status"]["phase"] == "Bound"
        });
        volumes.push(pvc["spec"]["volumeName"].as_str().unwrap_or("").to_string());
    }
    // The headless Service names each member, which is what the cluster
    // DNS answers `web-N.web.default.svc.cluster.local` from.
    c.wait("the EndpointSlice should name every member", 30, || {
        let slices =
            c.k.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"]);
        let mut hosts: Vec<String> = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["hostname"].as_str().map(str::to_string))
            .collect();
        hosts.sort();
        hosts == ["web-0", "web-1", "web-2"]
    });

    // A deleted member comes back with its name and its claim.
    let old_uid = c.pod("web-0")["metadata"]["uid"].clone();
    c.k.run(&["delete", "pod", "web-0", "--wait=false"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("web-0 should come back as a new pod", 60, || {
        let p =
            c.k.get_json(&["pods", "-l", "statefulset.kubernetes.io/pod-name=web-0"]);
        p["items"]
            .as_array()
            .and_then(|i| i.first())
            .is_some_and(|p| p["metadata"]["uid"] != old_uid && running_and_ready(p))
    });
    let back = c.pod("web-0");
    assert_eq!(
        back["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "www-web-0"
    );
    let pvc = c.k.get_json(&["pvc", "www-web-0"]);
    assert_eq!(pvc["status"]["phase"], "Bound");
    assert_eq!(
        pvc["spec"]["volumeName"],
        volumes[0].as_str(),
        "same volume"
    );

    // Scaling down removes the highest ordinal and keeps its claim.
    c.k.run(&["scale", "statefulset", "web", "--replicas=2"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("web-2 should go", 60, || {
        c.k.get_json(&["pods", "-l", "app=web"])["items"]
            .as_array()
            .is_some_and(|i| i.len() == 2)
    });
    assert_eq!(c.live(), ["web-0", "web-1"]);
    assert_eq!(
        c.k.get_json(&["pvc", "www-web-2"])["status"]["phase"],
        "Bound"
    );
    c.rollout_status();
    // Scaled up again, web-2 gets its old claim back.
    c.k.run(&["scale", "statefulset", "web", "--replicas=3"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.rollout_status();
    assert_eq!(
        c.k.get_json(&["pvc", "www-web-2"])["spec"]["volumeName"],
        volumes[2].as_str()
    );

    // A rolling update replaces the highest ordinal first and waits for it:
    // the new template only fits nodes labelled v=2, so web-2 stays Pending
    // and nothing below it moves.
    let patch = r#"{"spec":{"template":{"spec":{"nodeSelector":{"stateful":"yes","v":"2"},
        "containers":[{"name":"c","image":"busybox:2"}]}}}}"#;
    c.k.run(&["patch", "statefulset", "web", "-p", patch])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("web-2 should be replaced first", 60, || {
        let sts = c.k.get_json(&["sts", "web"]);
        sts["status"]["observedGeneration"] == sts["metadata"]["generation"]
            && sts["status"]["updatedReplicas"] == 1
            && c.live() == ["web-0", "web-1", "web-2"]
    });
    assert_eq!(
        c.images(),
        [
            ("web-0".to_string(), "busybox".to_string()),
            ("web-1".into(), "busybox".into()),
            ("web-2".into(), "busybox:2".into()),
        ],
        "{}",
        c.explain()
    );
    assert_eq!(c.pod("web-2")["status"]["phase"], "Pending");
    for node in ["hollow-0", "hollow-1"] {
        c.k.run(&["label", "node", node, "v=2", "--overwrite"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = c.rollout_status();
    assert!(out.contains("complete"), "{out}");
    assert!(
        c.images().iter().all(|(_, i)| i == "busybox:2"),
        "{}",
        c.explain()
    );
    let sts = c.k.get_json(&["sts", "web"]);
    assert_eq!(
        sts["status"]["currentRevision"],
        sts["status"]["updateRevision"]
    );
    assert_eq!(sts["status"]["updatedReplicas"], 3);
    let history = c.k.run(&["rollout", "history", "statefulset/web"]).unwrap();
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );

    // A partition holds the ordinals below it back, also when recreated.
    c.k.run(&[
        "patch",
        "statefulset",
        "web",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    c.k.run(&["set", "image", "statefulset/web", "c=busybox:3"])
        .unwrap_or_else(|e| panic!("{e}"));
    let out = c.rollout_status();
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let held_uid = c.pod("web-0")["metadata"]["uid"].clone();
    c.k.run(&["delete", "pod", "web-0", "--wait=false"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("web-0 should come back", 60, || {
        c.member("web-0").is_some_and(|p| {
            p["metadata"]["uid"] != held_uid
                && running_and_ready(&p)
                && c.live() == ["web-0", "web-1", "web-2"]
        })
    });
    assert_eq!(
        c.images(),
        [
            ("web-0".to_string(), "busybox:2".to_string()),
            ("web-1".into(), "busybox:2".into()),
            ("web-2".into(), "busybox:3".into()),
        ],
        "{}",
        c.explain()
    );

    // `kubectl rollout undo` patches the previous revision's template back
    // in: busybox:2 again, which comes back as revision 4.
    let out =
        c.k.run(&["rollout", "undo", "statefulset/web"])
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("rolled back"), "{out}");
    let sts = c.k.get_json(&["sts", "web"]);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:2"
    );
    c.rollout_status();
    c.wait("web-2 should be back on busybox:2", 60, || {
        c.images().iter().all(|(_, i)| i == "busybox:2") && c.live().len() == 3
    });
    let history = c.k.run(&["rollout", "history", "statefulset/web"]).unwrap();
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "3", "4"], "{history}");

    // Deleting the set deletes its pods, not its claims.
    c.k.run(&["delete", "statefulset", "web", "--timeout=60s"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("the members should go with their set", 60, || {
        c.k.get_json(&["pods", "-l", "app=web"])["items"]
            .as_array()
            .is_none_or(Vec::is_empty)
    });
    for i in 0..3 {
        let pvc = c.k.get_json(&["pvc", &format!("www-web-{i}")]);
        assert_eq!(pvc["status"]["phase"], "Bound", "{pvc}");
    }
}

#[test]
fn a_parallel_on_delete_statefulset_starts_members_at_once_waits_for_deletions_and_drops_claims() {
    let c = Cluster::start();
    let manifest = MANIFEST.replace(
        "  replicas: 3\n",
        "  replicas: 3\n  podManagementPolicy: Parallel\n  updateStrategy: {type: OnDelete}\n  \
         persistentVolumeClaimRetentionPolicy: {whenScaled: Delete, whenDeleted: Delete}\n",
    );
    c.k.apply(&manifest);

    // Parallel: every member is made at once, though none can run yet.
    c.wait("all three members should be created together", 30, || {
        c.live() == ["web-0", "web-1", "web-2"]
    });
    assert!(
        c.pods().iter().all(|p| p["status"]["phase"] == "Pending"),
        "{}",
        c.explain()
    );
    for node in ["hollow-0", "hollow-1"] {
        c.k.run(&["label", "node", node, "stateful=yes"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // `kubectl rollout status` refuses OnDelete sets: wait for readiness.
    c.wait("every member should be Running and Ready", 60, || {
        let pods = c.pods();
        pods.len() == 3 && pods.iter().all(running_and_ready)
    });
    let claim = c.k.get_json(&["pvc", "www-web-2"]);
    assert_eq!(
        claim["metadata"]["ownerReferences"][0]["kind"], "StatefulSet",
        "Delete on scale-down hands the claim to the set: {claim}"
    );

    // OnDelete: a new template replaces no member until it is deleted.
    let uids = |c: &Cluster| -> Vec<Value> {
        c.pods()
            .iter()
            .map(|p| p["metadata"]["uid"].clone())
            .collect()
    };
    let before = uids(&c);
    c.k.run(&["set", "image", "statefulset/web", "c=busybox:2"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("the controller should see the new template", 30, || {
        let sts = c.k.get_json(&["sts", "web"]);
        sts["status"]["observedGeneration"] == sts["metadata"]["generation"]
            && sts["status"]["updateRevision"] != sts["status"]["currentRevision"]
    });
    assert_eq!(uids(&c), before, "no member was replaced: {}", c.explain());
    assert!(c.images().iter().all(|(_, i)| i == "busybox"));
    c.k.run(&["delete", "pod", "web-1", "--wait=false"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("web-1 should come back on the new template", 60, || {
        c.member("web-1")
            .is_some_and(|p| p["metadata"]["uid"] != before[1] && running_and_ready(&p))
    });
    assert_eq!(
        c.images(),
        [
            ("web-0".to_string(), "busybox".to_string()),
            ("web-1".into(), "busybox:2".into()),
            ("web-2".into(), "busybox".into()),
        ]
    );

    // whenScaled: Delete removes the claim of the member scaled away;
    // whenDeleted: Delete removes the rest with the set.
    let claims = |c: &Cluster| -> Vec<String> {
        let mut names: Vec<String> = c.k.get_json(&["pvc"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(name)
            .collect();
        names.sort();
        names
    };
    c.k.run(&["scale", "statefulset", "web", "--replicas=2"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("www-web-2 should go with web-2", 60, || {
        claims(&c) == ["www-web-0", "www-web-1"]
    });
    c.k.run(&["delete", "statefulset", "web", "--timeout=60s"])
        .unwrap_or_else(|e| panic!("{e}"));
    c.wait("the claims should go with the set", 60, || {
        claims(&c).is_empty()
    });
}
