//! rbac.authorization.k8s.io/v1.

use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::{m, s, Schema};

pub(super) static ROLE: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "rules", &POLICY_RULE).list(),
]);
pub(super) static CLUSTER_ROLE: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "rules", &POLICY_RULE).list(),
    m(3, "aggregationRule", &AGGREGATION_RULE),
]);
static AGGREGATION_RULE: Schema = Schema(&[m(1, "clusterRoleSelectors", &LABEL_SELECTOR).list()]);
static POLICY_RULE: Schema = Schema(&[
    s(1, "verbs").list(),
    s(2, "apiGroups").list(),
    s(3, "resources").list(),
    s(4, "resourceNames").list(),
    s(5, "nonResourceURLs").list(),
]);
pub(super) static ROLE_BINDING: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "subjects", &SUBJECT).list(),
    m(3, "roleRef", &ROLE_REF),
]);
static SUBJECT: Schema = Schema(&[
    s(1, "kind").keep(),
    s(2, "apiGroup"),
    s(3, "name").keep(),
    s(4, "namespace"),
]);
static ROLE_REF: Schema = Schema(&[
    s(1, "apiGroup").keep(),
    s(2, "kind").keep(),
    s(3, "name").keep(),
]);
