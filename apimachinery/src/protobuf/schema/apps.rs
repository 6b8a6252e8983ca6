//! apps/v1.

use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::pod::POD_TEMPLATE_SPEC;
use super::{b, i32, i64, int_or_string, m, s, Schema};

pub(super) static DEPLOYMENT: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &DEPLOYMENT_SPEC),
    m(3, "status", &DEPLOYMENT_STATUS),
]);

static DEPLOYMENT_SPEC: Schema = Schema(&[
    i32(1, "replicas").keep(),
    m(2, "selector", &LABEL_SELECTOR),
    m(3, "template", &POD_TEMPLATE_SPEC),
    m(4, "strategy", &DEPLOYMENT_STRATEGY),
    i32(5, "minReadySeconds"),
    i32(6, "revisionHistoryLimit").keep(),
    b(7, "paused"),
    i32(9, "progressDeadlineSeconds").keep(),
]);

static DEPLOYMENT_STRATEGY: Schema = Schema(&[
    s(1, "type"),
    m(2, "rollingUpdate", &ROLLING_UPDATE_DEPLOYMENT),
]);
static ROLLING_UPDATE_DEPLOYMENT: Schema = Schema(&[
    int_or_string(1, "maxUnavailable"),
    int_or_string(2, "maxSurge"),
]);

static DEPLOYMENT_STATUS: Schema = Schema(&[
    i64(1, "observedGeneration"),
    i32(2, "replicas"),
    i32(3, "updatedReplicas"),
    i32(7, "readyReplicas"),
    i32(4, "availableReplicas"),
    i32(5, "unavailableReplicas"),
    i32(9, "terminatingReplicas").keep(),
    i32(8, "collisionCount").keep(),
]);
