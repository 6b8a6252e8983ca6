//! What a StatefulSet does next, as a pure function of its members: which
//! ordinals to create (and at which revision), which pods to delete, and
//! the status counts. `OrderedReady` moves one member at a time, in
//! ordinal order up and in reverse down; `Parallel` creates and deletes
//! all at once. Rolling updates replace one member at a time from the
//! highest ordinal down to the partition.

use std::collections::BTreeMap;

/// One pod of the set, as the decisions see it.
#[derive(Clone, Debug, Default)]
pub struct Member {
    /// Its ordinal; None for a pod whose name is not `<set>-<ordinal>`.
    pub ordinal: Option<i32>,
    pub name: String,
    /// The revision (`controller-revision-hash`) it was made from.
    pub revision: String,
    pub terminating: bool,
    /// Succeeded or Failed: it will not run again and is replaced.
    pub finished: bool,
    /// Running and Ready.
    pub healthy: bool,
    /// Ready for at least minReadySeconds.
    pub available: bool,
}

/// The spec and history the decisions follow.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub replicas: i32,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// `updateStrategy: RollingUpdate` (else OnDelete).
    pub rolling: bool,
    /// Ordinals below this keep the current revision.
    pub partition: i32,
    pub current_revision: String,
    pub update_revision: String,
}

/// A member to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    pub ordinal: i32,
    /// The revision whose template it is made from.
    pub revision: String,
}

/// What to do in this sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<Create>,
    pub delete: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

/// The revision a new member `ordinal` gets: members below the partition
/// of a rolling update stay at the current revision, every other one (and
/// every member under OnDelete) gets the update revision.
pub fn revision_for(policy: &Policy, ordinal: i32) -> String {
    if policy.rolling && ordinal < policy.partition {
        policy.current_revision.clone()
    } else {
        policy.update_revision.clone()
    }
}

/// The next steps for a set whose pods are `members`.
pub fn decide(policy: &Policy, members: &[Member]) -> Plan {
    let mut plan = Plan::default();
    let replicas = policy.replicas.max(0);
    let ordered = !policy.parallel;
    let in_range: BTreeMap<i32, &Member> = members
        .iter()
        .filter_map(|m| {
            m.ordinal
                .filter(|o| (0..replicas).contains(o))
                .map(|o| (o, m))
        })
        .collect();
    let mut condemned: Vec<&Member> = members
        .iter()
        .filter(|m| m.ordinal.is_none_or(|o| o >= replicas || o < 0))
        .collect();
    // Highest ordinal first; pods without one after every real member.
    condemned.sort_by_key(|m| std::cmp::Reverse(m.ordinal.unwrap_or(-1)));

    // Members that should exist, lowest first. Under OrderedReady the walk
    // stops at the first member that is missing, going, or not yet Running
    // and Ready: ordinal i only appears once 0..i-1 are all healthy.
    for ordinal in 0..replicas {
        let blocked = match in_range.get(&ordinal) {
            None => {
                plan.create.push(Create {
                    ordinal,
                    revision: revision_for(policy, ordinal),
                });
                true
            }
            Some(m) if m.terminating => true,
            Some(m) if m.finished => {
                // Deleted now, made again once it is gone.
                plan.delete.push(m.name.clone());
                true
            }
            Some(m) => !m.healthy,
        };
        if blocked && ordered {
            return plan;
        }
    }

    // Members beyond `replicas`, highest first; one at a time when ordered,
    // waiting for each to be gone before the next.
    for m in condemned {
        if m.terminating {
            if ordered {
                return plan;
            }
            continue;
        }
        plan.delete.push(m.name.clone());
        if ordered {
            return plan;
        }
    }

    if !policy.rolling || !plan.is_empty() {
        return plan;
    }
    // Rolling update: from the highest ordinal down to the partition, one
    // member at a time, each replaced only once those above it are back
    // and healthy.
    let floor = policy.partition.clamp(0, replicas);
    for ordinal in (floor..replicas).rev() {
        let Some(m) = in_range.get(&ordinal) else {
            return plan;
        };
        if m.revision != policy.update_revision && !m.terminating {
            plan.delete.push(m.name.clone());
            return plan;
        }
        if m.terminating || !m.healthy {
            return plan;
        }
    }
    plan
}

/// The counts and revisions `status` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub current: i32,
    pub updated: i32,
    pub current_revision: String,
    pub update_revision: String,
}

/// The status of a set whose pods are `members`. Once every member runs
/// the update revision and is ready, that revision becomes the current
/// one: the rollout is complete.
pub fn status(policy: &Policy, members: &[Member]) -> Status {
    let mut s = Status {
        current_revision: policy.current_revision.clone(),
        update_revision: policy.update_revision.clone(),
        ..Status::default()
    };
    for m in members {
        s.replicas += 1;
        if m.terminating {
            continue;
        }
        if m.healthy {
            s.ready += 1;
        }
        if m.healthy && m.available {
            s.available += 1;
        }
        if m.revision == policy.current_revision {
            s.current += 1;
        }
        if m.revision == policy.update_revision {
            s.updated += 1;
        }
    }
    if s.updated == s.replicas && s.ready == s.replicas {
        s.current_revision = s.update_revision.clone();
        s.current = s.updated;
    }
    s
}
