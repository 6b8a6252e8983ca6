//! The StatefulSet controller's decisions and identities, as pure
//! functions of its members.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;
use serde_json::json;

use super::identity;
use super::plan::{self, Create, Member, Plan, Policy};

fn policy(replicas: i32) -> Policy {
    Policy {
        replicas,
        parallel: false,
        rolling: true,
        partition: 0,
        current_revision: "web-1".into(),
        update_revision: "web-1".into(),
    }
}

/// A Running and Ready member at `revision`.
fn up(ordinal: i32, revision: &str) -> Member {
    Member {
        ordinal: Some(ordinal),
        name: format!("web-{ordinal}"),
        revision: revision.into(),
        healthy: true,
        available: true,
        ..Member::default()
    }
}

fn pending(ordinal: i32, revision: &str) -> Member {
    Member {
        healthy: false,
        available: false,
        ..up(ordinal, revision)
    }
}

fn create(ordinal: i32, revision: &str) -> Create {
    Create {
        ordinal,
        revision: revision.into(),
    }
}

#[test]
fn ordered_sets_create_one_member_once_the_ones_below_are_ready() {
    let p = policy(3);
    assert_eq!(
        plan::decide(&p, &[]).create,
        [create(0, "web-1")],
        "only web-0 first"
    );
    assert!(
        plan::decide(&p, &[pending(0, "web-1")]).is_empty(),
        "web-1 waits while web-0 is not Ready"
    );
    assert_eq!(
        plan::decide(&p, &[up(0, "web-1")]).create,
        [create(1, "web-1")]
    );
    // A gap below is filled before anything above moves.
    assert_eq!(
        plan::decide(&p, &[up(1, "web-1"), up(2, "web-1")]).create,
        [create(0, "web-1")]
    );
}

#[test]
fn parallel_sets_create_and_delete_everything_at_once() {
    let p = Policy {
        parallel: true,
        ..policy(3)
    };
    assert_eq!(
        plan::decide(&p, &[pending(0, "web-1")]).create,
        [create(1, "web-1"), create(2, "web-1")]
    );
    let down = Policy { replicas: 1, ..p };
    let all = [up(0, "web-1"), pending(1, "web-1"), up(2, "web-1")];
    assert_eq!(plan::decide(&down, &all).delete, ["web-2", "web-1"]);
}

#[test]
fn ordered_scale_down_removes_the_highest_ordinal_one_at_a_time() {
    let p = policy(1);
    let all = [up(0, "web-1"), up(1, "web-1"), up(2, "web-1")];
    assert_eq!(plan::decide(&p, &all).delete, ["web-2"]);
    let mut going = up(2, "web-1");
    going.terminating = true;
    assert!(
        plan::decide(&p, &[up(0, "web-1"), up(1, "web-1"), going]).is_empty(),
        "web-1 waits until web-2 is gone"
    );
    // Nothing leaves while a member that stays is unhealthy.
    assert!(plan::decide(&p, &[pending(0, "web-1"), up(1, "web-1")]).is_empty());
}

#[test]
fn a_finished_member_is_deleted_to_be_made_again() {
    let mut failed = up(0, "web-1");
    failed.healthy = false;
    failed.finished = true;
    let decided = plan::decide(&policy(2), &[failed, up(1, "web-1")]);
    assert_eq!(
        decided,
        Plan {
            create: vec![],
            delete: vec!["web-0".into()]
        }
    );
}

#[test]
fn rolling_updates_go_from_the_highest_ordinal_down_one_at_a_time() {
    let p = Policy {
        update_revision: "web-2".into(),
        ..policy(3)
    };
    let old = [up(0, "web-1"), up(1, "web-1"), up(2, "web-1")];
    assert_eq!(plan::decide(&p, &old).delete, ["web-2"]);
    // web-2 is back at the new revision but not Ready: web-1 waits.
    let mid = [up(0, "web-1"), up(1, "web-1"), pending(2, "web-2")];
    assert!(plan::decide(&p, &mid).is_empty());
    let next = [up(0, "web-1"), up(1, "web-1"), up(2, "web-2")];
    assert_eq!(plan::decide(&p, &next).delete, ["web-1"]);
    // A member recreated during the update gets the new template.
    assert_eq!(
        plan::decide(&p, &[up(0, "web-1"), up(2, "web-2")]).create,
        [create(1, "web-2")]
    );
}

#[test]
fn a_partition_holds_lower_ordinals_at_the_current_revision() {
    let p = Policy {
        partition: 2,
        update_revision: "web-2".into(),
        ..policy(3)
    };
    let done_above = [up(0, "web-1"), up(1, "web-1"), up(2, "web-2")];
    assert!(plan::decide(&p, &done_above).is_empty());
    // Deleted below the partition, a member comes back as it was.
    assert_eq!(
        plan::decide(&p, &[up(1, "web-1"), up(2, "web-2")]).create,
        [create(0, "web-1")]
    );
    let s = plan::status(&p, &done_above);
    assert_eq!((s.current, s.updated, s.ready), (2, 1, 3));
    assert_eq!(s.current_revision, "web-1", "the rollout is not complete");
}

#[test]
fn on_delete_replaces_nothing_by_itself() {
    let p = Policy {
        rolling: false,
        partition: 0,
        update_revision: "web-2".into(),
        ..policy(2)
    };
    assert!(plan::decide(&p, &[up(0, "web-1"), up(1, "web-1")]).is_empty());
    assert_eq!(
        plan::decide(&p, &[up(0, "web-1")]).create,
        [create(1, "web-2")],
        "a deleted member comes back with the new template"
    );
}

#[test]
fn the_update_revision_becomes_current_once_every_member_runs_it() {
    let p = Policy {
        update_revision: "web-2".into(),
        ..policy(2)
    };
    let s = plan::status(&p, &[up(0, "web-1"), up(1, "web-2")]);
    assert_eq!((s.replicas, s.ready, s.current, s.updated), (2, 2, 1, 1));
    assert_eq!(s.current_revision, "web-1");
    let s = plan::status(&p, &[up(0, "web-2"), pending(1, "web-2")]);
    assert_eq!(s.current_revision, "web-1", "not while one is unready");
    let s = plan::status(&p, &[up(0, "web-2"), up(1, "web-2")]);
    assert_eq!((s.current, s.updated, s.available), (2, 2, 2));
    assert_eq!(s.current_revision, "web-2");
}

fn set(extra: serde_json::Value) -> StatefulSet {
    let mut spec = json!({
        "serviceName": "web",
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}],
                              "volumes": [{"name": "www", "emptyDir": {}}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "www"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default", "uid": "set-uid"},
        "spec": spec,
    }))
    .expect("a statefulset")
}

#[test]
fn only_canonical_names_are_members() {
    assert_eq!(identity::ordinal("web", "web-0"), Some(0));
    assert_eq!(identity::ordinal("web", "web-12"), Some(12));
    for other in ["web-01", "web-", "web-x", "webs-1", "web-1-2", "web"] {
        assert_eq!(identity::ordinal("web", other), None, "{other}");
    }
}

#[test]
fn a_member_has_a_stable_name_host_and_claim() {
    let s = set(json!({}));
    let template = s.spec.as_ref().map(|s| s.template.clone()).unwrap();
    let pod = identity::pod_for(&s, &template, "web-abc", 2);
    assert_eq!(pod.name_any(), "web-2");
    let labels = pod.labels();
    assert_eq!(labels[identity::POD_NAME_LABEL], "web-2");
    assert_eq!(labels[identity::POD_INDEX_LABEL], "2");
    assert_eq!(labels["controller-revision-hash"], "web-abc");
    assert_eq!(labels["app"], "web");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-2"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 1, "the claim replaces the template volume");
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("www-web-2")
    );
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("set-uid", Some(true))
    );

    let claims = identity::claims_for(&s, 2);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].name_any(), "www-web-2");
    assert_eq!(claims[0].labels()["app"], "web");
    assert!(
        claims[0].metadata.owner_references.is_none(),
        "retained claims have no owner"
    );
}

#[test]
fn the_retention_policy_decides_who_owns_a_claim() {
    let s = set(json!({}));
    let pod = identity::pod_for(&s, &Default::default(), "r", 3);
    assert!(identity::claim_owners(&s, true, Some(&pod)).is_empty());
    let s = set(json!({"persistentVolumeClaimRetentionPolicy":
        {"whenDeleted": "Delete", "whenScaled": "Delete"}}));
    let mut pod = identity::pod_for(&s, &Default::default(), "r", 3);
    pod.metadata.uid = Some("pod-uid".into());
    let uids = |refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>| {
        refs.into_iter().map(|r| r.uid).collect::<Vec<_>>()
    };
    assert_eq!(
        uids(identity::claim_owners(&s, false, Some(&pod))),
        ["set-uid"]
    );
    assert_eq!(
        uids(identity::claim_owners(&s, true, Some(&pod))),
        ["pod-uid"],
        "a member beyond replicas takes its claim along, and the set must not hold it back"
    );
}
