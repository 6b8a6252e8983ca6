//! The built-in local-path provisioner: a volume is a directory under the
//! chosen node's agent state directory, reachable only from that node. The
//! agent creates the directory when a pod first mounts it; a helper pod on
//! the node removes it when the volume is reclaimed with Delete.

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use serde_json::json;

use super::{LOCAL_PATH_DIR, PROVISIONED_BY, PROVISIONER};

/// Annotation on a provisioned volume naming its node, for the helper pod.
pub const NODE_ANNOTATION: &str = "kestrel.io/local-path-node";
/// Namespace the helper pods run in.
pub const HELPER_NAMESPACE: &str = "kube-system";

/// The volume provisioned for `claim` on `node`.
pub fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &Node,
) -> Result<PersistentVolume, String> {
    let node_name = node.name_any();
    let dir = node
        .annotations()
        .get(LOCAL_PATH_DIR)
        .filter(|d| d.starts_with('/'))
        .ok_or_else(|| {
            format!("node {node_name:?} has no {LOCAL_PATH_DIR} annotation; is its agent running?")
        })?;
    let uid = claim
        .metadata
        .uid
        .as_deref()
        .ok_or("the claim has no uid")?;
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let pv_name = format!("pvc-{uid}");
    let spec = claim.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .ok_or("the claim requests no storage")?;
    let v = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {PROVISIONED_BY: PROVISIONER, NODE_ANNOTATION: node_name},
        },
        "spec": {
            "capacity": {"storage": request},
            "accessModes": spec.access_modes.clone().unwrap_or_default(),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.as_deref().unwrap_or("Delete"),
            "storageClassName": class.name_any(),
            "volumeMode": spec.volume_mode.as_deref().unwrap_or("Filesystem"),
            "hostPath": {"path": format!("{}/{pv_name}_{ns}_{name}", dir.trim_end_matches('/')),
                         "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}]}]}},
            // Reserved for its claim, so nobody else's binding takes it.
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": ns, "name": name, "uid": uid},
        },
    });
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Whether this provisioner made `pv`.
pub fn provisioned_here(pv: &PersistentVolume) -> bool {
    pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER)
}

/// Name of the pod that removes `pv`'s directory.
pub fn helper_name(pv: &PersistentVolume) -> String {
    format!("helper-delete-{}", pv.name_any())
}

/// The pod that removes `pv`'s directory on its node: the parent
/// directory is mounted, and only the volume's own entry is removed.
pub fn delete_helper(pv: &PersistentVolume, image: &str) -> Result<Pod, String> {
    let node = pv
        .annotations()
        .get(NODE_ANNOTATION)
        .ok_or("the volume names no node")?;
    let path = pv
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| h.path.clone())
        .ok_or("the volume has no host path")?;
    let (parent, entry) = path
        .rsplit_once('/')
        .filter(|(p, e)| !p.is_empty() && !e.is_empty() && *e != "..")
        .ok_or_else(|| format!("host path {path:?} has no parent directory"))?;
    let v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": helper_name(pv), "namespace": HELPER_NAMESPACE,
                     "labels": {"app.kubernetes.io/name": "local-path-helper"}},
        "spec": {
            // Placed directly: the directory lives on that node alone.
            "nodeName": node,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "delete", "image": image,
                            "command": ["rm", "-rf", format!("/volumes/{entry}")],
                            "volumeMounts": [{"name": "volumes", "mountPath": "/volumes"}]}],
            "volumes": [{"name": "volumes", "hostPath": {"path": parent, "type": "Directory"}}],
        },
    });
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provisioned_volume_lives_on_its_node_and_is_reserved_for_its_claim() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data-web-0", "namespace": "default", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "resources": {"requests": {"storage": "1Gi"}}}}))
        .expect("claim");
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "annotations": {LOCAL_PATH_DIR: "/var/lib/agent/storage/"}}}))
        .expect("node");
        let class: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": "local-path"}, "provisioner": PROVISIONER, "reclaimPolicy": "Retain"}))
        .expect("class");
        let pv = volume_for(&claim, &class, &node).expect("volume");
        let v = serde_json::to_value(&pv).expect("json");
        assert_eq!(v["metadata"]["name"], "pvc-u1");
        assert_eq!(
            v["spec"]["hostPath"]["path"],
            "/var/lib/agent/storage/pvc-u1_default_data-web-0"
        );
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(v["spec"]["claimRef"]["uid"], "u1");
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                ["values"],
            json!(["n1"])
        );
        let helper =
            serde_json::to_value(delete_helper(&pv, "busybox").expect("helper")).expect("json");
        assert_eq!(helper["spec"]["nodeName"], "n1");
        assert_eq!(
            helper["spec"]["containers"][0]["command"],
            json!(["rm", "-rf", "/volumes/pvc-u1_default_data-web-0"])
        );
        assert_eq!(
            helper["spec"]["volumes"][0]["hostPath"]["path"],
            "/var/lib/agent/storage"
        );

        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n2"}})).expect("node");
        assert!(volume_for(&claim, &class, &bare)
            .unwrap_err()
            .contains("kestrel.io/local-path-dir"));
    }
}
