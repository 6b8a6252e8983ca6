//! Field tables for the kinds kubectl creates, transcribed from the upstream
//! `generated.proto` files (k8s.io/api core/v1, apps/v1, batch/v1 and
//! k8s.io/apimachinery meta/v1). Numbers must match upstream exactly: a wrong
//! number silently moves data to the wrong JSON field.
//!
//! Fields missing here are skipped on decode, so an entry is only needed for
//! data a client can plausibly send when creating an object.

#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Str,
    Int32,
    Int64,
    Bool,
    Message(&'static Schema),
    /// Go embeds the struct with `json:",inline"`, so its fields belong to the
    /// parent JSON object even though protobuf nests them.
    Inline(&'static Schema),
    StringMap,
    BytesMap,
    QuantityMap,
    Quantity,
    IntOrString,
    Time,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    pub number: u32,
    pub name: &'static str,
    pub kind: Kind,
    pub repeated: bool,
    /// gogo-protobuf writes every non-pointer scalar even when it is zero, while
    /// the JSON tags say `omitempty`; zeros are dropped unless this is set. It is
    /// set for Go pointer fields (a zero on the wire was chosen by the client)
    /// and for fields whose JSON tag has no `omitempty`.
    pub keep_zero: bool,
}

#[derive(Debug)]
pub(super) struct Schema(pub &'static [Field]);

impl Schema {
    pub fn field(&self, number: u32) -> Option<&Field> {
        self.0.iter().find(|f| f.number == number)
    }
}

const fn field(number: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: false,
        keep_zero: false,
    }
}

impl Field {
    const fn list(self) -> Self {
        Field {
            repeated: true,
            ..self
        }
    }
    const fn keep(self) -> Self {
        Field {
            keep_zero: true,
            ..self
        }
    }
}

const fn s(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::Str)
}
const fn i32(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::Int32)
}
const fn i64(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::Int64)
}
const fn b(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::Bool)
}
const fn m(n: u32, name: &'static str, schema: &'static Schema) -> Field {
    field(n, name, Kind::Message(schema))
}
const fn inline(n: u32, name: &'static str, schema: &'static Schema) -> Field {
    field(n, name, Kind::Inline(schema))
}
const fn labels(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::StringMap)
}
const fn quantities(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::QuantityMap)
}
const fn int_or_string(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::IntOrString)
}
const fn time(n: u32, name: &'static str) -> Field {
    field(n, name, Kind::Time)
}

/// The schema for the top-level message of `apiVersion`/`kind`, if known.
pub(super) fn for_kind(api_version: &str, kind: &str) -> Option<&'static Schema> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Secret") => &SECRET,
        ("v1", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("authentication.k8s.io/v1", "TokenRequest") => &TOKEN_REQUEST,
        ("v1", "Service") => &SERVICE,
        ("v1", "Pod") => &POD,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        ("batch/v1", "Job") => &JOB,
        ("batch/v1", "CronJob") => &CRON_JOB,
        ("rbac.authorization.k8s.io/v1", "Role") => &ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => &CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => &ROLE_BINDING,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => &SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview") => &SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => &SELF_SUBJECT_RULES_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => &SELF_SUBJECT_REVIEW,
        _ => return None,
    })
}

// meta/v1

static OBJECT_META: Schema = Schema(&[
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

static LABEL_SELECTOR: Schema = Schema(&[
    labels(1, "matchLabels"),
    m(2, "matchExpressions", &LABEL_SELECTOR_REQUIREMENT).list(),
]);

static LABEL_SELECTOR_REQUIREMENT: Schema = Schema(&[
    s(1, "key").keep(),
    s(2, "operator").keep(),
    s(3, "values").list(),
]);

// core/v1 objects

static NAMESPACE: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &NAMESPACE_SPEC),
    m(3, "status", &NAMESPACE_STATUS),
]);
static NAMESPACE_SPEC: Schema = Schema(&[s(1, "finalizers").list()]);
static NAMESPACE_STATUS: Schema = Schema(&[s(1, "phase")]);

static CONFIG_MAP: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    b(4, "immutable").keep(),
    labels(2, "data"),
    field(3, "binaryData", Kind::BytesMap),
]);

static SECRET: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    b(5, "immutable").keep(),
    field(2, "data", Kind::BytesMap),
    labels(4, "stringData"),
    s(3, "type"),
]);

static SERVICE_ACCOUNT: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "secrets", &OBJECT_REFERENCE).list(),
    m(3, "imagePullSecrets", &LOCAL_OBJECT_REFERENCE).list(),
    b(4, "automountServiceAccountToken").keep(),
]);

// What `kubectl create token` sends (authentication/v1).
static TOKEN_REQUEST: Schema = Schema(&[
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
static LOCAL_OBJECT_REFERENCE: Schema = Schema(&[s(1, "name")]);

static SERVICE: Schema = Schema(&[
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

static POD: Schema = Schema(&[
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

// core/v1 pod template

static POD_TEMPLATE_SPEC: Schema =
    Schema(&[m(1, "metadata", &OBJECT_META), m(2, "spec", &POD_SPEC)]);

static POD_SPEC: Schema = Schema(&[
    m(1, "volumes", &VOLUME).list(),
    m(20, "initContainers", &CONTAINER).list(),
    m(2, "containers", &CONTAINER).list(),
    s(3, "restartPolicy"),
    i64(4, "terminationGracePeriodSeconds").keep(),
    i64(5, "activeDeadlineSeconds").keep(),
    s(6, "dnsPolicy"),
    labels(7, "nodeSelector"),
    s(8, "serviceAccountName"),
    s(9, "serviceAccount"),
    b(21, "automountServiceAccountToken").keep(),
    s(10, "nodeName"),
    b(11, "hostNetwork"),
    b(12, "hostPID"),
    b(13, "hostIPC"),
    b(27, "shareProcessNamespace").keep(),
    m(14, "securityContext", &POD_SECURITY_CONTEXT),
    m(15, "imagePullSecrets", &LOCAL_OBJECT_REFERENCE).list(),
    s(16, "hostname"),
    s(17, "subdomain"),
    s(19, "schedulerName"),
    m(22, "tolerations", &TOLERATION).list(),
    s(24, "priorityClassName"),
    i32(25, "priority").keep(),
    s(29, "runtimeClassName").keep(),
    b(30, "enableServiceLinks").keep(),
    s(31, "preemptionPolicy").keep(),
    quantities(32, "overhead"),
    b(35, "setHostnameAsFQDN").keep(),
    b(37, "hostUsers").keep(),
]);

static POD_SECURITY_CONTEXT: Schema = Schema(&[
    i64(2, "runAsUser").keep(),
    i64(6, "runAsGroup").keep(),
    b(3, "runAsNonRoot").keep(),
    i64(4, "supplementalGroups").list(),
    i64(5, "fsGroup").keep(),
    s(9, "fsGroupChangePolicy").keep(),
    m(10, "seccompProfile", &SECCOMP_PROFILE),
]);

static TOLERATION: Schema = Schema(&[
    s(1, "key"),
    s(2, "operator"),
    s(3, "value"),
    s(4, "effect"),
    i64(5, "tolerationSeconds").keep(),
]);

static VOLUME: Schema = Schema(&[
    s(1, "name").keep(),
    inline(2, "volumeSource", &VOLUME_SOURCE),
]);

static VOLUME_SOURCE: Schema = Schema(&[
    m(1, "hostPath", &HOST_PATH_VOLUME_SOURCE),
    m(2, "emptyDir", &EMPTY_DIR_VOLUME_SOURCE),
    m(6, "secret", &SECRET_VOLUME_SOURCE),
    m(10, "persistentVolumeClaim", &PVC_VOLUME_SOURCE),
    m(19, "configMap", &CONFIG_MAP_VOLUME_SOURCE),
]);

static HOST_PATH_VOLUME_SOURCE: Schema = Schema(&[s(1, "path").keep(), s(2, "type").keep()]);
static EMPTY_DIR_VOLUME_SOURCE: Schema =
    Schema(&[s(1, "medium"), field(2, "sizeLimit", Kind::Quantity)]);
static PVC_VOLUME_SOURCE: Schema = Schema(&[s(1, "claimName").keep(), b(2, "readOnly")]);

static SECRET_VOLUME_SOURCE: Schema = Schema(&[
    s(1, "secretName"),
    m(2, "items", &KEY_TO_PATH).list(),
    i32(3, "defaultMode").keep(),
    b(4, "optional").keep(),
]);

static CONFIG_MAP_VOLUME_SOURCE: Schema = Schema(&[
    inline(1, "localObjectReference", &LOCAL_OBJECT_REFERENCE),
    m(2, "items", &KEY_TO_PATH).list(),
    i32(3, "defaultMode").keep(),
    b(4, "optional").keep(),
]);

static KEY_TO_PATH: Schema = Schema(&[
    s(1, "key").keep(),
    s(2, "path").keep(),
    i32(3, "mode").keep(),
]);

static CONTAINER: Schema = Schema(&[
    s(1, "name").keep(),
    s(2, "image"),
    s(3, "command").list(),
    s(4, "args").list(),
    s(5, "workingDir"),
    m(6, "ports", &CONTAINER_PORT).list(),
    m(19, "envFrom", &ENV_FROM_SOURCE).list(),
    m(7, "env", &ENV_VAR).list(),
    m(8, "resources", &RESOURCE_REQUIREMENTS),
    s(24, "restartPolicy").keep(),
    m(9, "volumeMounts", &VOLUME_MOUNT).list(),
    m(10, "livenessProbe", &PROBE),
    m(11, "readinessProbe", &PROBE),
    m(22, "startupProbe", &PROBE),
    s(13, "terminationMessagePath"),
    s(20, "terminationMessagePolicy"),
    s(14, "imagePullPolicy"),
    m(15, "securityContext", &SECURITY_CONTEXT),
    b(16, "stdin"),
    b(17, "stdinOnce"),
    b(18, "tty"),
]);

static CONTAINER_PORT: Schema = Schema(&[
    s(1, "name"),
    i32(2, "hostPort"),
    i32(3, "containerPort").keep(),
    s(4, "protocol"),
    s(5, "hostIP"),
]);

static ENV_VAR: Schema = Schema(&[
    s(1, "name").keep(),
    s(2, "value"),
    m(3, "valueFrom", &ENV_VAR_SOURCE),
]);

static ENV_VAR_SOURCE: Schema = Schema(&[
    m(1, "fieldRef", &OBJECT_FIELD_SELECTOR),
    m(2, "resourceFieldRef", &RESOURCE_FIELD_SELECTOR),
    m(3, "configMapKeyRef", &KEY_SELECTOR),
    m(4, "secretKeyRef", &KEY_SELECTOR),
]);

static OBJECT_FIELD_SELECTOR: Schema = Schema(&[s(1, "apiVersion"), s(2, "fieldPath").keep()]);

static RESOURCE_FIELD_SELECTOR: Schema = Schema(&[
    s(1, "containerName"),
    s(2, "resource").keep(),
    field(3, "divisor", Kind::Quantity),
]);

/// ConfigMapKeySelector and SecretKeySelector share one layout.
static KEY_SELECTOR: Schema = Schema(&[
    inline(1, "localObjectReference", &LOCAL_OBJECT_REFERENCE),
    s(2, "key").keep(),
    b(3, "optional").keep(),
]);

static ENV_FROM_SOURCE: Schema = Schema(&[
    s(1, "prefix"),
    m(2, "configMapRef", &ENV_SOURCE),
    m(3, "secretRef", &ENV_SOURCE),
]);

/// ConfigMapEnvSource and SecretEnvSource share one layout.
static ENV_SOURCE: Schema = Schema(&[
    inline(1, "localObjectReference", &LOCAL_OBJECT_REFERENCE),
    b(2, "optional").keep(),
]);

static RESOURCE_REQUIREMENTS: Schema = Schema(&[
    quantities(1, "limits"),
    quantities(2, "requests"),
    m(3, "claims", &RESOURCE_CLAIM).list(),
]);
static RESOURCE_CLAIM: Schema = Schema(&[s(1, "name").keep(), s(2, "request")]);

static VOLUME_MOUNT: Schema = Schema(&[
    s(1, "name").keep(),
    b(2, "readOnly"),
    s(7, "recursiveReadOnly").keep(),
    s(3, "mountPath").keep(),
    s(4, "subPath"),
    s(5, "mountPropagation").keep(),
    s(6, "subPathExpr"),
]);

static PROBE: Schema = Schema(&[
    inline(1, "handler", &PROBE_HANDLER),
    i32(2, "initialDelaySeconds"),
    i32(3, "timeoutSeconds"),
    i32(4, "periodSeconds"),
    i32(5, "successThreshold"),
    i32(6, "failureThreshold"),
    i64(7, "terminationGracePeriodSeconds").keep(),
]);

static PROBE_HANDLER: Schema = Schema(&[
    m(1, "exec", &EXEC_ACTION),
    m(2, "httpGet", &HTTP_GET_ACTION),
    m(3, "tcpSocket", &TCP_SOCKET_ACTION),
    m(4, "grpc", &GRPC_ACTION),
]);

static EXEC_ACTION: Schema = Schema(&[s(1, "command").list()]);
static HTTP_GET_ACTION: Schema = Schema(&[
    s(1, "path"),
    int_or_string(2, "port"),
    s(3, "host"),
    s(4, "scheme"),
    m(5, "httpHeaders", &HTTP_HEADER).list(),
]);
static HTTP_HEADER: Schema = Schema(&[s(1, "name").keep(), s(2, "value").keep()]);
static TCP_SOCKET_ACTION: Schema = Schema(&[int_or_string(1, "port"), s(2, "host")]);
static GRPC_ACTION: Schema = Schema(&[i32(1, "port").keep(), s(2, "service").keep()]);

static SECURITY_CONTEXT: Schema = Schema(&[
    m(1, "capabilities", &CAPABILITIES),
    b(2, "privileged").keep(),
    i64(4, "runAsUser").keep(),
    i64(8, "runAsGroup").keep(),
    b(5, "runAsNonRoot").keep(),
    b(6, "readOnlyRootFilesystem").keep(),
    b(7, "allowPrivilegeEscalation").keep(),
    s(9, "procMount").keep(),
    m(11, "seccompProfile", &SECCOMP_PROFILE),
]);
static CAPABILITIES: Schema = Schema(&[s(1, "add").list(), s(2, "drop").list()]);
static SECCOMP_PROFILE: Schema = Schema(&[s(1, "type").keep(), s(2, "localhostProfile").keep()]);

// apps/v1

static DEPLOYMENT: Schema = Schema(&[
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

// batch/v1

static JOB: Schema = Schema(&[
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

static CRON_JOB: Schema = Schema(&[m(1, "metadata", &OBJECT_META), m(2, "spec", &CRON_JOB_SPEC)]);

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

// rbac.authorization.k8s.io/v1

static ROLE: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "rules", &POLICY_RULE).list(),
]);
static CLUSTER_ROLE: Schema = Schema(&[
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
static ROLE_BINDING: Schema = Schema(&[
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

// authorization.k8s.io/v1 and authentication.k8s.io/v1

static SELF_SUBJECT_ACCESS_REVIEW: Schema = Schema(&[
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
static SUBJECT_ACCESS_REVIEW: Schema = Schema(&[
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
static SELF_SUBJECT_RULES_REVIEW: Schema = Schema(&[
    m(1, "metadata", &OBJECT_META),
    m(2, "spec", &SELF_SUBJECT_RULES_REVIEW_SPEC),
]);
static SELF_SUBJECT_RULES_REVIEW_SPEC: Schema = Schema(&[s(1, "namespace")]);
static SELF_SUBJECT_REVIEW: Schema = Schema(&[m(1, "metadata", &OBJECT_META)]);
