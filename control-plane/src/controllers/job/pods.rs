//! The pods a Job creates: its template, its tracking finalizer and owner,
//! and for Indexed Jobs the completion index.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod, PodTemplateSpec};
use kube::api::ObjectMeta;
use kube::ResourceExt;

use super::{INDEX_KEY, TRACKING_FINALIZER};
use crate::controllers::context::controller_ref;

/// A new pod for `job` from `template`, for completion index `index` if the Job is Indexed.
pub(super) fn new_pod(job: &Job, template: &PodTemplateSpec, index: Option<i64>) -> Pod {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(match index {
                Some(i) => format!("{name}-{i}-"),
                None => format!("{name}-"),
            }),
            namespace: Some(ns),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: Some(vec![TRACKING_FINALIZER.to_string()]),
            owner_references: Some(vec![controller_ref(job)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    if let Some(i) = index {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(INDEX_KEY.into(), i.to_string());
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(INDEX_KEY.into(), i.to_string());
        if let Some(ps) = pod.spec.as_mut() {
            ps.hostname = Some(format!("{name}-{i}"));
            for c in &mut ps.containers {
                c.env.get_or_insert_with(Vec::new).push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: Some(i.to_string()),
                    value_from: None,
                });
            }
        }
    }
    pod
}
