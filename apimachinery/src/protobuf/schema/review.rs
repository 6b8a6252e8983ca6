//! authorization.k8s.io/v1 and authentication.k8s.io/v1: the review kinds.

use super::meta::OBJECT_META;
use super::{m, s, Schema};

pub(super) static SELF_SUBJECT_ACCESS_REVIEW: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &SELF_SUBJECT_ACCESS_REVIEW_SPEC),
]);
static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Schema = Schema(&[
    m(1, "resourceAttributes", &RESOURCE_ATTRIBUTES),
    m(2, "nonResourceAttributes", &NON_RESOURCE_ATTRIBUTES),
]);
static RESOURCE_ATTRIBUTES: Schema = Schema(&[
    s(1, "namespace"),
    s(2, "verb"),
    s(3, "group"),
    s(4, "version"),
    s(5, "resource"),
    s(6, "subresource"),
    s(7, "name"),
]);
static NON_RESOURCE_ATTRIBUTES: Schema = Schema(&[s(1, "path"), s(2, "verb")]);
pub(super) static SUBJECT_ACCESS_REVIEW: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &SUBJECT_ACCESS_REVIEW_SPEC),
]);
static SUBJECT_ACCESS_REVIEW_SPEC: Schema = Schema(&[
    m(1, "resourceAttributes", &RESOURCE_ATTRIBUTES),
    m(2, "nonResourceAttributes", &NON_RESOURCE_ATTRIBUTES),
    s(3, "user"),
    s(4, "groups").list(),
    s(6, "uid"),
]);
pub(super) static SELF_SUBJECT_RULES_REVIEW: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &SELF_SUBJECT_RULES_REVIEW_SPEC),
]);
static SELF_SUBJECT_RULES_REVIEW_SPEC: Schema = Schema(&[s(1, "namespace")]);
pub(super) static SELF_SUBJECT_REVIEW: Schema = Schema(&[m(1, "metadata", &OBJECT_META)]);
