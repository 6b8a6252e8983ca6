//! meta/v1: object metadata, owner references, label selectors.

use super::{b, i64, labels, m, s, time, Schema};

pub(super) static OBJECT_META: Schema = Schema(&[
    s(1, "name"),
    s(2, "generateName"),
    s(3, "namespace"),
    s(4, "selfLink"),
    s(5, "uid"),
    s(6, "resourceVersion"),
    i64(7, "generation"),
    time(8, "creationTimestamp"),
    time(9, "deletionTimestamp"),
    i64(10, "deletionGracePeriodSeconds").keep(),
    labels(11, "labels"),
    labels(12, "annotations"),
    m(13, "ownerReferences", &OWNER_REFERENCE).list(),
    s(14, "finalizers").list(),
]);

static OWNER_REFERENCE: Schema = Schema(&[
    s(5, "apiVersion").keep(),
    s(1, "kind").keep(),
    s(3, "name").keep(),
    s(4, "uid").keep(),
    b(6, "controller").keep(),
    b(7, "blockOwnerDeletion").keep(),
]);

pub(super) static LABEL_SELECTOR: Schema = Schema(&[
    labels(1, "matchLabels"),
    m(2, "matchExpressions", &LABEL_SELECTOR_REQUIREMENT).list(),
]);

static LABEL_SELECTOR_REQUIREMENT: Schema = Schema(&[
    s(1, "key").keep(),
    s(2, "operator").keep(),
    s(3, "values").list(),
]);
