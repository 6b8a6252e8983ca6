//! Which nodes a DaemonSet's pod belongs on, and the pod it puts there.

use std::collections::BTreeMap;

use apimachinery::nodeaffinity::pod_fits_node;
use apimachinery::taints::tolerates;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use kube::api::ObjectMeta;
use kube::ResourceExt;

use crate::controllers::context::controller_ref;

pub use crate::controllers::history::HASH_LABEL;

/// Taints every daemon pod tolerates, as Kubernetes adds them: a node
/// agent must keep running (and be placed) on nodes that are in trouble,
/// cordoned or short of resources, since it may be what fixes them.
const DAEMON_TOLERATIONS: &[(&str, &str)] = &[
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// Host-network pods need no pod network, so they also go to nodes
/// whose network is not up yet.
const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// The template's pod spec with the daemon tolerations added (replacing
/// any of the same key and effect, so none carries a time limit).
pub fn daemon_pod_spec(ds: &DaemonSet) -> PodSpec {
    let mut spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let mut wanted: Vec<(&str, &str)> = DAEMON_TOLERATIONS.to_vec();
    if spec.host_network == Some(true) {
        wanted.push((NETWORK_UNAVAILABLE, "NoSchedule"));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        list.retain(|t| !(t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)));
        list.push(Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        });
    }
    spec
}

/// Whether a daemon pod with `spec` should be placed on `node`, and
/// whether one already there may stay. A pod kept off only by a NoSchedule
/// taint stays; an untolerated NoExecute taint, a selector or affinity
/// that no longer matches, removes it.
pub fn should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let name = node.name_any();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !pod_fits_node(spec, &labels, &name) {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    let no_execute = untolerated("NoExecute");
    if no_execute || untolerated("NoSchedule") {
        return (false, !no_execute);
    }
    (true, true)
}

/// The node a daemon pod is for: where it is bound, or, before the
/// scheduler has bound it, the one its node affinity names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    let [field] = term.match_fields.as_deref()? else {
        return None;
    };
    match (
        field.key.as_str(),
        field.operator.as_str(),
        field.values.as_deref(),
    ) {
        ("metadata.name", "In", Some([v])) => Some(v.clone()),
        _ => None,
    }
}

/// The daemon pod for `node`: the template with the revision hash label,
/// the daemon tolerations, and required node affinity on the node's name,
/// so the default scheduler binds it there (as Kubernetes does since
/// daemon pods stopped bypassing the scheduler).
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let tmeta = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.clone())
        .unwrap_or_default();
    let mut labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut spec = daemon_pod_spec(ds);
    let only_this_node = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
        }],
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(only_this_node);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}
