//! Field tables for the kinds kubectl creates, transcribed from the upstream
//! `generated.proto` files (k8s.io/api core/v1, apps/v1, batch/v1 and
//! k8s.io/apimachinery meta/v1). Numbers must match upstream exactly: a wrong
//! number silently moves data to the wrong JSON field.
//!
//! Fields missing here are skipped on decode, so an entry is only needed for
//! data a client can plausibly send when creating an object.

mod apps;
mod batch;
mod meta;
mod objects;
mod pod;
mod rbac;
mod review;

use apps::DEPLOYMENT;
use batch::{CRON_JOB, JOB};
use objects::{CONFIG_MAP, NAMESPACE, POD, SECRET, SERVICE, SERVICE_ACCOUNT, TOKEN_REQUEST};
use rbac::{CLUSTER_ROLE, ROLE, ROLE_BINDING};
use review::{
    SELF_SUBJECT_ACCESS_REVIEW, SELF_SUBJECT_REVIEW, SELF_SUBJECT_RULES_REVIEW,
    SUBJECT_ACCESS_REVIEW,
};

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
