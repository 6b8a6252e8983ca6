//! core/v1 pod template: the pod spec, its containers and volumes.

use super::meta::OBJECT_META;
use super::objects::LOCAL_OBJECT_REFERENCE;
use super::{b, field, i32, i64, inline, int_or_string, labels, m, quantities, s, Kind, Schema};

pub(super) static POD_TEMPLATE_SPEC: Schema =
    Schema(&[m(1, "metadata", &OBJECT_META), m(2, "spec", &POD_SPEC)]);

pub(super) static POD_SPEC: Schema = Schema(&[
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
