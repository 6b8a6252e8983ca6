//! What a node (`system:node:NAME` in `system:nodes`) may do: what its
//! agent needs to run the pods bound to it, and nothing of other nodes'
//! pods. Objects a pod needs (Secrets, ConfigMaps, claims, its service
//! account) are readable only while a pod bound to the node names them;
//! the pods are read from etcd at the time of the request, so a pod moved
//! or deleted a moment ago no longer opens anything.

use std::collections::BTreeSet;

use serde_json::Value;

use super::super::errors::{ApiError, ApiResult};
use super::super::request::{Query, Target};
use super::super::State;

/// Decides whether node `node` may do `verb` on `target`.
pub async fn authorize(
    state: &State,
    user: &str,
    node: &str,
    verb: &str,
    target: &Target,
    _query: &Query,
) -> ApiResult<()> {
    let res = target.res.plural;
    let group = target.res.group;
    let ns = target.namespace.as_deref().unwrap_or("");
    let deny = |why: String| Err(ApiError::forbidden(user, verb, res, ns, &why));
    let name = target.name.as_deref();
    let own = name == Some(node);
    let sub = target.sub.as_deref();
    let read = matches!(verb, "get" | "list" | "watch");
    match (group, res, sub) {
        // What the agent watches to program routes, Services and DNS.
        ("", "nodes", None) if read => Ok(()),
        ("", "services" | "endpoints", None) | ("discovery.k8s.io", "endpointslices", None)
            if read =>
        {
            Ok(())
        }
        // NetworkPolicy needs every pod's labels, addresses and ports and the
        // namespaces' labels on every node, as a policy-enforcing CNI reads them.
        ("networking.k8s.io", "networkpolicies", None) | ("", "namespaces", None) if read => {
            Ok(())
        }
        // Registering is a create whose name admission checks.
        ("", "nodes", None) if verb == "create" => Ok(()),
        ("", "nodes", None | Some("status")) if own && matches!(verb, "get" | "update" | "patch") => {
            Ok(())
        }
        ("coordination.k8s.io", "leases", None) if ns == "kube-node-lease" => match verb {
            "create" => Ok(()),
            "get" | "update" | "patch" if own => Ok(()),
            _ => deny(format!("node {node:?} may only use its own Lease")),
        },
        // Every pod's labels, addresses and ports, for NetworkPolicy peers.
        ("", "pods", None) if read && name.is_none() => Ok(()),
        ("", "pods", None) if verb == "get" || verb == "delete" => {
            bound_pod(state, target, node).await?;
            Ok(())
        }
        ("", "pods", Some("status")) if matches!(verb, "get" | "update" | "patch") => {
            bound_pod(state, target, node).await?;
            Ok(())
        }
        ("", "secrets" | "configmaps" | "persistentvolumeclaims" | "serviceaccounts", None)
            if verb == "get" =>
        {
            let Some(name) = name else {
                return deny(format!("node {node:?} may only get {res} by name"));
            };
            if referenced(state, node, ns, res, name).await? {
                Ok(())
            } else {
                deny(format!(
                    "no relationship found between node {node:?} and this object"
                ))
            }
        }
        // A volume, while a claim of one of its pods is bound to it.
        ("", "persistentvolumes", None) if verb == "get" => {
            let Some(name) = name else {
                return deny(format!("node {node:?} may only get {res} by name"));
            };
            if volume_referenced(state, node, name).await? {
                Ok(())
            } else {
                deny(format!(
                    "no relationship found between node {node:?} and this object"
                ))
            }
        }
        // Tokens for the accounts its pods run as; that the token is bound
        // to such a pod is in the body, checked by the token handler.
        ("", "serviceaccounts", Some("token")) if verb == "create" => {
            let Some(name) = name else {
                return deny(format!("node {node:?} may only request tokens by name"));
            };
            if referenced(state, node, ns, res, name).await? {
                Ok(())
            } else {
                deny(format!(
                    "no relationship found between node {node:?} and this object"
                ))
            }
        }
        // Which object an event is about is in its body: admission checks it.
        ("", "events", None) | ("events.k8s.io", "events", None) if verb == "create" => Ok(()),
        _ => deny(format!(
            "node {node:?} may only read what its pods need and write its own Node, Lease, pods' status and events"
        )),
    }
}

/// Fails unless the pod `target` names is bound to `node`. A missing pod
/// is a refusal too: a node learns nothing from probing names.
pub async fn bound_pod(state: &State, target: &Target, node: &str) -> ApiResult<()> {
    let key = super::super::request::key_for(
        target.res,
        target.namespace.as_deref(),
        target.name.as_deref().unwrap_or(""),
    );
    let pod = state
        .storage
        .get(&key)
        .await
        .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))?;
    let on = pod.as_ref().and_then(|p| {
        p.value
            .pointer("/spec/nodeName")?
            .as_str()
            .map(str::to_string)
    });
    if on.as_deref() == Some(node) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        &format!("system:node:{node}"),
        "access",
        "pods",
        target.namespace.as_deref().unwrap_or(""),
        &format!(
            "pod {:?} is not bound to node {node:?}",
            target.name.as_deref().unwrap_or("")
        ),
    ))
}

/// Whether a pod in `ns` bound to `node` names `name` of resource `res`.
/// Pods only reach objects of their own namespace, so the namespace's pods
/// are all that is read.
async fn referenced(state: &State, node: &str, ns: &str, res: &str, name: &str) -> ApiResult<bool> {
    let page = state
        .storage
        .list(&format!("/registry/pods/{ns}/"), None, None, None)
        .await
        .map_err(|e| ApiError::unavailable(format!("etcd: {e}")))?;
    Ok(page.items.iter().any(|(_, p)| {
        p.value.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            && references(&p.value).of(res).contains(name)
    }))
}

/// Whether a claim named by a pod bound to `node` is bound to volume `name`.
async fn volume_referenced(state: &State, node: &str, name: &str) -> ApiResult<bool> {
    let etcd = |e| ApiError::unavailable(format!("etcd: {e}"));
    let page = state
        .storage
        .list("/registry/pods/", None, None, None)
        .await
        .map_err(etcd)?;
    for (_, p) in &page.items {
        if p.value.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
            continue;
        }
        let ns = p
            .value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        for claim in references(&p.value).claims {
            let key = format!("/registry/persistentvolumeclaims/{ns}/{claim}");
            let bound = state.storage.get(&key).await.map_err(etcd)?;
            let volume = bound.as_ref().and_then(|c| {
                c.value
                    .pointer("/spec/volumeName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            if volume.as_deref() == Some(name) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The objects a pod names, by kind.
#[derive(Debug, Default)]
pub struct References {
    pub secrets: BTreeSet<String>,
    pub configmaps: BTreeSet<String>,
    pub claims: BTreeSet<String>,
    pub service_accounts: BTreeSet<String>,
}

impl References {
    fn of(&self, res: &str) -> &BTreeSet<String> {
        match res {
            "secrets" => &self.secrets,
            "configmaps" => &self.configmaps,
            "persistentvolumeclaims" => &self.claims,
            _ => &self.service_accounts,
        }
    }
}

/// Every Secret, ConfigMap, claim and service account `pod` names: in
/// volumes (projected ones too), environment, image pull secrets and
/// `serviceAccountName`.
pub fn references(pod: &Value) -> References {
    let mut r = References::default();
    let spec = &pod["spec"];
    let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    for sa in ["serviceAccountName", "serviceAccount"] {
        r.service_accounts.extend(s(&spec[sa]));
    }
    for p in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        r.secrets.extend(s(&p["name"]));
    }
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    for v in spec["volumes"].as_array().into_iter().flatten() {
        r.secrets.extend(s(&v["secret"]["secretName"]));
        r.configmaps.extend(s(&v["configMap"]["name"]));
        r.claims.extend(s(&v["persistentVolumeClaim"]["claimName"]));
        if v.get("ephemeral").is_some() {
            // The claim of a generic ephemeral volume is named after both.
            if let Some(vol) = s(&v["name"]) {
                r.claims.insert(format!("{pod_name}-{vol}"));
            }
        }
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            r.secrets.extend(s(&src["secret"]["name"]));
            r.configmaps.extend(s(&src["configMap"]["name"]));
        }
        // Volume plugins that log in with a Secret.
        r.secrets.extend(s(&v["azureFile"]["secretName"]));
        for plugin in [
            "cephfs",
            "cinder",
            "flexVolume",
            "iscsi",
            "rbd",
            "scaleIO",
            "storageos",
        ] {
            r.secrets.extend(s(&v[plugin]["secretRef"]["name"]));
        }
        r.secrets
            .extend(s(&v["csi"]["nodePublishSecretRef"]["name"]));
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                r.secrets.extend(s(&e["valueFrom"]["secretKeyRef"]["name"]));
                r.configmaps
                    .extend(s(&e["valueFrom"]["configMapKeyRef"]["name"]));
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                r.secrets.extend(s(&e["secretRef"]["name"]));
                r.configmaps.extend(s(&e["configMapRef"]["name"]));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_place_a_pod_names_an_object_counts() {
        let pod = json!({
            "metadata": {"name": "web"},
            "spec": {
                "serviceAccountName": "runner",
                "imagePullSecrets": [{"name": "pull"}],
                "volumes": [
                    {"name": "a", "secret": {"secretName": "vol-secret"}},
                    {"name": "b", "configMap": {"name": "vol-cm"}},
                    {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "d", "projected": {"sources": [
                        {"secret": {"name": "proj-secret"}},
                        {"configMap": {"name": "proj-cm"}},
                        {"serviceAccountToken": {"path": "token"}}
                    ]}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}},
                    {"name": "e", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "csi-secret"}}}
                ],
                "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "init-cm"}}]}],
                "containers": [{
                    "name": "c",
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                        {"name": "C", "value": "plain"}
                    ],
                    "envFrom": [{"secretRef": {"name": "from-secret"}}]
                }]
            }
        });
        let r = references(&pod);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            r.secrets,
            set(&[
                "csi-secret",
                "env-secret",
                "from-secret",
                "proj-secret",
                "pull",
                "vol-secret"
            ])
        );
        assert_eq!(
            r.configmaps,
            set(&["env-cm", "init-cm", "proj-cm", "vol-cm"])
        );
        assert_eq!(r.claims, set(&["data", "web-scratch"]));
        assert_eq!(r.service_accounts, set(&["runner"]));
        assert!(references(&json!({})).secrets.is_empty());
    }
}
