//! batch/v1.

use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::pod::POD_TEMPLATE_SPEC;
use super::{b, i32, i64, m, s, time, Schema};

pub(super) static JOB: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &JOB_SPEC),
    m(3, "status", &JOB_STATUS),
]);

static JOB_SPEC: Schema = Schema(&[
    i32(1, "parallelism").keep(),
    i32(2, "completions").keep(),
    i64(3, "activeDeadlineSeconds").keep(),
    i32(7, "backoffLimit").keep(),
    i32(12, "backoffLimitPerIndex").keep(),
    i32(13, "maxFailedIndexes").keep(),
    m(4, "selector", &LABEL_SELECTOR),
    b(5, "manualSelector").keep(),
    m(6, "template", &POD_TEMPLATE_SPEC),
    i32(8, "ttlSecondsAfterFinished").keep(),
    s(9, "completionMode").keep(),
    b(10, "suspend").keep(),
    s(14, "podReplacementPolicy").keep(),
    s(15, "managedBy").keep(),
]);

static JOB_STATUS: Schema = Schema(&[
    time(2, "startTime"),
    time(3, "completionTime"),
    i32(4, "active"),
    i32(5, "succeeded"),
    i32(6, "failed"),
    i32(11, "terminating").keep(),
    s(7, "completedIndexes"),
    s(10, "failedIndexes").keep(),
    i32(9, "ready").keep(),
]);

pub(super) static CRON_JOB: Schema =
    Schema(&[m(1, "metadata", &OBJECT_META), m(2, "spec", &CRON_JOB_SPEC)]);

static CRON_JOB_SPEC: Schema = Schema(&[
    s(1, "schedule").keep(),
    s(8, "timeZone").keep(),
    i64(2, "startingDeadlineSeconds").keep(),
    s(3, "concurrencyPolicy"),
    b(4, "suspend").keep(),
    m(5, "jobTemplate", &JOB_TEMPLATE_SPEC),
    i32(6, "successfulJobsHistoryLimit").keep(),
    i32(7, "failedJobsHistoryLimit").keep(),
]);

static JOB_TEMPLATE_SPEC: Schema =
    Schema(&[m(1, "metadata", &OBJECT_META), m(2, "spec", &JOB_SPEC)]);
