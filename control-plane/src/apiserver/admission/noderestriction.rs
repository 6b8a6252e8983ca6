//! Writes by a node, checked on their content: a node registers only
//! itself, keeps the labels that steer workloads (and the taints that keep
//! them away) in the administrators' hands, and reports events only about
//! itself and its own pods. Which objects it may write at all is decided
//! earlier, by the node authorizer.

use serde_json::Value;

use super::super::errors::{ApiError, ApiResult};
use super::super::request::Target;
use super::super::State;

/// Labels the agent sets on its own Node, though they are under
/// kubernetes.io: they describe the machine.
const MACHINE_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
];

/// Label prefixes a node may use freely under kubernetes.io.
const NODE_PREFIXES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Whether domain `d` is `parent` or under it.
fn within(d: &str, parent: &str) -> bool {
    d == parent || d.ends_with(&format!(".{parent}"))
}

/// Whether a node may set, change or remove label `key` on its Node.
/// Labels under node-restriction.kubernetes.io are how administrators pick
/// nodes for sensitive workloads, so a node never touches them; other
/// kubernetes.io and k8s.io labels only when they describe the machine.
pub fn node_may_set_label(key: &str) -> bool {
    let Some((domain, _)) = key.split_once('/') else {
        return true;
    };
    if within(domain, "node-restriction.kubernetes.io") {
        return false;
    }
    if !(within(domain, "kubernetes.io") || within(domain, "k8s.io")) {
        return true;
    }
    MACHINE_LABELS.contains(&key) || NODE_PREFIXES.iter().any(|p| within(domain, p))
}

fn forbid(node: &str, what: &str) -> ApiError {
    ApiError::forbidden_plain(format!("node {node:?} is not allowed to {what}"))
}

/// Labels of `obj` that differ from `before` (added, changed or removed).
fn changed_labels(before: &Value, obj: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let labels = |v: &Value| {
        v.pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
    };
    let (old, new) = (
        labels(before).unwrap_or_else(|| empty.clone()),
        labels(obj).unwrap_or(empty),
    );
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(old.keys().filter(|k| !new.contains_key(*k)).cloned())
        .collect();
    keys.sort_unstable();
    keys
}

fn check_labels(node: &str, before: &Value, obj: &Value) -> ApiResult<()> {
    let bad: Vec<String> = changed_labels(before, obj)
        .into_iter()
        .filter(|k| !node_may_set_label(k))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(forbid(
        node,
        &format!(
            "modify labels: {} (only kubelet.kubernetes.io/, node.kubernetes.io/ and the machine's own kubernetes.io labels)",
            bad.join(", ")
        ),
    ))
}

/// Checks an object a node creates.
pub async fn admit_create(
    state: &State,
    node: &str,
    target: &Target,
    obj: &Value,
) -> ApiResult<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match (target.res.group, target.res.kind) {
        ("", "Node") => {
            if name != node {
                return Err(forbid(node, &format!("create Node {name:?}, only its own")));
            }
            check_labels(node, &Value::Null, obj)
        }
        ("coordination.k8s.io", "Lease") if name != node => Err(forbid(
            node,
            &format!("create Lease {name:?}, only its own"),
        )),
        ("", "Pod") => Err(forbid(node, "create pods")),
        ("", "Event") => event_about(state, node, &obj["involvedObject"]).await,
        ("events.k8s.io", "Event") => event_about(state, node, &obj["regarding"]).await,
        _ => Ok(()),
    }
}

/// An event's subject must be the node itself or a pod bound to it.
async fn event_about(state: &State, node: &str, subject: &Value) -> ApiResult<()> {
    let field = |f: &str| subject.get(f).and_then(Value::as_str).unwrap_or("");
    match field("kind") {
        "Node" if field("name") == node => return Ok(()),
        "Pod" => {
            let key = format!("/registry/pods/{}/{}", field("namespace"), field("name"));
            let pod = state
                .storage
                .get(&key)
                .await
                .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))?;
            let on = pod.as_ref().and_then(|p| p.value.pointer("/spec/nodeName"));
            if on.and_then(Value::as_str) == Some(node) {
                return Ok(());
            }
        }
        _ => {}
    }
    Err(forbid(
        node,
        &format!(
            "create an event about {} {:?}: only about itself and pods bound to it",
            field("kind"),
            field("name")
        ),
    ))
}

/// Checks a node's update of `old` into `new`.
pub fn admit_update(node: &str, target: &Target, old: &Value, new: &Value) -> ApiResult<()> {
    if (target.res.group, target.res.kind) != ("", "Node") {
        return Ok(());
    }
    // The range a node's pods get addresses from is assigned by the
    // controller-manager or given once at registration; a node that could
    // move it could claim another node's pods' addresses. Setting an empty
    // one is registration with --pod-cidr done late, as at create.
    for f in ["/spec/podCIDR", "/spec/podCIDRs"] {
        let was = old.pointer(f);
        let unset = was.is_none_or(|v| v.is_null() || v == "" || v == &Value::Array(vec![]));
        if !unset && was != new.pointer(f) {
            return Err(forbid(node, "modify its pod CIDR"));
        }
    }
    // Taints keep workloads away from a node; the node does not choose.
    let taints = |v: &Value| {
        v.pointer("/spec/taints")
            .filter(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
            .cloned()
    };
    if taints(old) != taints(new) {
        return Err(forbid(node, "modify taints"));
    }
    check_labels(node, old, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_sets_only_machine_labels_under_kubernetes_io() {
        for ok in [
            "kubernetes.io/hostname",
            "kubernetes.io/arch",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "kubelet.kubernetes.io/anything",
            "sub.node.kubernetes.io/x",
            "example.com/rack",
            "rack",
        ] {
            assert!(node_may_set_label(ok), "{ok}");
        }
        for bad in [
            "node-restriction.kubernetes.io/pci",
            "x.node-restriction.kubernetes.io/pci",
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/role",
            "k8s.io/anything",
            "foo.k8s.io/bar",
        ] {
            assert!(!node_may_set_label(bad), "{bad}");
        }
    }

    #[test]
    fn a_node_keeps_its_range_taints_and_restricted_labels() {
        let node = super::super::super::request::parse_path("/api/v1/nodes/n1")
            .unwrap()
            .unwrap();
        let old = json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "node-restriction.kubernetes.io/gpu": "yes"}},
            "spec": {"podCIDR": "10.244.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]}
        });
        assert!(admit_update("n1", &node, &old, &old).is_ok());
        let mut v = old.clone();
        v["spec"]["podCIDR"] = json!("10.244.2.0/24");
        assert_eq!(admit_update("n1", &node, &old, &v).unwrap_err().code, 403);
        let mut v = old.clone();
        v["spec"]["taints"] = json!([]);
        assert_eq!(admit_update("n1", &node, &old, &v).unwrap_err().code, 403);
        let mut v = old.clone();
        v["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("node-restriction.kubernetes.io/gpu");
        assert_eq!(admit_update("n1", &node, &old, &v).unwrap_err().code, 403);
        let mut v = old.clone();
        v["metadata"]["labels"]["node.kubernetes.io/instance-type"] = json!("big");
        v["metadata"]["labels"]["rack"] = json!("r1");
        assert!(admit_update("n1", &node, &old, &v).is_ok());
        // An empty range may be filled in, as registration would have.
        let mut none = old.clone();
        none["spec"].as_object_mut().unwrap().remove("podCIDR");
        assert!(admit_update("n1", &node, &none, &old).is_ok());
    }
}
