//! core/v1 objects other than the pod template.

use super::meta::OBJECT_META;
use super::pod::POD_SPEC;
use super::{b, field, i32, i64, int_or_string, labels, m, s, time, Kind, Schema};

pub(super) static NAMESPACE: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &NAMESPACE_SPEC),
    m(3, "status", &NAMESPACE_STATUS),
]);
static NAMESPACE_SPEC: Schema = Schema(&[s(1, "finalizers").list()]);
static NAMESPACE_STATUS: Schema = Schema(&[s(1, "phase")]);

pub(super) static CONFIG_MAP: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    b(4, "immutable").keep(),
    labels(2, "data"),
    field(3, "binaryData", Kind::BytesMap),
]);

pub(super) static SECRET: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    b(5, "immutable").keep(),
    field(2, "data", Kind::BytesMap),
    labels(4, "stringData"),
    s(3, "type"),
]);

pub(super) static SERVICE_ACCOUNT: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "secrets", &OBJECT_REFERENCE).list(),
    m(3, "imagePullSecrets", &LOCAL_OBJECT_REFERENCE).list(),
    b(4, "automountServiceAccountToken").keep(),
]);

// What `kubectl create token` sends (authentication/v1).
pub(super) static TOKEN_REQUEST: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &TOKEN_REQUEST_SPEC),
]);

static TOKEN_REQUEST_SPEC: Schema = Schema(&[
    s(1, "audiences").list(),
    m(3, "boundObjectRef", &BOUND_OBJECT_REFERENCE),
    i64(4, "expirationSeconds").keep(),
]);

static BOUND_OBJECT_REFERENCE: Schema =
    Schema(&[s(1, "kind"), s(2, "apiVersion"), s(3, "name"), s(4, "uid")]);

static OBJECT_REFERENCE: Schema = Schema(&[
    s(1, "kind"),
    s(2, "namespace"),
    s(3, "name"),
    s(4, "uid"),
    s(5, "apiVersion"),
    s(6, "resourceVersion"),
    s(7, "fieldPath"),
]);
pub(super) static LOCAL_OBJECT_REFERENCE: Schema = Schema(&[s(1, "name")]);

pub(super) static SERVICE: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &SERVICE_SPEC),
    m(3, "status", &SERVICE_STATUS),
]);

static SERVICE_SPEC: Schema = Schema(&[
    m(1, "ports", &SERVICE_PORT).list(),
    labels(2, "selector"),
    s(3, "clusterIP"),
    s(18, "clusterIPs").list(),
    s(4, "type"),
    s(5, "externalIPs").list(),
    s(7, "sessionAffinity"),
    s(8, "loadBalancerIP"),
    s(9, "loadBalancerSourceRanges").list(),
    s(10, "externalName"),
    s(11, "externalTrafficPolicy"),
    i32(12, "healthCheckNodePort"),
    b(13, "publishNotReadyAddresses"),
    m(14, "sessionAffinityConfig", &SESSION_AFFINITY_CONFIG),
    s(19, "ipFamilies").list(),
    s(17, "ipFamilyPolicy").keep(),
    b(20, "allocateLoadBalancerNodePorts").keep(),
    s(21, "loadBalancerClass").keep(),
    s(22, "internalTrafficPolicy").keep(),
    s(23, "trafficDistribution").keep(),
]);

static SERVICE_PORT: Schema = Schema(&[
    s(1, "name"),
    s(2, "protocol"),
    s(6, "appProtocol").keep(),
    i32(3, "port").keep(),
    int_or_string(4, "targetPort"),
    i32(5, "nodePort"),
]);

static SESSION_AFFINITY_CONFIG: Schema = Schema(&[m(1, "clientIP", &CLIENT_IP_CONFIG)]);
static CLIENT_IP_CONFIG: Schema = Schema(&[i32(1, "timeoutSeconds").keep()]);

static SERVICE_STATUS: Schema = Schema(&[m(1, "loadBalancer", &LOAD_BALANCER_STATUS)]);
static LOAD_BALANCER_STATUS: Schema = Schema(&[m(1, "ingress", &LOAD_BALANCER_INGRESS).list()]);
static LOAD_BALANCER_INGRESS: Schema =
    Schema(&[s(1, "ip"), s(2, "hostname"), s(3, "ipMode").keep()]);

pub(super) static POD: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &POD_SPEC),
    m(3, "status", &POD_STATUS),
]);

static POD_STATUS: Schema = Schema(&[
    s(1, "phase"),
    s(3, "message"),
    s(4, "reason"),
    s(5, "hostIP"),
    s(6, "podIP"),
    time(7, "startTime"),
    s(9, "qosClass"),
    s(11, "nominatedNodeName"),
]);
