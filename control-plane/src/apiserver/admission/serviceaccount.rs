//! ServiceAccount admission on pod create: every pod runs as a
//! ServiceAccount of its namespace (`default` unless it names one), the
//! account must exist, and unless either side opts out the pod gets the
//! projected volume through which its containers reach the API server:
//! a token bound to the pod, the cluster CA and the namespace.

use serde_json::{json, Value};

use super::super::errors::{ApiError, ApiResult};
use super::super::State;

/// Where containers find the token, CA and namespace.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Lifetime asked for the projected token: an hour, plus a few seconds
/// so that a token of this exact age tells it came from this volume.
const TOKEN_SECONDS: i64 = 3607;

/// Pods the node creates for its static pods; they never talk to the API
/// server as a ServiceAccount.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The node requesting, when a node is: it gets tokens only bound to
/// its own pods.
pub fn requesting_node() -> Option<String> {
    super::writing_node()
}

/// Defaults, checks and completes a pod about to be created.
pub async fn admit_pod(state: &State, pod: &mut Value) -> ApiResult<()> {
    if pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .is_some()
    {
        return Ok(());
    }
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let spec = pod
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::bad_request("pod has no spec"))?;
    let mut sa_name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if sa_name.is_empty() {
        sa_name = spec
            .get("serviceAccount")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
    }
    spec.insert("serviceAccountName".into(), json!(sa_name));
    // The deprecated alias follows the real field, as the API has it.
    spec.insert("serviceAccount".into(), json!(sa_name));

    let key = format!("/registry/serviceaccounts/{ns}/{sa_name}");
    let sa = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))?;
    let Some(sa) = sa else {
        // Forbidden, not Invalid: the pod is fine and the account may yet
        // appear (the controller creates `default` just after a
        // namespace), so controllers retry.
        return Err(ApiError::forbidden_plain(format!(
            "pods {pod_name:?} is forbidden: error looking up service account {ns}/{sa_name}: \
             serviceaccount {sa_name:?} not found"
        )));
    };
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.value
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if automount {
        mount_token(spec);
    }
    Ok(())
}

/// Whether a container already mounts something at the token's path.
fn mounts_token_path(c: &Value) -> bool {
    c.get("volumeMounts")
        .and_then(Value::as_array)
        .is_some_and(|ms| {
            ms.iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
        })
}

/// Adds the `kube-api-access-*` volume and mounts it in every container
/// that does not already mount something there.
fn mount_token(spec: &mut serde_json::Map<String, Value>) {
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let Some(volumes) = volumes.as_array_mut() else {
        return;
    };
    let name = loop {
        let n = format!(
            "kube-api-access-{}",
            super::super::handlers::random_suffix()
        );
        if !volumes
            .iter()
            .any(|v| v.get("name").and_then(Value::as_str) == Some(n.as_str()))
        {
            break n;
        }
    };
    volumes.push(json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }));
    for list in ["initContainers", "containers"] {
        let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs.iter_mut() {
            if mounts_token_path(c) {
                continue;
            }
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(ms) = mounts.as_array_mut() {
                ms.push(json!({"name": name, "mountPath": MOUNT_PATH, "readOnly": true}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_the_token_volume_read_only() {
        let mut pod = json!({
            "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}],
            "initContainers": [{"name": "i"}],
            "volumes": [{"name": "x", "emptyDir": {}}],
        });
        mount_token(pod.as_object_mut().unwrap());
        let vols = pod["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().unwrap();
        assert!(name.starts_with("kube-api-access-") && name.len() == 21);
        let sources = &vols[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        for c in [
            &pod["containers"][0],
            &pod["containers"][1],
            &pod["initContainers"][0],
        ] {
            let m = c["volumeMounts"].as_array().unwrap().last().unwrap();
            assert_eq!(m["name"], name);
            assert_eq!(m["mountPath"], MOUNT_PATH);
            assert_eq!(m["readOnly"], true);
        }
    }

    #[test]
    fn a_container_mounting_its_own_token_keeps_it() {
        let mut pod = json!({"containers": [{"name": "a",
            "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}]});
        mount_token(pod.as_object_mut().unwrap());
        assert_eq!(
            pod["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
